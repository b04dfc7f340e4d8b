"""The sharded mode of the rule sweep: every rule of the spec table on 8 CPU devices
with operands sharded along each dimension, Explicit and Auto meshes, handgrad.vjp
against jax.vjp in value and in every input cotangent's sharding (cases_sweep.py).

Each spec runs on its highest-rank shape case (``--quick``); the rules are split
round-robin into ``PARTS`` subprocesses, one test each, so ``pytest -n 2`` spreads
them.  A configuration that jax.vjp itself rejects is skipped with its reason, and one
where jax.vjp on the mesh disagrees with jax.vjp on one device while the hand pass
agrees with one device is recorded as ``jax-wrong``; neither counts as a pass, and a
rule must have at least one configuration compared.  ``python cases_sweep.py --all``
runs every shape case of every spec.
"""

import pytest

from _devices8 import run_cases

PARTS = 6


@pytest.mark.parametrize("i", range(PARTS))
def test_rules_on_sharded_operands_match_jax_vjp(i):
  out = run_cases("cases_sweep.py", ("--quick", f"--part={i}/{PARTS}"), timeout=900)
  names, results = out["names"], out["results"]
  assert names, f"part {i} of {PARTS} has no rules"
  failed = {k: v[1] for k, v in results.items() if v[0] == "fail"}
  assert not failed, failed
  # Something was compared for every rule: one whose every configuration is skipped
  # tests nothing.
  compared = {k.split(" ")[0].split("[")[0] for k, v in results.items()
              if v[0] in ("pass", "jax-wrong")}
  untested = sorted(set(names) - compared)
  assert not untested, {n: {k: v for k, v in results.items()
                            if k.split(" ")[0].split("[")[0] == n} for n in untested}
