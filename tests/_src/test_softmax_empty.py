"""ops.softmax / ops.log_softmax of a zero-size class axis: empty, as jax.nn; their
gradients are empty too, as jax.grad's."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import handgrad as hg

CASES = [((3, 0), -1), ((0,), 0), ((0, 4), 0), ((0, 4), -1), ((2, 0, 3), 1)]
PAIRS = [(hg.ops.softmax, jax.nn.softmax), (hg.ops.log_softmax, jax.nn.log_softmax)]


@pytest.mark.parametrize("shape, axis", CASES)
@pytest.mark.parametrize("ours, ref", PAIRS)
def test_zero_size_forward_and_gradient(shape, axis, ours, ref):
  x = jnp.zeros(shape, jnp.float32)
  got, want = ours(x, axis=axis), ref(x, axis=axis)
  assert got.shape == want.shape and got.dtype == want.dtype
  loss = lambda f: lambda x: jnp.sum(f(x, axis=axis) * 2.0)  # noqa: E731
  g, g_ref = hg.grad(loss(ours))(x), jax.grad(loss(ref))(x)
  assert g.shape == g_ref.shape == shape and g.dtype == g_ref.dtype


@pytest.mark.parametrize("ours, ref", PAIRS)
def test_nonempty_unchanged_including_minus_inf_rows(ours, ref):
  x = jnp.array([[1.0, -2.0, 3.0], [-jnp.inf, 0.0, 1.0]], jnp.float32)
  np.testing.assert_allclose(ours(x), ref(x), rtol=1e-6)
  loss = lambda f: lambda x: jnp.sum(jnp.where(jnp.isfinite(f(x)), f(x), 0.0) * jnp.arange(3.0))  # noqa: E731,E501
  np.testing.assert_allclose(hg.grad(loss(ours))(x), jax.grad(loss(ref))(x), rtol=1e-5,
                             atol=1e-6)
