"""Hessians and HVPs (forward-over-hand-reverse and hand reverse-over-reverse) against
jax.hessian.  (The Lanczos spectrum and the saved-residuals report are tested in
tests/inspect/, beside their modules.)"""

import chex
import jax
import jax.flatten_util
import jax.numpy as jnp
import pytest

import handgrad as hg


@pytest.fixture(autouse=True)
def x64():
  with jax.enable_x64(True):
    yield


def _mixed_loss(params, x, y):
  """Dense, layer norm and softmax cross-entropy: the issue's second-order test function."""
  h = hg.ops.dense(x, params["W1"], params["b1"])
  h = hg.ops.layer_norm(h, params["g"], params["beta"])
  h = jnp.tanh(h)
  return hg.ops.softmax_cross_entropy(hg.ops.dense(h, params["W2"], params["b2"]), y)


def _mixed_params():
  k = jax.random.split(jax.random.key(0), 4)
  return {"W1": jax.random.normal(k[0], (3, 4)) * 0.5, "b1": jnp.full(4, 0.1),
          "g": jnp.linspace(0.8, 1.2, 4), "beta": jnp.zeros(4),
          "W2": jax.random.normal(k[1], (4, 3)) * 0.5, "b2": jnp.zeros(3)}


def _mixed_batch():
  return jax.random.normal(jax.random.key(5), (6, 3)), jnp.array([0, 1, 2, 0, 1, 2])


def test_seed_cube_derivatives():
  x = jnp.linspace(-2.0, 2.0, 7)
  f = lambda x: jnp.sum(x ** 3)
  chex.assert_trees_all_close(hg.grad(f)(x), 3 * x ** 2)
  chex.assert_trees_all_close(jnp.diag(hg.hessian(f)(x)), 6 * x)
  chex.assert_trees_all_close(hg.hvp(f, x, jnp.ones_like(x)), 6 * x)
  chex.assert_trees_all_close(hg.hvp_reverse(f, x, jnp.ones_like(x)), 6 * x)


def test_hessian_of_dense_layer_norm_cross_entropy_matches_jax():
  params, (x, y) = _mixed_params(), _mixed_batch()
  chex.assert_trees_all_close(hg.hessian(_mixed_loss)(params, x, y),
                              jax.hessian(_mixed_loss)(params, x, y), rtol=1e-7, atol=1e-9)


@pytest.mark.parametrize("hvp", [hg.hvp, hg.hvp_reverse])
def test_hvp_matches_hessian_contraction(hvp):
  params, (x, y) = _mixed_params(), _mixed_batch()
  loss = lambda p: _mixed_loss(p, x, y)
  v = jax.tree.map(lambda a: jax.random.normal(jax.random.key(a.size), a.shape), params)
  flat_p, unravel = jax.flatten_util.ravel_pytree(params)
  flat_v, _ = jax.flatten_util.ravel_pytree(v)
  H = jax.hessian(lambda f: loss(unravel(f)))(flat_p)
  chex.assert_trees_all_close(jax.flatten_util.ravel_pytree(hvp(loss, params, v))[0], H @ flat_v,
                              rtol=1e-7, atol=1e-9)
