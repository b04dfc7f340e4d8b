"""Convolution and windowed reductions beyond the spec table: second order (forward over
hand reverse and hand over hand against jax.hessian), max pooling's tie convention
checked element by element, and the generic reduce_window's init gradient and refusals."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

import handgrad as hg


def rand(shape, seed=0):
  return np.random.default_rng(seed).standard_normal(shape)


pytestmark = pytest.mark.usefixtures("x64")  # tests/conftest.py


def _conv_loss(x, w):
  y = lax.conv_general_dilated(x, w, (2, 1), ((1, 0), (0, 1)), rhs_dilation=(1, 2),
                               dimension_numbers=("NHWC", "HWIO", "NHWC"))
  return jnp.sum(jnp.tanh(y) ** 2)


def test_conv_hessian_equals_jax_hessian():
  x, w = rand((1, 4, 3, 2), 1), rand((2, 2, 2, 2), 2)
  for argnums in (0, 1):
    got = jax.jit(hg.hessian(_conv_loss, argnums))(x, w)
    want = jax.jit(jax.hessian(_conv_loss, argnums))(x, w)
    np.testing.assert_allclose(got, want, rtol=1e-7, atol=1e-7)


def test_conv_hand_over_hand_hvp_equals_jax():
  x, w, v = rand((1, 4, 3, 2), 1), rand((2, 2, 2, 2), 2), rand((1, 4, 3, 2), 3)
  f = lambda x: _conv_loss(x, w)  # noqa: E731
  got = jax.jit(lambda x, v: hg.hvp_reverse(f, x, v))(x, v)
  want = jax.jit(lambda x, v: jax.jvp(jax.grad(f), (x,), (v,))[1])(x, v)
  np.testing.assert_allclose(got, want, rtol=1e-7, atol=1e-7)


def _pool_loss(x):
  y = lax.reduce_window(x, -jnp.inf, lax.max, (2, 2), (1, 1), ((1, 0), (0, 1)))
  return jnp.sum(jnp.sin(y) * y)


def test_max_pool_hessian_equals_jax_hessian():
  x = rand((4, 3), 4)
  np.testing.assert_allclose(jax.jit(hg.hessian(_pool_loss))(x),
                             jax.jit(jax.hessian(_pool_loss))(x), rtol=1e-7, atol=1e-7)
  got = jax.jit(lambda x, v: hg.hvp_reverse(_pool_loss, x, v))(x, rand((4, 3), 5))
  want = jax.jit(lambda x, v: jax.jvp(jax.grad(_pool_loss), (x,), (v,))[1])(x, rand((4, 3), 5))
  np.testing.assert_allclose(got, want, rtol=1e-7, atol=1e-7)


@pytest.mark.parametrize("window,strides,padding", [
    ((2, 2), (1, 1), "VALID"), ((3, 3), (2, 2), "SAME"), ((2, 3), (1, 2), ((1, 1), (2, 0)))])
def test_max_pool_ties_go_where_jax_sends_them(window, strides, padding):
  # Integer-valued inputs: many ties. The whole cotangent of a window lands on one
  # element, the same one as jax.grad's (not split like reduce_max).
  x = np.random.default_rng(6).integers(0, 3, (5, 6)).astype(np.float64)
  g = rand(lax.reduce_window(x, -np.inf, lax.max, window, strides, padding).shape, 7)
  f = lambda x: jnp.sum(lax.reduce_window(x, -jnp.inf, lax.max, window, strides,  # noqa: E731
                                          padding) * g)
  got, want = jax.jit(hg.grad(f))(x), jax.jit(jax.grad(f))(x)
  np.testing.assert_array_equal(got == 0, want == 0)  # the same elements are blamed
  np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-15)  # up to summation order


def test_generic_reduce_window_init_gradient():
  # y = c + Σ window: padding adds nothing, so dy/dc = 1 per output.
  x = rand((3, 4), 8)
  f = lambda x, c: jnp.sum(lax.reduce_window(x, c, lax.add, (2, 2), (1, 1), ((1, 1), (0, 0))))  # noqa: E731
  dx, dc = jax.jit(hg.grad(f, argnums=(0, 1)))(x, 0.5)
  y = lax.reduce_window(x, 0.5, lax.add, (2, 2), (1, 1), ((1, 1), (0, 0)))
  assert dc == pytest.approx(y.size)
  np.testing.assert_allclose(dx, jax.grad(lambda x: jnp.sum(lax.reduce_window(
      x, 0.0, lax.add, (2, 2), (1, 1), ((1, 1), (0, 0)))))(x))


def test_generic_reduce_window_max_body_init_wins_ties():
  # max(0, window): like relu'(0) = 0, an element tied with the init gets nothing.
  x = np.array([-1.0, 0.0, 2.0, 0.0])
  f = lambda x, c: jnp.sum(lax.reduce_window(x, c, lax.max, (2,), (1,), "VALID"))  # noqa: E731
  dx, dc = hg.grad(f, argnums=(0, 1))(x, 0.0)
  np.testing.assert_array_equal(dx, [0.0, 0.0, 2.0, 0.0])
  assert dc == 1.0


def test_generic_reduce_window_with_another_body_raises():
  f = lambda x: jnp.sum(lax.reduce_window(x, 1.0, lax.mul, (2,), (1,), "VALID"))  # noqa: E731
  with pytest.raises(NotImplementedError, match="reduce_window: only .* sum, max or min body"):
    hg.grad(f)(rand((4,)))
