"""The spec-table sweep: every registered rule against jax.vjp (float32 and float64) and
central finite differences (float64), over scalars, size-1 dims, broadcasting pairs and
empty batches.  The table lives in ``handgrad/_src/specs.py``."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import handgrad as hg
from handgrad._src import check
from handgrad._src import specs

SPECS = specs.all_specs()
CASES = [pytest.param(spec, dtype, id=f"{spec.id}-{dtype}")
         for spec in SPECS for dtype in spec.dtypes]


def test_every_registered_rule_has_a_spec():
  # This test keeps the sweep complete: a new rule needs a line in the spec table.
  missing = set(hg.registry) - specs.covered_rules()
  assert not missing, f"rules without a spec in handgrad/_src/specs.py: {sorted(missing)}"


def test_every_spec_names_a_registered_rule():
  unknown = specs.covered_rules() - set(hg.registry)
  assert not unknown, f"specs of unregistered rules: {sorted(unknown)}"


def test_spec_ids_are_unique():
  ids = [s.id for s in SPECS]
  assert len(ids) == len(set(ids)), sorted(i for i in ids if ids.count(i) > 1)


@pytest.mark.parametrize("spec", [pytest.param(s, id=s.id) for s in SPECS])
def test_spec_function_holds_its_equation(spec):
  # Every shape case must put the rule's equation in the jaxpr, or the case tests nothing.
  dtype = spec.dtypes[0]
  for case in range(len(spec.shapes)):
    with specs.precision(dtype):
      names = specs.rule_names(spec.fun, *spec.sample(dtype, case))
    assert spec.name in names, (spec.id, spec.shapes[case], sorted(names))


@pytest.mark.parametrize("spec,dtype", CASES)
def test_rule(spec, dtype):
  """handgrad.vjp == jax.vjp in ``dtype``; in float64 also == central differences."""
  reports = specs.check_rule(spec, dtype, finite_differences=True)
  references = {r.reference for r in reports}
  assert "jax.vjp" in references
  if dtype == "float64" and spec.fd:
    assert "finite differences" in references
  failed = [str(r) for r in reports if not r.passed]
  assert not failed, "\n".join(failed)


def test_float64_tolerances_are_never_loosened():
  for spec in SPECS:
    assert spec.tolerance("float64") == (None, None), spec.id
  assert check.tolerance(jnp.float64) == (1e-7, 1e-7)
  assert check.tolerance(jnp.float32) == (1e-5, 1e-5)


def test_no_gradient_rules_return_none_when_called_directly():
  # The engine never calls a comparison's rule (its boolean output carries no blame),
  # so each no-gradient rule is also called by hand on a real equation.
  for spec in (s for s in SPECS if s.no_gradient):
    with specs.precision(spec.dtypes[0]):
      sites = [s for s in specs.rule_sites(spec.fun, *spec.sample(spec.dtypes[0], 0))
               if s[0] == spec.name]
    assert sites, spec.id
    for _, eqn, invals, outs in sites:
      g = [jnp.zeros_like(o) for o in outs]
      g, ans = (g, outs) if eqn.primitive.multiple_results else (g[0], outs[0])
      cts = hg.registry[spec.name](g, ans, *invals, **eqn.params)
      assert tuple(cts) == (None,) * len(invals), (spec.id, cts)


def test_the_sweep_catches_a_wrong_rule():
  spec = next(s for s in SPECS if s.id == "sin")
  good = hg.registry["sin"]
  hg.defvjp("sin", lambda g, ans, x, **p: (g * jnp.cos(x) * 1.000001,))
  try:
    reports = specs.check_rule(spec, "float64", finite_differences=True)
  finally:
    hg.defvjp("sin", good)
  assert any(not r.passed and r.reference == "jax.vjp" for r in reports)


def test_the_sweep_notices_a_spec_that_never_applies_its_rule():
  spec = specs.RuleSpec("cos", jnp.sin, specs.UNARY)  # sin's jaxpr has no cos
  reports = specs.check_rule(spec, "float32")
  assert [r.reference for r in reports if not r.passed] == ["rule applied"]


def test_spec_validation():
  with pytest.raises(ValueError, match="note"):
    specs.RuleSpec("exp", jnp.exp, specs.UNARY, float32_tol=(1e-4, 1e-4))
  with pytest.raises(ValueError, match="samplers"):
    specs.RuleSpec("add", jnp.add, specs.BINARY, sampler=(specs.normal(),))
  with pytest.raises(ValueError, match="shapes"):
    specs.RuleSpec("add", jnp.add, (((), ()), ((),)))


def test_samplers_respect_their_domains():
  rng = np.random.default_rng(0)
  x = specs.away_from_zero(0.5, 2.0)(rng, (200,), np.dtype("float32"))
  assert x.dtype == np.float32 and np.all((np.abs(x) >= 0.5) & (np.abs(x) < 2.0))
  d = specs.distinct()(rng, (50,), np.dtype("float64"))
  assert len(np.unique(d)) == 50 and np.min(np.diff(np.sort(d))) > 0
  i = specs.integers(-2, 3)(rng, (100,), np.dtype("float64"))
  assert i.dtype == np.int32 and i.min() >= -2 and i.max() < 3
  assert sorted(specs.permutation()(rng, (6,), None)) == list(range(6))


def test_check_all_rules_table_rows():
  rows = specs.check_all_rules(names=["add", "lt"])
  keys = {(name, column) for name, column, _ in rows}
  assert keys == {("add", "float32"), ("add", "float64"), ("add", specs.FD_COLUMN),
                  ("lt", "float32"), ("lt", "float64"), ("lt", specs.FD_COLUMN)}
  assert all(r.passed for _, _, r in rows)
  assert [name for name, _, _ in rows] == sorted(name for name, _, _ in rows)


@pytest.mark.parametrize("spec_id", ["mul", "reduce_max[last axis]", "gather", "layer_norm",
                                     "select_n[bool predicate]"])
def test_shipped_eager_check_vjp_agrees(spec_id):
  # The sweep runs each spec jitted (one compilation per spec); the shipped eager
  # check_vjp must reach the same verdict on the engine's eager path.
  spec = next(s for s in SPECS if s.id == spec_id)
  report = hg.check_vjp(spec.fun, *spec.sample("float32", 1), raise_on_fail=False)
  assert report.passed, str(report)
