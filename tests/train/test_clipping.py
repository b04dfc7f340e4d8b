"""clip_grad_norm / clip_grad_value with PyTorch's formulas, against numpy and optax."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from handgrad import inspect as hgi


def _grads(scale=1.0):
  k = jax.random.split(jax.random.key(0), 3)
  return {"W": scale * jax.random.normal(k[0], (4, 5)), "b": scale * jax.random.normal(k[1], (5,)),
          "s": scale * jax.random.normal(k[2], ())}


def _np_leaves(g):
  return [np.asarray(x, np.float64) for x in jax.tree.leaves(g)]


@pytest.mark.parametrize("norm_type", [2.0, 1.0, 3.0, float("inf")])
@pytest.mark.parametrize("scale", [0.01, 10.0])
def test_clip_grad_norm_matches_torch_formula(norm_type, scale):
  g = _grads(scale)
  clipped, total = jax.jit(lambda g: hgi.clip_grad_norm(g, 1.5, norm_type))(g)
  leaves = _np_leaves(g)
  flat = np.concatenate([x.ravel() for x in leaves])
  want_total = (np.abs(flat).max() if np.isinf(norm_type)
                else np.sum(np.abs(flat) ** norm_type) ** (1 / norm_type))
  np.testing.assert_allclose(total, want_total, rtol=1e-5)
  coef = min(1.5 / (want_total + 1e-6), 1.0)
  for got, x in zip(jax.tree.leaves(clipped), leaves):
    np.testing.assert_allclose(got, x * coef, rtol=1e-5, atol=1e-7)
  if scale < 1 and norm_type == 2.0:  # within max_norm: unchanged, bit for bit
    for got, x in zip(jax.tree.leaves(clipped), jax.tree.leaves(g)):
      np.testing.assert_array_equal(got, x)


def test_clip_grad_norm_agrees_with_optax_up_to_eps():
  g = _grads(10.0)
  clipped, total = hgi.clip_grad_norm(g, 1.0)
  np.testing.assert_allclose(total, optax.tree.norm(g), rtol=1e-6)
  ref, _ = optax.clip_by_global_norm(1.0).update(g, optax.EmptyState())
  for a, b in zip(jax.tree.leaves(clipped), jax.tree.leaves(ref)):
    np.testing.assert_allclose(a, b, rtol=1e-5)
  # The clipped norm is max_norm, up to torch's 1e-6 in the denominator.
  np.testing.assert_allclose(optax.tree.norm(clipped), 1.0, rtol=1e-5)


def test_clip_grad_norm_nonfinite_like_torch_and_low_precision():
  g = {"a": jnp.array([1.0, jnp.nan]), "b": jnp.array([1.0, 2.0])}
  clipped, total = hgi.clip_grad_norm(g, 1.0)
  assert np.isnan(float(total)) and np.all(np.isnan(np.asarray(clipped["b"])))
  h = {"h": jnp.full((64, 64), 300.0, jnp.float16)}
  clipped, total = hgi.clip_grad_norm(h, 1.0)
  np.testing.assert_allclose(total, 300.0 * 64, rtol=1e-6)
  assert clipped["h"].dtype == jnp.float16
  np.testing.assert_allclose(clipped["h"].astype(jnp.float32), 1 / 64, rtol=1e-3)
  assert float(hgi.clip_grad_norm({}, 1.0)[1]) == 0.0
  with pytest.raises(ValueError, match="norm_type"):
    hgi.clip_grad_norm(g, 1.0, norm_type=-1)


def test_clip_grad_value():
  g = {"a": jnp.array([-3.0, -0.2, 0.0, 0.4, 7.0, jnp.nan]), "i": jnp.arange(3)}
  out = jax.jit(lambda g: hgi.clip_grad_value(g, 0.5))(g)
  np.testing.assert_array_equal(out["a"], np.clip(np.asarray(g["a"]), -0.5, 0.5))
  np.testing.assert_array_equal(out["i"], g["i"])
  ref, _ = optax.clip(0.5).update({"a": g["a"]}, optax.EmptyState())
  np.testing.assert_array_equal(out["a"], ref["a"])
  with pytest.raises(ValueError):
    hgi.clip_grad_value(g, -1.0)
