"""The sharded mode of the rule sweep: every rule of the spec table on 8 CPU devices
with operands sharded along each dimension, Explicit and Auto meshes, handgrad.vjp
against jax.vjp in value and in every input cotangent's sharding (cases_sweep.py).

Each rule runs its first spec on that spec's highest-rank shape case (``--quick``;
``python cases_sweep.py --all`` runs every spec and shape case); the rules are split
round-robin into ``PARTS`` subprocesses, one test each, so ``pytest -n 2`` spreads
them.  A configuration that jax.vjp itself rejects is skipped with its reason, and one
where jax.vjp on the mesh disagrees with jax.vjp on one device while the hand pass
agrees with one device is recorded as ``jax-wrong``; neither counts as a pass, and a
rule must have at least one configuration compared.  Under Explicit axes the
cotangent shardings must equal jax.vjp's; under Auto axes, where XLA's propagation
places a jitted program's outputs, equal values with another placement are recorded
as ``auto-layout`` (cases_sweep.py says why).  On jaxlib 0.10 the linear-algebra
decompositions and solves with a matrix axis sharded over an Auto mesh are not run:
that release's batched LAPACK kernels deadlock the thread pool the forced devices share
(``cases_sweep.LAPACK_RULES`` says how); their batch axes are, and on jaxlib 0.11 and
later every configuration is.  The collectives' rules, whose specs
bind the axis of a one-device mesh, are checked on 8 devices by
test_sharded_collectives.py instead.
"""

import pytest

from _devices8 import run_cases

PARTS = 6

#: Configurations that fail for a reason outside the rule, each with that reason; the
#: test requires them to fail still (remove an entry once it passes).
KNOWN = {
    # lax.random_gamma_grad itself, called on a random_gamma output sharded along an
    # Explicit mesh axis, builds a broadcast whose aval has an Auto mesh (JAX's
    # random/core.py _gamma): the rule's own math is one call to it.
    "random_gamma": ("Explicit", "should match the aval mesh"),
}


#: Rules without a reference on a mesh: jax.vjp rejects every one of their specs
#: (recorded as skipped with its message), so nothing is compared here.
NO_REFERENCE = {
    # the generic specs blame the init value: "reduce_window jvp does not support
    # non-zero init_value_tangent" (the window sums and extrema have their own rules).
    "reduce_window",
}


def _rule(key: str) -> str:
  return key.split(" ")[0].split("[")[0]


@pytest.mark.parametrize("i", range(PARTS))
def test_rules_on_sharded_operands_match_jax_vjp(i):
  out = run_cases("cases_sweep.py", ("--quick", f"--part={i}/{PARTS}"), timeout=900)
  names, results = out["names"], out["results"]
  assert names, f"part {i} of {PARTS} has no rules"
  known = {k for k, v in results.items()
           if v[0] == "fail" and _rule(k) in KNOWN
           and k.endswith(" " + KNOWN[_rule(k)][0]) and KNOWN[_rule(k)][1] in v[1]}
  failed = {k: v[1] for k, v in results.items() if v[0] == "fail" and k not in known}
  assert not failed, failed
  for name, (kind, _) in KNOWN.items():
    if name in names:
      assert any(_rule(k) == name and k.endswith(" " + kind) for k in known), (
          f"{name} under {kind} axes no longer fails: remove it from KNOWN")
  # Something was compared for every rule: one whose every configuration is skipped
  # tests nothing.
  compared = {_rule(k) for k, v in results.items()
              if v[0] in ("pass", "jax-wrong", "auto-layout", "float32-conditioning")}
  untested = sorted(set(names) - compared - NO_REFERENCE)
  assert not untested, {n: {k: v for k, v in results.items()
                            if _rule(k) == n} for n in untested}
