"""Indexing: gather; the scatters (``x.at[i].set/add/subtract/multiply/min/max``,
``jax.ops.segment_*``); sort (argsort) and top_k.

``x[i]``, ``jnp.take``, ``jnp.take_along_axis`` and advanced indexing lower to
``gather``.  Gather reads slices of the operand at the given start indices, so its
transpose *adds* the cotangent slices back at the same places: a ``scatter-add`` into
zeros.  Repeated indices therefore accumulate blame, as they must.  Out-of-bounds
handling (``mode``) is the same on both sides: a clamped read adds into the clamped
place, and a filled read (``FILL_OR_DROP``) drops its cotangent.

A scatter's ``update_jaxpr`` is the function its lowering computes, so each scatter
rule checks that body is its own combine (``add`` for scatter-add, none for a plain
overwrite) and refuses any other by name.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
from jax import lax

from handgrad._src import jaxpr as jaxpr_lib
from handgrad._src.registry import defvjp
from handgrad._src.rules import _sharding


def _scatter_dnums(d: lax.GatherDimensionNumbers) -> lax.ScatterDimensionNumbers:
  return lax.ScatterDimensionNumbers(
      update_window_dims=d.offset_dims,
      inserted_window_dims=d.collapsed_slice_dims,
      scatter_dims_to_operand_dims=d.start_index_map,
      operand_batching_dims=d.operand_batching_dims,
      scatter_indices_batching_dims=d.start_indices_batching_dims)


def _gather_dnums(d: lax.ScatterDimensionNumbers) -> lax.GatherDimensionNumbers:
  return lax.GatherDimensionNumbers(
      offset_dims=d.update_window_dims,
      collapsed_slice_dims=d.inserted_window_dims,
      start_index_map=d.scatter_dims_to_operand_dims,
      operand_batching_dims=d.operand_batching_dims,
      start_indices_batching_dims=d.scatter_indices_batching_dims)


def _slice_sizes(operand_shape, updates_shape, d: lax.ScatterDimensionNumbers):
  """The window a scatter writes, as the slice sizes of the matching gather."""
  sizes, pos = [], 0
  for i in range(len(operand_shape)):
    if i in d.inserted_window_dims or i in d.operand_batching_dims:
      sizes.append(1)
    else:
      sizes.append(updates_shape[d.update_window_dims[pos]])
      pos += 1
  return tuple(sizes)


_MODES = ("CLIP", "FILL_OR_DROP", "PROMISE_IN_BOUNDS")


def _check_mode(name, mode):
  """The gather/scatter modes whose transposes are known: the same mode on both sides.

  CLIP clamps the window into range in both directions; FILL_OR_DROP fills an
  out-of-bounds read and drops an out-of-bounds write, so the cotangent of a filled
  read is dropped; PROMISE_IN_BOUNDS is passed through as JAX's transpose passes it
  (clamped reads, dropped writes on XLA; wrong gradients for out-of-bounds indices in
  JAX too).  Any other mode (``ONE_HOT``) is refused.
  """
  mode = lax.GatherScatterMode.from_any(mode)
  if mode.name not in _MODES:
    raise NotImplementedError(f"{name} with mode={mode} is not supported")
  return mode


def _check_body(name, update_jaxpr, update_consts, op):
  """The scatter's ``update_jaxpr`` must combine (old, new) with ``op`` (``None`` for a
  plain overwrite): the XLA lowering computes whatever that body says, so another body
  (``x.at[i].apply(jnp.sin)`` gives ``scatter`` the body ``sin``) is refused by name."""
  if update_jaxpr is None and op is None:
    return
  ops = None if update_jaxpr is None else jaxpr_lib.pairwise_ops(update_jaxpr)
  if op is None or ops != [op] or update_consts:
    body = None if update_jaxpr is None else jaxpr_lib.primitive_names(update_jaxpr)
    want = "no update_jaxpr (a plain overwrite)" if op is None else f"the body {op}(x, u)"
    raise NotImplementedError(
        f"{name} whose update_jaxpr computes {body} (update_consts={len(update_consts)}) "
        f"is not supported: its rule needs {want}.  x.at[i].apply(f) is such a scatter "
        "(jax.grad does not differentiate it either)")


def _zeros_of(x, dtype=None):
  """Zeros of x's shape (and sharding), in ``dtype`` (x's by default)."""
  return lax.full_like(x, 0, dtype)


# z = gather(x, idx):  dx = scatter_add(0, idx, g), with the gather's own mode (a
# clamped read adds into the clamped place, a filled read drops its cotangent, the
# fill value is a constant), sortedness and uniqueness, as JAX's transpose does.
@defvjp("gather")
def _gather_vjp(g, ans, x, indices, *, dimension_numbers, slice_sizes, indices_are_sorted,
                unique_indices, mode, fill_value):
  mode = _check_mode("gather", mode)
  dx = lax.scatter_add(_zeros_of(x, g.dtype), indices, g, _scatter_dnums(dimension_numbers),
                       indices_are_sorted=indices_are_sorted,
                       unique_indices=unique_indices, mode=mode)
  return lax.convert_element_type(dx, lax.dtype(x)), None


def _read_back(g, indices, x, updates, d, mode, **kw):
  """gather(g, idx) with the window a scatter of ``updates`` into ``x`` writes: the
  transpose of that scatter-add (out-of-bounds windows read 0)."""
  return lax.gather(g, indices, _gather_dnums(d), _slice_sizes(np.shape(x), np.shape(updates), d),
                    mode=mode, fill_value=0, **kw)


# z = scatter_add(x, idx, u):  dx = g;  du = gather(g, idx)
# z = scatter_sub(x, idx, u):  dx = g;  du = −gather(g, idx)
def _scatter_addsub_vjp(name, op):
  def rule(g, ans, x, indices, updates, *, update_jaxpr, update_consts, dimension_numbers,
           indices_are_sorted, unique_indices, mode):
    _check_body(name, update_jaxpr, update_consts, op)
    mode = _check_mode(name, mode)
    du = _read_back(g, indices, x, updates, dimension_numbers, mode,
                    indices_are_sorted=indices_are_sorted, unique_indices=unique_indices)
    if op == "sub":
      du = lax.neg(du)
    return g, None, lax.convert_element_type(du, lax.dtype(updates))
  return rule


defvjp("scatter-add", _scatter_addsub_vjp("scatter-add", "add"))
defvjp("scatter-sub", _scatter_addsub_vjp("scatter-sub", "sub"))


# z = scatter(x, idx, u) (overwrite):  dx = g with the written places zeroed;
# du = g at the places each update actually won.  With repeated indices only one
# update survives; we find it by scattering each update's id and reading it back
# (the same tie rule as JAX), and give the others no blame.  As in JAX's rule, the
# ids are read back with lax.gather's default mode, PROMISE_IN_BOUNDS (a clamped
# read on XLA), whatever the scatter's mode.
@defvjp("scatter")
def _scatter_vjp(g, ans, x, indices, updates, *, update_jaxpr, update_consts,
                 dimension_numbers, indices_are_sorted, unique_indices, mode):
  _check_body("scatter", update_jaxpr, update_consts, None)
  mode = _check_mode("scatter", mode)
  kw = dict(indices_are_sorted=indices_are_sorted, unique_indices=unique_indices)
  dx = lax.scatter(g, indices, lax.full_like(updates, 0, g.dtype), dimension_numbers,
                   mode=mode, **kw)
  du = _read_back(g, indices, x, updates, dimension_numbers, mode, **kw)
  if not unique_indices:
    ids = lax.add(lax.iota("int32", int(np.size(updates))), lax.full((), 1, "int32"))
    ids = lax.reshape(ids, np.shape(updates))
    winner = lax.scatter(lax.full(np.shape(x), 0, "int32"), indices, ids, dimension_numbers,
                         mode=mode, **kw)
    won = lax.eq(_read_back(winner, indices, x, updates, dimension_numbers,
                            lax.GatherScatterMode.PROMISE_IN_BOUNDS, **kw), ids)
    du = lax.select(won, du, lax.full_like(du, 0))
  return dx, None, lax.convert_element_type(du, lax.dtype(updates))


# z = scatter_mul(x, idx, u):  z_p = x_p·Π_{k: idx_k = p} u_k.
#   dx = scatter_mul(g, idx, u)  (g times the product of the updates at each place);
#   du_k = gather(g·x, idx)_k · Π_{j ≠ k, idx_j = idx_k} u_j.
# With unique indices the product over the others is empty (JAX's rule).  With
# repeated indices (jax.ops.segment_prod; JAX refuses this case) the product of the
# others is taken without dividing by a zero: per place, the number of zero factors
# Z and the product N of the non-zero ones; then
#   Π_{j≠k} u_j = N/u_k if u_k ≠ 0 and Z = 0,   N if u_k = 0 and Z = 1,   else 0.
@defvjp("scatter-mul")
def _scatter_mul_vjp(g, ans, x, indices, updates, *, update_jaxpr, update_consts,
                     dimension_numbers, indices_are_sorted, unique_indices, mode):
  _check_body("scatter-mul", update_jaxpr, update_consts, "mul")
  mode = _check_mode("scatter-mul", mode)
  d = dimension_numbers
  kw = dict(indices_are_sorted=indices_are_sorted, unique_indices=unique_indices)
  u = lax.convert_element_type(updates, g.dtype)
  dx = lax.scatter_mul(g, indices, u, d, mode=mode, **kw)
  if not jnp.issubdtype(lax.dtype(updates), jnp.inexact):
    return dx, None, None
  gx = lax.mul(g, lax.convert_element_type(x, g.dtype))
  du = _read_back(gx, indices, x, updates, d, mode, **kw)
  if not unique_indices:
    zero, one = lax.full_like(u, 0), lax.full_like(u, 1)
    is_zero = lax.eq(u, zero)
    zeros = _read_back(lax.scatter_add(lax.full_like(g, 0), indices,
                                       lax.select(is_zero, one, zero), d, mode=mode, **kw),
                       indices, x, updates, d, mode, **kw)
    nonzero = _read_back(lax.scatter_mul(lax.full_like(g, 1), indices,
                                         lax.select(is_zero, one, u), d, mode=mode, **kw),
                         indices, x, updates, d, mode, **kw)
    none_zero, one_zero = lax.eq(zeros, zero), lax.eq(zeros, one)
    others = lax.select(is_zero, lax.select(one_zero, nonzero, zero),
                        lax.select(none_zero, lax.div(nonzero, lax.select(is_zero, one, u)),
                                   zero))
    du = lax.mul(du, others)
  return dx, None, lax.convert_element_type(du, lax.dtype(updates))


# z = scatter_max(x, idx, u) (and min):  each place keeps the largest of its old value
# and the updates written there.  JAX's convention (its scatter-max JVP): the cotangent
# of a place is shared evenly among every contender that attains the result, the old
# value included; an update that loses gets nothing.  With
#   n = number of updates attaining the result at the update's place,
#   r = 1 if the old value attains it too, c = number of updates at that place:
#   du = gather(g)·[u attains]/(n + r),
#   dx = g − scatter_add(gather(g)·(1 − r/(n + r))/c)   (the old value's share is
#        1/(n + r) if it attains the result, else 0).
# Every read and count uses the scatter's own mode, as jax ≥ 0.12 does: a dropped
# update reads NaN, attains nothing and gets nothing.  (jax 0.10 and 0.11 read with
# PROMISE_IN_BOUNDS and count with FILL_OR_DROP, so an out-of-bounds update under
# mode=clip or drop can get an infinite or NaN cotangent there; in bounds both agree.)
def _scatter_extremal_vjp(name, op):
  def rule(g, ans, x, indices, updates, *, update_jaxpr, update_consts, dimension_numbers,
           indices_are_sorted, unique_indices, mode):
    _check_body(name, update_jaxpr, update_consts, op)
    mode = _check_mode(name, mode)
    d = dimension_numbers
    kw = dict(indices_are_sorted=indices_are_sorted, unique_indices=unique_indices,
              mode=mode)
    gd, sizes = _gather_dnums(d), _slice_sizes(np.shape(x), np.shape(updates), d)
    read = lambda a: lax.gather(a, indices, gd, sizes, **kw)
    initial, target = read(x), read(ans)
    won = lax.eq(updates, target)
    kept = lax.eq(initial, target)
    one_u, zero_u = lax.full_like(updates, 1), lax.full_like(updates, 0)
    zeros_x = lax.full_like(x, 0)
    n = read(lax.scatter_add(zeros_x, indices, lax.select(won, one_u, zero_u), d, **kw))
    refs = read(lax.scatter_add(zeros_x, indices, one_u, d, **kw))
    one = lax.full_like(n, 1)
    u_share = lax.select(kept, lax.div(one, lax.add(n, one)), lax.div(one, n))
    u_coef = lax.select(won, u_share, lax.full_like(n, 0))
    x_share = lax.select(kept, lax.div(one, lax.add(n, one)), lax.full_like(n, 0))
    x_coef = lax.div(lax.add(lax.full_like(n, -1), x_share), refs)
    gu = _read_back(g, indices, x, updates, d, mode, indices_are_sorted=indices_are_sorted,
                    unique_indices=unique_indices)  # the transpose of the scatter_add
    du = lax.mul(gu, lax.convert_element_type(u_coef, g.dtype))
    back = lax.mul(gu, lax.convert_element_type(x_coef, g.dtype))
    dx = lax.add(g, lax.scatter_add(lax.full_like(g, 0), indices, back, d, **kw))
    return dx, None, lax.convert_element_type(du, lax.dtype(updates))
  return rule


defvjp("scatter-max", _scatter_extremal_vjp("scatter-max", "max"))
defvjp("scatter-min", _scatter_extremal_vjp("scatter-min", "min"))


# (z₁, …, zₖ) = sort(x₁, …, xₖ) along ``dimension``, ordered by the first ``num_keys``
# operands: every zᵢ is xᵢ permuted by one permutation π, so dxᵢ = gᵢ permuted by π⁻¹.
# π comes from sorting an iota along with the operands, as JAX's rule does, so ties
# resolve the same way; sorting the pairs (π, gᵢ) by π then applies π⁻¹ exactly.
@defvjp("sort")
def _sort_vjp(g, ans, *operands, dimension, is_stable, num_keys):
  iota = lax.broadcasted_iota(np.int32, np.shape(operands[0]), dimension,
                              out_sharding=_sharding.of(operands[0]))
  perm = lax.sort((*operands, iota), dimension=dimension, is_stable=is_stable,
                  num_keys=num_keys)[-1]
  return tuple(
      lax.sort((perm, ct), dimension=dimension, is_stable=False, num_keys=1)[1]
      if ct is not None and jnp.issubdtype(lax.dtype(x), jnp.inexact) else None
      for x, ct in zip(operands, g))


# (v, i) = top_k(x, k) along ``axis``:  v = x at the indices i, so dx = g scattered
# back to the places i along that axis (the indices are distinct, so nothing adds up);
# among tied values the cotangent follows the indices top_k returned, as in JAX.
# ``is_stable`` (jax ≥ 0.12) only decides those indices.
@defvjp("top_k")
def _top_k_vjp(g, ans, x, *, k, axis=-1, is_stable=True):
  gv, _ = g
  _, idx = ans
  ndim = np.ndim(x)
  axis = axis % ndim
  # Move the axis last and flatten the rest into one batch axis b:
  #   dx[b, idx[b, j]] += g[b, j]  (a scatter-add with a batching dimension).
  perm = [d for d in range(ndim) if d != axis] + [axis]
  gt, it = lax.transpose(gv, perm), lax.transpose(idx, perm)
  batch = int(np.prod(gt.shape[:-1], dtype=np.int64))
  n = np.shape(x)[axis]
  gt = lax.reshape(gt, (batch, k))
  it = lax.reshape(it, (batch, k, 1))
  dnums = lax.ScatterDimensionNumbers(
      update_window_dims=(), inserted_window_dims=(1,), scatter_dims_to_operand_dims=(1,),
      operand_batching_dims=(0,), scatter_indices_batching_dims=(0,))
  dx = lax.scatter_add(lax.full((batch, n), 0, gv.dtype), it, gt, dnums,
                       indices_are_sorted=False, unique_indices=True,
                       mode=lax.GatherScatterMode.PROMISE_IN_BOUNDS)
  dx = lax.reshape(dx, tuple(np.shape(x)[d] for d in perm))
  return (lax.convert_element_type(lax.transpose(dx, tuple(np.argsort(perm))),
                                   lax.dtype(x)),)
