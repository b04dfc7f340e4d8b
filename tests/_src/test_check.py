"""The shipped checks catch wrong rules and reproduce the seed's numerical gradient check."""

import contextlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import handgrad as hg
from handgrad._src import check
from handgrad._src import registry as registry_lib


@contextlib.contextmanager
def replaced_rule(name, rule):
  old = registry_lib._RULES[name]
  registry_lib._RULES[name] = rule
  try:
    yield
  finally:
    registry_lib._RULES[name] = old


def test_check_vjp_passes_for_correct_rules_and_reports_errors():
  x = jnp.linspace(-1.0, 1.0, 7)
  report = hg.check_vjp(lambda x: jnp.tanh(x) * jnp.exp(x), x)
  assert report.passed and report.reference == "jax.vjp"
  assert report.max_abs_err <= 1e-5


def test_check_vjp_catches_a_wrong_rule():
  x = jnp.linspace(0.1, 1.0, 5)
  with replaced_rule("sin", lambda g, ans, x, **p: (g * jnp.cos(x) * 1.001,)):
    report = hg.check_vjp(jnp.sin, x, raise_on_fail=False)
    assert not report.passed and report.max_rel_err == pytest.approx(1e-3, rel=1e-2)
    with pytest.raises(AssertionError, match="sin"):
      hg.check_vjp(jnp.sin, x, name="sin")


def test_check_grad_uses_finite_differences_in_float64():
  with jax.enable_x64(True):
    x = jnp.linspace(-1.0, 1.0, 5)
    reports = hg.check_grad(lambda x: jnp.sum(jnp.sin(x) ** 3), x)
    assert [r.reference for r in reports] == ["jax.grad", "finite differences"]
    assert all(r.passed for r in reports)
    with replaced_rule("sin", lambda g, ans, x, **p: (g * jnp.cos(x) * 1.01,)):
      # jax.grad never uses the registry, so both references catch the wrong rule.
      reports = hg.check_grad(lambda x: jnp.sum(jnp.sin(x) ** 3), x, raise_on_fail=False)
      assert not any(r.passed for r in reports)


def test_numerical_gradient_matches_analytic_in_float64():
  f = lambda x: jnp.sum(x ** 3)
  x = np.array([[1.0, -2.0], [0.5, 3.0]])
  num = hg.numerical_gradient(f, x, eps=1e-5)
  assert num.dtype == np.float64
  np.testing.assert_allclose(num, 3 * x ** 2, rtol=1e-8)


def test_gradient_check_relative_error_like_the_seed():
  analytic = np.array([1.0, 2.0, 0.0])
  rel, ok = hg.gradient_check(analytic, analytic + np.array([0.0, 2e-6, 0.0]))
  assert ok and rel == pytest.approx(2e-6 / (4.0 + 2e-6 + 1e-7))
  rel, ok = hg.gradient_check(analytic, analytic * 1.1)
  assert not ok and rel > 1e-2
  with pytest.raises(ValueError, match="shape"):
    hg.gradient_check(np.ones(2), np.ones(3))


def test_seed_gradient_check_on_hand_gradients_of_the_seed_mlp():
  with jax.enable_x64(True):
    k = jax.random.split(jax.random.key(0), 3)
    x = jax.random.normal(k[0], (4, 6), jnp.float64)
    y = jnp.array([0, 2, 1, 2])
    W = jax.random.normal(k[1], (6, 3), jnp.float64) * 0.3
    b = jnp.zeros(3, jnp.float64)
    loss = lambda W: hg.ops.softmax_cross_entropy(hg.ops.dense(hg.ops.relu(x), W, b), y)
    rel, ok = hg.gradient_check(hg.grad(loss)(W), hg.numerical_gradient(loss, W))
    assert ok, rel


def test_compare_requires_matching_non_finite_values():
  r = check.compare("t", "ref", jnp.array([1.0, jnp.nan]), jnp.array([1.0, jnp.nan]))
  assert r.passed
  r = check.compare("t", "ref", jnp.array([1.0, 0.0]), jnp.array([1.0, jnp.nan]))
  assert not r.passed
  r = check.compare("t", "ref", jnp.array([jnp.inf]), jnp.array([-jnp.inf]))
  assert not r.passed


def test_tolerances_follow_design():
  assert check.tolerance(jnp.float64) == (1e-7, 1e-7)
  assert check.tolerance(jnp.float32) == (1e-5, 1e-5)
  assert check.tolerance(jnp.bfloat16) == (1.6e-2, 1e-3)
  assert check.tolerance(jnp.float16) == (1e-3, 1e-3)
