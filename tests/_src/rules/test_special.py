"""Special functions where JAX defines no derivative: handgrad raises the same kind of
error as ``jax.grad`` (``ValueError`` for polygamma's order and the incomplete beta
function's parameters, ``NotImplementedError`` for primitives without any derivative),
and still differentiates the other arguments.  The sweep's specs are in
``handgrad/_src/spec_tables/special.py``."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

import handgrad as hg


def _both_raise(f, args, argnums, error, match):
  with pytest.raises(error, match=match):
    jax.grad(f, argnums)(*args)
  with pytest.raises(error, match=match):
    hg.grad(f, argnums)(*args)


def test_polygamma_in_m_raises_like_jax():
  _both_raise(lambda m, x: lax.polygamma(m, x), (1.0, 2.0), 0, ValueError,
              "polygamma|NotDifferentiable")


def test_polygamma_in_x_with_a_traced_m_differentiates():
  f = lambda m, x: lax.polygamma(m, x)
  np.testing.assert_allclose(hg.grad(f, 1)(2.0, 1.5), jax.grad(f, 1)(2.0, 1.5), rtol=1e-5)


def test_betainc_in_a_and_b_raises_like_jax():
  f = lambda a, b, x: lax.betainc(a, b, x)
  for argnum in (0, 1):
    _both_raise(f, (2.0, 3.0, 0.4), argnum, ValueError, "Betainc|NotDifferentiable")
  np.testing.assert_allclose(hg.grad(f, 2)(2.0, 3.0, 0.4), jax.grad(f, 2)(2.0, 3.0, 0.4),
                             rtol=1e-5)


def test_the_error_names_the_rule_and_the_argument():
  with pytest.raises(hg.RuleError, match="'polygamma'.*argument 0"):
    hg.grad(lambda m: lax.polygamma(m, 2.0))(1.0)


def test_second_derivative_of_igamma_in_a_raises_like_jax():
  f = lambda a: lax.igamma(a, 2.0)
  _both_raise(jax.grad(f), (1.5,), 0, NotImplementedError, "igamma_grad_a")
  with pytest.raises(NotImplementedError, match="igamma_grad_a"):
    hg.grad(hg.grad(f))(1.5)


def test_zeta_has_no_derivative_in_jax_nor_here():
  _both_raise(lambda x: lax.zeta(x, 2.0), (3.0,), 0, NotImplementedError, "zeta")


@pytest.mark.parametrize("sampler", [jax.random.gamma, jax.random.loggamma])
def test_gamma_sample_gradients_through_a_model(sampler):
  # Reparameterised sampling as a VAE or a Dirichlet model uses it: a broadcast key,
  # shapes from the parameters.
  def f(a):
    return jnp.sum(jnp.sin(sampler(jax.random.key(3), a * a)))
  a = jnp.linspace(0.6, 2.5, 5)
  np.testing.assert_allclose(hg.grad(f)(a), jax.grad(f)(a), rtol=2e-5, atol=1e-6)
