"""At kinks and ties every rule follows JAX's convention exactly: the hand gradient is
bit-for-bit ``jax.grad``'s (NaN and inf in the same places), and the convention itself
is pinned down (max splits ties, relu'(0) = 0, abs'(0) = 1, ...)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

import handgrad as hg

F32, F64 = "float32", "float64"


def _x64(dtype):
  return jax.enable_x64(True) if dtype == F64 else jax.enable_x64(False)


def grads(f, *args, argnums=0):
  """``(handgrad.grad, jax.grad)`` of ``f`` at ``args``, computed in one jitted program
  (one compilation instead of one per eager primitive)."""
  both = lambda *a: (hg.grad(f, argnums)(*a), jax.grad(f, argnums)(*a))
  return jax.jit(both)(*args)


def assert_exact(f, *args, argnums=0, expected=None):
  """Hand gradient == jax.grad exactly; both == ``expected`` when given."""
  hand, ref = grads(f, *args, argnums=argnums)
  single = isinstance(argnums, int)
  hands, refs = ((hand,), (ref,)) if single else (hand, ref)
  for h, r in zip(hands, refs):
    assert h.dtype == r.dtype and h.shape == r.shape
    np.testing.assert_array_equal(np.asarray(h), np.asarray(r))
  if expected is not None:
    for r, e in zip(refs, (expected,) if single else expected):
      np.testing.assert_array_equal(np.asarray(r), np.broadcast_to(np.asarray(e, r.dtype), r.shape))
  return hand


def arr(values, dtype=F32):
  return np.asarray(values, dtype=dtype)


# --- max / min and their users --------------------------------------------------------

@pytest.mark.parametrize("dtype", [F32, F64])
@pytest.mark.parametrize("op", [lax.max, lax.min])
def test_max_min_split_ties_evenly(op, dtype):
  with _x64(dtype):
    x, y = arr([1.0, 2.0, -3.0], dtype), arr([1.0, 0.0, -3.0], dtype)
    f = lambda x, y: jnp.sum(op(x, y))
    dx, dy = assert_exact(f, x, y, argnums=(0, 1))
    np.testing.assert_array_equal(np.asarray(dx)[[0, 2]], [0.5, 0.5])
    np.testing.assert_array_equal(np.asarray(dy)[[0, 2]], [0.5, 0.5])


def test_max_tie_with_a_broadcast_scalar_sums_the_halves():
  x, y = arr(2.0), arr([2.0, 2.0, 1.0])  # ½ + ½ from the ties, 1 where x wins
  assert_exact(lambda x, y: jnp.sum(lax.max(x, y)), x, y, argnums=(0, 1),
               expected=(2.0, [0.5, 0.5, 0.0]))


def test_max_of_a_value_with_itself():
  assert_exact(lambda x: jnp.sum(lax.max(x, x)), arr([0.0, 1.5]), expected=[1.0, 1.0])


def test_relu_conventions_at_zero():
  x = arr([0.0, -1.0, 2.0])
  # jnp.maximum(x, 0) splits the tie; jax.nn.relu (custom_jvp) and hg.ops.relu give 0.
  assert_exact(lambda x: jnp.sum(jnp.maximum(x, 0.0)), x, expected=[0.5, 0.0, 1.0])
  assert_exact(lambda x: jnp.sum(jax.nn.relu(x)), x, expected=[0.0, 0.0, 1.0])
  assert_exact(lambda x: jnp.sum(hg.ops.relu(x)), x, expected=[0.0, 0.0, 1.0])


def test_relu6_hard_tanh_leaky_relu_at_their_kinks():
  x = arr([0.0, 6.0, -1.0, 1.0, 3.0])
  assert_exact(lambda x: jnp.sum(jax.nn.relu6(x)), x, expected=[0, 0, 0, 1, 1])
  assert_exact(lambda x: jnp.sum(jax.nn.hard_tanh(x)), x)
  assert_exact(lambda x: jnp.sum(jax.nn.leaky_relu(x, 0.1)), x)


def test_clip_built_from_max_and_min_splits_at_its_bounds():
  x = arr([-1.0, 0.0, 0.5, 1.0, 2.0])
  assert_exact(lambda x: jnp.sum(jnp.clip(x, 0.0, 1.0)), x, expected=[0, 0.5, 1, 0.5, 0])


# --- clamp ----------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", [F32, F64])
def test_clamp_at_both_bounds(dtype):
  with _x64(dtype):
    lo, hi = arr([0.0, 0.0, 0.0, 0.0, 1.0], dtype), arr([1.0, 1.0, 1.0, 1.0, 1.0], dtype)
    x = arr([0.0, 1.0, -1.0, 2.0, 1.0], dtype)  # at lo, at hi, below, above, lo == hi == x
    f = lambda lo, x, hi: jnp.sum(lax.clamp(lo, x, hi) * jnp.arange(1.0, 6.0, dtype=dtype))
    dlo, dx, dhi = assert_exact(f, lo, x, hi, argnums=(0, 1, 2))
    np.testing.assert_array_equal(dx, [0, 0, 0, 0, 0])
    np.testing.assert_array_equal(dlo, [0, 0, 3, 0, 0])
    np.testing.assert_array_equal(dhi, [0, 0, 0, 4, 0])


def test_clamp_with_scalar_bounds_matches_jax_on_broadcast_bounds():
  # jax.grad itself fails for scalar bounds around an array (its JVP selects between a
  # scalar and an array), so the reference broadcasts the bounds first; the hand rule
  # sums the bounds' cotangents back to scalars.
  x = arr([-2.0, -0.5, 0.0, 0.3, 0.5, 2.0])
  w = arr([1.0, 2.0, 3.0, 4.0, 5.0, 6.0])
  f = lambda lo, x, hi: jnp.sum(lax.clamp(lo, x, hi) * w)
  f_ref = lambda lo, x, hi: jnp.sum(
      lax.clamp(jnp.broadcast_to(lo, x.shape), x, jnp.broadcast_to(hi, x.shape)) * w)
  hand = hg.grad(f, (0, 1, 2))(arr(-0.5), x, arr(0.5))
  ref = jax.grad(f_ref, (0, 1, 2))(arr(-0.5), x, arr(0.5))
  for h, r in zip(hand, ref):
    np.testing.assert_array_equal(h, r)
  np.testing.assert_array_equal(hand[0], 1.0)  # only x = -2 is below lo
  np.testing.assert_array_equal(hand[2], 6.0)  # only x = 2 is above hi


# --- abs, sign, steps, select -----------------------------------------------------------

def test_abs_at_zero_takes_the_plus_branch():
  assert_exact(lambda x: jnp.sum(jnp.abs(x)), arr([0.0, -0.0, -2.0]), expected=[1, 1, -1])


def test_complex_abs_and_sign_at_zero():
  # |x| and x/|x| have no derivative at complex 0; JAX divides by |x| with zeros
  # replaced by ones, so both get zero blame there.
  x = np.asarray([0.0, 1.0 - 2.0j, 0.0], np.complex64)
  dx = assert_exact(lambda x: jnp.sum(lax.abs(x)), x)
  np.testing.assert_array_equal(np.asarray(dx)[[0, 2]], [0, 0])
  ct = np.asarray([1.0 + 1.0j, 0.5j, -2.0], np.complex64)
  (ds,) = hg.vjp(lax.sign, x)[1](ct)
  np.testing.assert_array_equal(np.asarray(ds)[[0, 2]], [0, 0])


def test_bessel_i1e_at_zero_is_one_half():
  # i1e'(x) = i0e(x) − i1e(x)·(sign x + 1/x) cannot be evaluated at 0: JAX uses the
  # limit ½ wherever |x| ≤ eps.
  for dtype in (F32, F64):
    with _x64(dtype):
      assert_exact(lambda x: jnp.sum(lax.bessel_i1e(x)), arr([0.0, -0.0, 1e-30, 3.0], dtype))


def test_piecewise_constant_functions_at_their_jumps():
  x = arr([0.0, 1.0, 0.5, -0.5, 2.5])
  for f in (jnp.sign, jnp.floor, jnp.ceil, jnp.round):
    assert_exact(lambda x: jnp.sum(f(x) * x), x)


def test_where_at_its_switching_point():
  x = arr([0.0, 1.0, -1.0])
  assert_exact(lambda x: jnp.sum(jnp.where(x > 0, x, 0.0)), x, expected=[0, 1, 0])
  assert_exact(lambda x: jnp.sum(jnp.where(x >= 0, x, -x)), x, expected=[1, 1, -1])


def test_select_n_with_an_int32_index_and_a_scalar_predicate():
  a, b, c = arr([1.0, 2.0]), arr([3.0, 4.0]), arr([5.0, 6.0])
  f = lambda a, b, c: jnp.sum(lax.select_n(np.int32(2), a, b, c) + lax.select_n(
      np.array([0, 1], np.int32), a, b))
  assert_exact(f, a, b, c, argnums=(0, 1, 2), expected=([1, 0], [0, 1], [1, 1]))


# --- reductions with ties ---------------------------------------------------------------

@pytest.mark.parametrize("dtype", [F32, F64])
def test_reduce_max_and_min_split_ties_evenly(dtype):
  with _x64(dtype):
    x = arr([[1.0, 3.0, 3.0, 2.0], [5.0, 5.0, 5.0, -1.0]], dtype)
    assert_exact(lambda x: jnp.sum(jnp.max(x, axis=1)), x,
                 expected=[[0, 0.5, 0.5, 0], [1 / 3, 1 / 3, 1 / 3, 0]])
    assert_exact(lambda x: jnp.sum(jnp.min(-x, axis=1)), x)
    assert_exact(lambda x: jnp.max(jnp.full((4,), 2.0, dtype) * x[0, 1]), x)


def test_argmax_with_ties_feeds_the_first_maximum():
  x = arr([1.0, 3.0, 3.0])
  assert_exact(lambda x: x[jnp.argmax(x)] * 2.0, x, expected=[0, 2, 0])


# --- powers and roots at 0 -----------------------------------------------------------------

@pytest.mark.parametrize("y", [0, 1, 2, 3, -2])
def test_integer_pow_at_zero(y):
  x = arr([0.0, -1.5, 2.0])
  hand = assert_exact(lambda x: jnp.sum(lax.integer_pow(x, y)), x)
  assert hand[0] == {0: 0.0, 1: 1.0, 2: 0.0, 3: 0.0, -2: -np.inf}[y]


@pytest.mark.parametrize("y", [0, 1, 2, 3, -1])
def test_pow_with_an_integer_exponent_at_base_zero(y):
  x = arr([0.0, 1.5, -2.0])
  assert_exact(lambda x: jnp.sum(lax.pow(x, np.int32(y))), x)


@pytest.mark.parametrize("y", [0.0, 0.5, 1.0, 2.0, 2.5, -1.0])
def test_pow_with_a_float_exponent_at_base_zero(y):
  x, y = arr([0.0, 1.5]), arr([y, y])
  # d/dy at x = 0 uses log(1) = 0 in place of log(0), as JAX does.
  assert_exact(lambda x, y: jnp.sum(lax.pow(x, y)), x, y, argnums=(0, 1))


@pytest.mark.parametrize("dtype", [F32, F64])
def test_roots_and_logs_at_zero(dtype):
  with _x64(dtype):
    x = arr([0.0, 1.0], dtype)
    for f in (jnp.sqrt, lax.rsqrt, jnp.cbrt, jnp.log, lambda x: jnp.log1p(x - 1)):
      assert_exact(lambda x: jnp.sum(f(x)), x)
    assert grads(lambda x: jnp.sum(jnp.sqrt(x)), x)[0][0] == np.inf


def test_atan2_at_the_origin():
  assert_exact(lambda x, y: jnp.sum(jnp.arctan2(x, y)), arr([0.0, 1.0]), arr([0.0, 1.0]),
               argnums=(0, 1))


# --- cumulative reductions and sort with ties --------------------------------------------

@pytest.mark.parametrize("n", [2, 5, 8])
@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("op", [lax.cummax, lax.cummin])
def test_cummax_cummin_ties_split_like_jax(op, reverse, n):
  # JAX differentiates the prefix-scan tree, splitting each tie it meets in half: the
  # shares are not 1/k, so only walking the same tree reproduces them.
  x = arr(np.tile([1.0, 1.0, 0.5], 3)[:n])
  w = arr(np.arange(1.0, n + 1))
  assert_exact(lambda x: jnp.sum(op(x, 0, reverse=reverse) * w), x)


def test_cumprod_with_zeros_matches_jax():
  x = arr([2.0, 0.0, 3.0, 0.0, -1.5, 4.0, 0.5])
  w = arr(np.arange(1.0, 8.0))
  hand, ref = grads(lambda x: jnp.sum(jnp.cumprod(x) * w), x)
  np.testing.assert_allclose(hand, ref, rtol=1e-6)
  assert np.all(np.isfinite(hand))


def test_sort_ties_follow_the_stable_order():
  x = arr([2.0, 1.0, 2.0, 1.0, 3.0])
  w = arr([1.0, 10.0, 100.0, 1000.0, 10000.0])
  assert_exact(lambda x: jnp.sum(jnp.sort(x) * w), x,
               expected=[100.0, 1.0, 1000.0, 10.0, 10000.0])
  assert_exact(lambda x: jnp.sum(lax.sort(x, is_stable=False) * w), x)


def test_rem_at_its_jumps():
  # x/y an integer: d/dy = −sign(x/y)·floor(|x/y|), JAX's formula, exactly.
  x, y = arr([3.0, -4.0, 1.0, 2.5]), arr([1.5, 2.0, 2.0, -0.5])
  assert_exact(lambda x, y: jnp.sum(lax.rem(x, y)), x, y, argnums=(0, 1),
               expected=([1, 1, 1, 1], [-2, 2, 0, 5]))
