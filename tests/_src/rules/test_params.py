"""Params a primitive carries, or gains in a later JAX release, reach its rule: the
``accuracy`` of the transcendental functions (``erfc`` got one in jax 0.12), the
polynomial's ``unroll``.  Each case is compared with ``jax.vjp``."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

import handgrad as hg
from handgrad._src import check
from handgrad._src import jaxpr

HIGHEST = lax.AccuracyMode.HIGHEST


def _assert_vjp_matches(f, x, ct):
  both = jax.jit(lambda x, ct: (hg.vjp(f, x)[1](ct), jax.vjp(f, x)[1](ct)))
  hand, ref = both(x, ct)
  report = check.compare("params", "jax.vjp", hand, ref)
  assert report.passed, str(report)


def test_exact_gelu_differentiates():
  # jax.nn.gelu(approximate=False) is built on erfc, whose primitive has an
  # ``accuracy`` param since jax 0.12.
  x = jnp.linspace(-3.0, 3.0, 7)
  f = lambda x: jnp.sum(jax.nn.gelu(x, approximate=False))
  np.testing.assert_allclose(np.asarray(hg.grad(f)(x)), np.asarray(jax.grad(f)(x)),
                             rtol=1e-5, atol=1e-6)


OPS = {
    "exp": lax.exp, "exp2": lax.exp2, "expm1": lax.expm1, "log": lax.log,
    "log1p": lax.log1p, "tanh": lax.tanh, "logistic": lax.logistic, "sin": lax.sin,
    "cos": lax.cos, "tan": lax.tan, "sqrt": lax.sqrt, "rsqrt": lax.rsqrt, "cbrt": lax.cbrt,
}


@pytest.mark.parametrize("accuracy", [HIGHEST, lax.AccuracyMode.DEFAULT,
                                      lax.Tolerance(atol=1e-3, rtol=1e-3, ulps=2)],
                         ids=["highest", "default", "tolerance"])
@pytest.mark.parametrize("name", sorted(OPS))
def test_accuracy_param(name, accuracy):
  # HIGHEST selects JAX's accurate derivative formulas (expm1' = exp, tanh' = 4σ(2x)σ(−2x),
  # σ' = σ(x)σ(−x)) and is passed on where a rule evaluates sin, cos, exp or σ again.
  x = np.linspace(0.2, 2.5, 6).astype(np.float32)
  ct = np.linspace(-1.0, 1.0, 6).astype(np.float32)
  _assert_vjp_matches(lambda x: OPS[name](x, accuracy=accuracy), x, ct)


def test_newer_primitives_have_rules_exactly_where_they_exist():
  for name in ("log2", "one_minus_square", "polynomial"):
    assert (name in hg.registry) == jaxpr.has_primitive(name), name
  if jaxpr.has_primitive("log2"):  # jax >= 0.11
    x = np.linspace(0.2, 2.5, 6).astype(np.float32)
    _assert_vjp_matches(lambda x: lax.log2(x, accuracy=HIGHEST), x, np.ones(6, np.float32))


def test_erfc_accuracy_where_jax_has_it():
  import inspect
  x = np.linspace(-2.0, 2.0, 6).astype(np.float32)
  kw = {"accuracy": HIGHEST} if "accuracy" in inspect.signature(lax.erfc).parameters else {}
  _assert_vjp_matches(lambda x: lax.erfc(x, **kw), x, np.ones(6, np.float32))


def test_a_param_the_rule_does_not_know_fails_loudly():
  # A rule names the params it handles: an unknown one is a TypeError, never ignored.
  rule = hg.registry["sin"]
  with pytest.raises(TypeError):
    rule(jnp.ones(()), jnp.ones(()), jnp.ones(()), accuracy=None, new_param=1)
