"""Indexing: gather and its transpose, scatter-add; scatter (``x.at[i].set``); sort.

``x[i]``, ``jnp.take``, ``jnp.take_along_axis`` and advanced indexing lower to
``gather``.  Gather reads slices of the operand at the given start indices, so its
transpose *adds* the cotangent slices back at the same places: a ``scatter-add`` into
zeros.  Repeated indices therefore accumulate blame, as they must.  Out-of-bounds
handling (``mode``) is the same on both sides: a clamped read adds into the clamped
place, and a filled read (``FILL_OR_DROP``) drops its cotangent.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
from jax import lax

from handgrad._src.registry import defvjp


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


# z = gather(x, idx):  dx = scatter_add(0, idx, g)
@defvjp("gather")
def _gather_vjp(g, ans, x, indices, *, dimension_numbers, slice_sizes, indices_are_sorted,
                unique_indices, mode, fill_value):
  zero = lax.full(x.shape, 0, x.dtype)
  dx = lax.scatter_add(zero, indices, g, _scatter_dnums(dimension_numbers),
                       indices_are_sorted=indices_are_sorted,
                       unique_indices=unique_indices, mode=mode)
  return dx, None


# z = scatter_add(x, idx, u):  dx = g;  du = gather(g, idx)
@defvjp("scatter-add")
def _scatter_add_vjp(g, ans, x, indices, updates, *, dimension_numbers, indices_are_sorted,
                     unique_indices, mode, **params):
  du = lax.gather(g, indices, _gather_dnums(dimension_numbers),
                  _slice_sizes(x.shape, updates.shape, dimension_numbers),
                  indices_are_sorted=indices_are_sorted, unique_indices=unique_indices,
                  mode=mode, fill_value=0)
  return g, None, lax.convert_element_type(du, updates.dtype)


# z = scatter(x, idx, u) (overwrite):  dx = g with the written places zeroed;
# du = g at the places each update actually won.  With repeated indices only one
# update survives; we find it by scattering each update's id and reading it back
# (the same tie rule as JAX), and give the others no blame.
@defvjp("scatter")
def _scatter_vjp(g, ans, x, indices, updates, *, dimension_numbers, indices_are_sorted,
                 unique_indices, mode, **params):
  gd = _gather_dnums(dimension_numbers)
  sizes = _slice_sizes(x.shape, updates.shape, dimension_numbers)
  kw = dict(indices_are_sorted=indices_are_sorted, unique_indices=unique_indices, mode=mode)
  dx = lax.scatter(g, indices, lax.full(updates.shape, 0, g.dtype), dimension_numbers, **kw)
  du = lax.gather(g, indices, gd, sizes, mode=mode, fill_value=0,
                  indices_are_sorted=indices_are_sorted, unique_indices=unique_indices)
  if not unique_indices:
    ids = lax.add(lax.iota("int32", updates.size), lax.full((), 1, "int32"))
    ids = lax.reshape(ids, updates.shape)
    winner = lax.scatter(lax.full(x.shape, 0, "int32"), indices, ids, dimension_numbers, **kw)
    won = lax.eq(lax.gather(winner, indices, gd, sizes, mode=mode, fill_value=0,
                            indices_are_sorted=indices_are_sorted,
                            unique_indices=unique_indices), ids)
    du = lax.select(won, du, lax.full_like(du, 0))
  return dx, None, lax.convert_element_type(du, updates.dtype)


# (z₁, …, zₖ) = sort(x₁, …, xₖ) along ``dimension``, ordered by the first ``num_keys``
# operands: every zᵢ is xᵢ permuted by one permutation π, so dxᵢ = gᵢ permuted by π⁻¹.
# π comes from sorting an iota along with the operands, as JAX's rule does, so ties
# resolve the same way; sorting the pairs (π, gᵢ) by π then applies π⁻¹ exactly.
@defvjp("sort")
def _sort_vjp(g, ans, *operands, dimension, is_stable, num_keys):
  iota = lax.broadcasted_iota(np.int32, np.shape(operands[0]), dimension)
  perm = lax.sort((*operands, iota), dimension=dimension, is_stable=is_stable,
                  num_keys=num_keys)[-1]
  return tuple(
      lax.sort((perm, ct), dimension=dimension, is_stable=False, num_keys=1)[1]
      if ct is not None and jnp.issubdtype(lax.dtype(x), jnp.inexact) else None
      for x, ct in zip(operands, g))
