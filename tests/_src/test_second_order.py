"""Hessians and HVPs (forward-over-hand-reverse and hand reverse-over-reverse) against
jax.hessian.  (The Lanczos spectrum and the saved-residuals report are tested in
tests/inspect/, beside their modules.)"""

import chex
import jax
import jax.flatten_util
import jax.numpy as jnp
import pytest

import handgrad as hg
from second_order_testing import mixed_batch, mixed_loss, mixed_params


pytestmark = pytest.mark.usefixtures("x64")  # tests/conftest.py


def test_seed_cube_derivatives():
  x = jnp.linspace(-2.0, 2.0, 7)
  f = lambda x: jnp.sum(x ** 3)
  chex.assert_trees_all_close(hg.grad(f)(x), 3 * x ** 2)
  chex.assert_trees_all_close(jnp.diag(hg.hessian(f)(x)), 6 * x)
  chex.assert_trees_all_close(hg.hvp(f, x, jnp.ones_like(x)), 6 * x)
  chex.assert_trees_all_close(hg.hvp_reverse(f, x, jnp.ones_like(x)), 6 * x)


def test_hessian_of_dense_layer_norm_cross_entropy_matches_jax():
  params, (x, y) = mixed_params(), mixed_batch()
  chex.assert_trees_all_close(hg.hessian(mixed_loss)(params, x, y),
                              jax.hessian(mixed_loss)(params, x, y), rtol=1e-7, atol=1e-9)


@pytest.mark.parametrize("hvp", [hg.hvp, hg.hvp_reverse])
def test_hvp_matches_hessian_contraction(hvp):
  params, (x, y) = mixed_params(), mixed_batch()
  loss = lambda p: mixed_loss(p, x, y)
  v = jax.tree.map(lambda a: jax.random.normal(jax.random.key(a.size), a.shape), params)
  flat_p, unravel = jax.flatten_util.ravel_pytree(params)
  flat_v, _ = jax.flatten_util.ravel_pytree(v)
  H = jax.hessian(lambda f: loss(unravel(f)))(flat_p)
  chex.assert_trees_all_close(jax.flatten_util.ravel_pytree(hvp(loss, params, v))[0], H @ flat_v,
                              rtol=1e-7, atol=1e-9)
