"""Indexing, structural and reduction rules against jax.grad (exactly, at ties and
out-of-range indices), finite differences where JAX refuses, and the refusals
themselves (a scatter body that is not its combine)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

import handgrad as hg

F32, F64 = "float32", "float64"
W = np.array([0.3, -1.2, 2.1, 0.7, -0.4, 1.3])


def _x64(dtype):
  return jax.enable_x64(dtype == F64)


def grads(f, *args, argnums=0):
  """``(handgrad.grad, jax.grad)`` of ``f`` at ``args`` in one jitted program."""
  both = lambda *a: (hg.grad(f, argnums)(*a), jax.grad(f, argnums)(*a))
  return jax.jit(both)(*args)


def assert_exact(f, *args, argnums=0):
  hand, ref = grads(f, *args, argnums=argnums)
  for h, r in zip(jax.tree.leaves(hand), jax.tree.leaves(ref)):
    assert h.dtype == r.dtype and h.shape == r.shape
    np.testing.assert_array_equal(np.asarray(h), np.asarray(r))
  return hand


def assert_matches_fd(f, *args, argnums=0):
  """float64 hand gradient == central finite differences (where jax.grad refuses)."""
  with jax.enable_x64(True):
    args = [np.asarray(a, np.float64) for a in args]
    hand = hg.grad(f, argnums)(*args)
    hands = hand if isinstance(argnums, tuple) else (hand,)
    nums = argnums if isinstance(argnums, tuple) else (argnums,)
    for h, i in zip(hands, nums):
      fi = lambda x, i=i: f(*args[:i], x, *args[i + 1:])
      np.testing.assert_allclose(np.asarray(h), hg.numerical_gradient(fi, args[i]),
                                 rtol=1e-6, atol=1e-7)
    return hand


# --- dynamic slicing: the primitives' own clamping ------------------------------------

@pytest.mark.parametrize("start", [-8, -5, -3, -1, 0, 2, 4, 7])
def test_dynamic_index_in_dim_out_of_range_starts(start):
  # -8 on a dimension of 5: the wrapper gives the primitive -3, which it clamps to 0;
  # the rule must not normalise -3 a second time (to row 2).
  x = np.arange(25.0, dtype=np.float32).reshape(5, 5)
  f = lambda x: jnp.sum(jnp.sin(lax.dynamic_index_in_dim(x, start, 0)))
  g = assert_exact(f, x)
  row = min(max(start + 5 if start < 0 else start, 0), 4)
  assert np.flatnonzero(np.asarray(g).any(axis=1)).tolist() == [row]


@pytest.mark.parametrize("start", [-8, -3, 0, 4, 9])
def test_dynamic_update_index_in_dim_out_of_range_starts(start):
  x = np.arange(25.0, dtype=np.float32).reshape(5, 5)
  y = np.linspace(-1, 1, 5).astype(np.float32)
  f = lambda x, y: jnp.sum(jnp.sin(lax.dynamic_update_index_in_dim(x, y, start, 0)))
  assert_exact(f, x, y, argnums=(0, 1))


def test_dynamic_slice_with_traced_negative_start():
  x = np.arange(12.0, dtype=np.float32).reshape(4, 3)
  f = lambda x, i: jnp.sum(W[:2, None] * lax.dynamic_slice(x, (i, 1), (2, 2)))
  for i in (-9, -2, 3, 8):
    assert_exact(f, x, np.int32(i))


# --- scatter bodies and modes ---------------------------------------------------------

def test_scatter_apply_is_refused_by_name():
  x = np.array([1.0, 2.0], np.float32)
  with pytest.raises(NotImplementedError, match=r"update_jaxpr.*sin"):
    hg.grad(lambda x: jnp.sum(x.at[1].apply(jnp.sin)))(x)
  with pytest.raises(NotImplementedError):  # jax.grad refuses it too
    jax.grad(lambda x: jnp.sum(x.at[1].apply(jnp.sin)))(x)


def test_scatter_add_with_another_body_is_refused():
  # scatter-add lowers whatever its update_jaxpr says: a body that is not add is refused.
  x, u = np.ones(3, np.float32), np.ones(1, np.float32)
  dnums = lax.ScatterDimensionNumbers((), (0,), (0,))
  body = jax.make_jaxpr(lax.mul)(np.float32(0), np.float32(0)).jaxpr
  f = lambda x, u: jnp.sum(lax.scatter_add_p.bind(
      x, np.array([[1]], np.int32), u, update_jaxpr=body, update_consts=(),
      dimension_numbers=dnums, indices_are_sorted=True, unique_indices=True,
      mode=lax.GatherScatterMode.FILL_OR_DROP))
  with pytest.raises(NotImplementedError, match=r"scatter-add.*\['mul'\]"):
    hg.grad(f, (0, 1))(x, u)


IDX = np.array([1, 1, 9, -7, 3, 2], np.int32)  # repeated and out of range on both sides


# jax 0.12 reads and counts scatter-max/min contenders with the scatter's own mode;
# earlier releases read out-of-bounds updates clamped and count them dropped, which can
# give such an update an infinite cotangent: the hand rule follows jax 0.12.
JAX_EXTREMAL_USES_MODE = tuple(map(int, jax.__version__.split(".")[:2])) >= (0, 12)


@pytest.mark.parametrize("mode", ["clip", "drop", "promise_in_bounds"])
@pytest.mark.parametrize("op", ["set", "add", "subtract", "min", "max"])
def test_scatter_modes_match_jax(op, mode):
  idx = np.clip(IDX, 0, 3) if mode == "promise_in_bounds" else IDX
  x = np.array([1.0, 2.0, 3.0, 2.0], np.float32)
  u = np.array([2.0, -5.0, 1.0, 2.0, 2.0, 7.0], np.float32)
  f = lambda x, u: jnp.sum(W[:4] * getattr(jnp.asarray(x).at[idx], op)(u, mode=mode))
  if op in ("min", "max") and mode != "promise_in_bounds" and not JAX_EXTREMAL_USES_MODE:
    # Out-of-bounds updates: distinct values, so finite differences are the reference.
    x, u = np.array([1.0, 2.5, 3.0, 2.0]), np.array([2.2, -5.0, 1.0, 2.1, 2.7, 7.0])
    assert_matches_fd(f, x, u, argnums=(0, 1))
  else:
    assert_exact(f, x, u, argnums=(0, 1))


@pytest.mark.parametrize("mode", ["clip", "drop"])
@pytest.mark.parametrize("op", ["min", "max"])
def test_scatter_extremal_out_of_bounds_updates(op, mode):
  # A dropped update gets nothing; a clamped one competes at the clamped place.
  x = np.array([1.0, 2.5, 3.0, 2.0])
  u = np.array([2.2, -5.0, 1.0, 2.1, 2.7, 7.0])
  f = lambda x, u: jnp.sum(W[:4] * getattr(jnp.asarray(x).at[IDX], op)(u, mode=mode))
  _, du = assert_matches_fd(f, x, u, argnums=(0, 1))
  if mode == "drop":  # IDX[2] = 9 and IDX[3] = -7 are out of range
    np.testing.assert_array_equal(np.asarray(du)[[2, 3]], [0.0, 0.0])


@pytest.mark.parametrize("mode", ["clip", "drop"])
def test_scatter_mul_modes_match_jax(mode):
  x = np.array([1.0, 0.0, 3.0, 2.0], np.float32)
  u = np.array([2.0, 0.0, 1.5], np.float32)
  idx = np.array([1, 7, 2], np.int32)
  f = lambda x, u: jnp.sum(W[:4] * x.at[idx].multiply(u, mode=mode, unique_indices=True))
  assert_exact(f, x, u, argnums=(0, 1))


@pytest.mark.parametrize("mode", ["clip", "fill", "promise_in_bounds"])
def test_gather_modes_match_jax(mode):
  x = np.arange(8.0, dtype=np.float32).reshape(4, 2)
  idx = np.array([0, 9, -9, 2, 2, 3], np.int32)
  if mode == "promise_in_bounds":
    idx = np.clip(idx, 0, 3)
  f = lambda x: jnp.sum(W[:, None] * x.at[idx].get(mode=mode, fill_value=5.0))
  assert_exact(f, x)


def test_gather_one_hot_mode_is_refused():
  from handgrad._src.rules import indexing
  with pytest.raises(NotImplementedError, match="ONE_HOT"):
    indexing._check_mode("gather", lax.GatherScatterMode.ONE_HOT)


# --- scatter-max / scatter-min / scatter-mul: ties and zeros ----------------------------

@pytest.mark.parametrize("dtype", [F32, F64])
@pytest.mark.parametrize("segment", [jax.ops.segment_max, jax.ops.segment_min])
def test_segment_max_min_average_over_ties(segment, dtype):
  with _x64(dtype):
    data = np.array([2.0, 2.0, 1.0, 3.0, 3.0, 3.0], dtype)
    ids = np.array([0, 0, 1, 1, 2, 2], np.int32)
    f = lambda d: jnp.sum(W[:3] * segment(d, ids, 3))
    g = assert_exact(f, data)
    if segment is jax.ops.segment_max:
      np.testing.assert_allclose(np.asarray(g), W[[0, 0, 1, 1, 2, 2]] * [.5, .5, 0, 1, .5, .5])


def test_scatter_max_shares_a_tie_with_the_old_value():
  x = np.array([2.0, 5.0, 0.0], np.float32)
  u = np.array([2.0, 2.0, 1.0], np.float32)
  f = lambda x, u: jnp.sum(W[:3] * x.at[np.array([0, 0, 1])].max(u))
  dx, du = assert_exact(f, x, u, argnums=(0, 1))
  np.testing.assert_allclose(np.asarray(dx), W[:3] * [1 / 3, 1, 1], rtol=1e-6)
  np.testing.assert_allclose(np.asarray(du), W[[0, 0, 1]] * [1 / 3, 1 / 3, 0], rtol=1e-6)


def test_segment_prod_with_zeros_matches_finite_differences():
  ids = np.array([0, 0, 1, 1, 1, 2], np.int32)
  f = lambda d: jnp.sum(W[:3] * jax.ops.segment_prod(d, ids, 3))
  for data in ([2.0, 0.5, 1.0, 3.0, -1.0, 4.0], [2.0, 0.0, 1.0, 0.0, -1.0, 4.0],
               [0.0, 0.0, 1.0, 0.0, 0.0, 0.0]):
    assert_matches_fd(f, np.array(data))
  with pytest.raises(NotImplementedError):  # jax.grad refuses repeated indices here
    jax.grad(f)(np.ones(6, np.float32))


def test_scatter_mul_with_repeated_indices_matches_finite_differences():
  f = lambda x, u: jnp.sum(W[:3, None] * jnp.asarray(x).at[np.array([2, 0, 2, 2])].multiply(u))
  assert_matches_fd(f, np.arange(6.0).reshape(3, 2) - 2, np.linspace(-2, 2, 8).reshape(4, 2),
                    argnums=(0, 1))


def test_scatter_mul_with_zeros_matches_jax():
  x = np.array([0.0, 2.0, 0.0, 1.0], np.float32)
  u = np.array([0.0, 3.0, 0.0], np.float32)
  f = lambda x, u: jnp.sum(W[:4] * x.at[np.array([0, 1, 3])].multiply(u, unique_indices=True))
  assert_exact(f, x, u, argnums=(0, 1))


# --- top_k, sort, argsort --------------------------------------------------------------

@pytest.mark.parametrize("dtype", [F32, F64])
def test_top_k_ties_follow_the_returned_indices(dtype):
  with _x64(dtype):
    x = np.array([[1.0, 3.0, 3.0, 2.0, 3.0], [0.0, 0.0, 0.0, 0.0, 0.0]], dtype)
    f = lambda x: jnp.sum(W[:3] * lax.top_k(x, 3)[0])
    assert_exact(f, x)
    f = lambda x: jnp.sum(W[:5, None] * lax.top_k(x.T, 1)[0])
    assert_exact(f, x)


def test_sort_with_two_keys_and_argsort():
  k = np.array([1.0, 3.0, 3.0, 2.0], np.float32)
  v = np.array([5.0, 6.0, 7.0, 8.0], np.float32)
  tie = np.array([1, 0, 1, 0], np.int32)
  f = lambda k, v: jnp.sum(W[:4] * lax.sort((k, tie, v), num_keys=2)[2] * k)
  assert_exact(f, k, v, argnums=(0, 1))
  assert_exact(lambda x: jnp.sum(W[:4] * x[jnp.argsort(x)]), k)
  assert_exact(lambda x: jnp.sum(W[:4] * jnp.sort(x, descending=True)), k)


# --- variadic reduce -----------------------------------------------------------------

def _tuple_reduce(x, y):
  return lax.reduce((x, y), (np.float32(0), np.float32(-np.inf)),
                    lambda a, b: (a[0] + b[0], lax.max(a[1], b[1])), (0,))


@pytest.mark.parametrize("n", [1, 2, 3, 5, 6, 7])
def test_tuple_reduce_ties_split_as_jax(n):
  x = np.linspace(-1, 1, 2 * n, dtype=np.float32).reshape(n, 2)
  y = np.full((n, 2), 3.0, np.float32)
  y[0, 1] = 4.0
  f = lambda x, y: jnp.sum(W[:2] * _tuple_reduce(x, y)[0] + W[2:4] * _tuple_reduce(x, y)[1])
  assert_exact(f, x, y, argnums=(0, 1))


BODIES = {
    "product": lambda p, q: p * q,
    "p*q + 1": lambda p, q: p * q + 1.0,
    "logaddexp": jnp.logaddexp,
}


@pytest.mark.parametrize("n", [1, 2, 3, 5, 8])
@pytest.mark.parametrize("body", sorted(BODIES))
def test_reduce_with_any_body_follows_jax_tree(body, n):
  x = np.linspace(0.5, 1.5, 2 * n, dtype=np.float32).reshape(n, 2)
  f = lambda x: jnp.sum(W[:2] * lax.reduce(x, np.float32(1), BODIES[body], (0,)))
  hand, ref = grads(f, x)
  np.testing.assert_allclose(np.asarray(hand), np.asarray(ref), rtol=1e-6, atol=1e-7)


def _argmax_body(a, b):
  pick = a[0] >= b[0]
  return lax.select(pick, a[0], b[0]), lax.select(pick, a[1], b[1])


def test_reduce_of_value_index_pairs_matches_finite_differences():
  # An argmax written as lax.reduce over (value, index): jax.grad fails on its int32
  # operand; the value's cotangent goes to the winning element.
  f = lambda x: jnp.sum(W[:2] * lax.reduce(
      (x, lax.broadcasted_iota(jnp.int32, x.shape, 1)), (np.array(-np.inf, x.dtype), np.int32(0)),
      _argmax_body, (1,))[0])
  g = assert_matches_fd(f, np.array([[1.0, 3.5, 3.0], [2.0, 0.0, 5.0]]))
  np.testing.assert_allclose(np.asarray(g), [[0, W[0], 0], [0, 0, W[1]]])


def test_reduce_body_without_a_rule_names_the_primitive():
  f = lambda x: lax.reduce(x, np.float32(0), lambda a, b: lax.nextafter(a, b), (0,))
  with pytest.raises(NotImplementedError, match="nextafter"):
    hg.grad(f)(np.ones(3, np.float32))


def test_reduce_with_a_differentiated_initial_value_matches_finite_differences():
  # jax.grad refuses a differentiated initial value; max/min combine it with the tree's
  # result (idempotent), add once.
  fmin = lambda x, v: jnp.sum(W[:2] * lax.reduce(x, v, lax.min, (1,)))
  assert_matches_fd(fmin, np.array([[0.3, -0.2, 0.5], [0.4, 0.9, 0.7]]), 0.1, argnums=(0, 1))
  fadd = lambda x, v: jnp.sum(W[:2] * lax.reduce(x, v, lax.add, (1,)))
  assert_matches_fd(fadd, np.array([[0.3, -0.2, 0.5], [0.4, 0.9, 0.7]]), 0.1, argnums=(0, 1))


def test_reduce_max_with_a_non_identity_initial_value():
  # max(0, max(x)) with every x < 0 is 0 whatever x is (XLA's value): no blame for x.
  # (jax.grad's halving tree ignores the initial value unless it pads an odd half, and
  # gives x[1] a gradient of 1 here.)
  f = lambda x: lax.reduce(x, np.float32(0), lax.max, (0,))
  np.testing.assert_array_equal(hg.grad(f)(np.array([-3.0, -1.0], np.float32)), [0.0, 0.0])
  np.testing.assert_array_equal(hg.grad(f)(np.array([3.0, -1.0], np.float32)), [1.0, 0.0])
  assert_exact(f, np.array([3.0, -1.0, 2.0], np.float32))


# --- pad -------------------------------------------------------------------------------

@pytest.mark.parametrize("config", [(), ((1, 2, 0),), ((-1, 1, 2),), ((-2, -3, 3),),
                                    ((0, 0, 1), (-1, 2, 0))])
def test_pad_configs_match_jax(config):
  x = np.linspace(-1, 1, 4 ** len(config)).reshape((4,) * len(config)).astype(np.float32)
  f = lambda x, v: jnp.sum(jnp.sin(lax.pad(x, v, config)) * 1.5)
  assert_exact(f, x, np.float32(0.7), argnums=(0, 1))


# --- stack / unstack / device_put ------------------------------------------------------

def test_stack_unstack_match_jax():
  x, y = np.ones((2, 3), np.float32), np.arange(6.0, dtype=np.float32).reshape(2, 3)
  f = lambda x, y: jnp.sum(jnp.sin(jnp.stack([x, y, x], axis=1)) * np.arange(18.0).reshape(2, 3, 3))
  assert_exact(f, x, y, argnums=(0, 1))
  g = lambda x: sum(jnp.sum(jnp.sin(t) * i) for i, t in enumerate(jnp.unstack(x, axis=1)))
  assert_exact(g, y)


def test_device_put_matches_jax():
  x = np.arange(6.0, dtype=np.float32).reshape(2, 3)
  assert_exact(lambda x: jnp.sum(jnp.sin(jax.device_put(x, jax.devices()[0]))), x)
  assert_exact(lambda x: jnp.sum(jnp.sin(jax.device_put(x))), x)


def test_device_put_refuses_donation():
  from handgrad._src.rules import structural
  eqn = jax.make_jaxpr(lambda x: jax.device_put(x, donate=True))(np.ones(2, np.float32)).eqns[0]
  with pytest.raises(NotImplementedError, match="DONATE_INPUT"):
    structural._device_put_vjp([np.ones(2, np.float32)], None, np.ones(2, np.float32),
                               **eqn.params)


# --- second order ----------------------------------------------------------------------

HESSIANS = {
    "stack": lambda x: jnp.sum(jnp.stack([x, x ** 2]) ** 2),
    "unstack": lambda x: sum(jnp.sum(t ** 3) for t in jnp.unstack(x.reshape(2, 3))),
    "top_k": lambda x: jnp.sum(lax.top_k(x ** 2, 3)[0] * W[:3]),
    "scatter-max": lambda x: jnp.sum(jax.ops.segment_max(x ** 3, np.array([0, 0, 1, 1, 2, 2]), 3)),
    "scatter-mul": lambda x: jnp.sum(
        x.at[np.array([0, 2])].multiply(x[3:5] ** 2, unique_indices=True)),
    "dynamic_slice": lambda x: jnp.sum(lax.dynamic_slice_in_dim(x ** 3, -8, 2)),
    "pad": lambda x: jnp.sum(lax.pad(x ** 2, 0.5, ((-1, 2, 1),)) ** 2),
    "reduce": lambda x: jnp.sum(_tuple_reduce(x.reshape(3, 2) ** 2, x.reshape(3, 2) ** 3)[1]),
    "reduce (product body)": lambda x: jnp.sum(
        lax.reduce(x.reshape(3, 2), np.float32(1), lambda p, q: p * q, (0,))),
}


@pytest.mark.parametrize("name", sorted(HESSIANS))
def test_hessian_matches_jax(name):
  f = HESSIANS[name]
  x = np.array([0.3, -1.1, 0.8, 1.7, -0.6, 1.2], np.float32)
  np.testing.assert_allclose(np.asarray(hg.hessian(f)(x)), np.asarray(jax.hessian(f)(x)),
                             rtol=1e-5, atol=1e-5)


# --- integer outputs, copies ----------------------------------------------------------

def test_argmax_argmin_indices_carry_no_gradient():
  x = np.array([[1.0, 3.0, 3.0], [2.0, -1.0, 0.5]], np.float32)
  f = lambda x: jnp.sum(jnp.take_along_axis(x, jnp.argmax(x, 1, keepdims=True), 1)
                        * jnp.take_along_axis(x, jnp.argmin(x, 1, keepdims=True), 1))
  assert_exact(f, x)
  idx = lambda x: jnp.argmax(x, 0).astype(jnp.float32) * jnp.max(x, 0)
  assert_exact(lambda x: jnp.sum(idx(x)), x)


def test_copies_and_reduce_precision():
  x = np.array([1.0, 3.0, -2.5], np.float32)
  assert_exact(lambda x: jnp.sum(jnp.sin(lax.copy_p.bind(x))), x)
  assert_exact(lambda x: jnp.sum(jnp.sin(jnp.array(x, copy=True))), x)
  assert_exact(lambda x: jnp.sum(W[:3] * lax.reduce_precision(jnp.sin(x), exponent_bits=4,
                                                               mantissa_bits=3)), x)
