"""Shape and layout operations: broadcast, reshape, transpose, slicing, padding.

All of these are linear in their array operand, so each rule is the transpose of the
operation: broadcast ↔ sum, slice ↔ pad with zeros, concatenate ↔ split.
"""

from __future__ import annotations

import numpy as np
from jax import lax

from handgrad._src.registry import defvjp
from handgrad._src.rules._common import zeros_like


# z = broadcast_in_dim(x, shape, dims):  dx = g summed over the new dimensions and
# over the dimensions where x had size 1 but z does not, then reshaped to x.
@defvjp("broadcast_in_dim")
def _broadcast_in_dim_vjp(g, ans, x, *dyn_shape, shape, broadcast_dimensions, **params):
  new_dims = [d for d in range(len(shape)) if d not in broadcast_dimensions]
  expanded = [bd for i, bd in enumerate(broadcast_dimensions)
              if x.shape[i] == 1 and shape[bd] != 1]
  axes = tuple(sorted(new_dims + expanded))
  ct = lax.reduce_sum(g, axes) if axes else g
  return (lax.reshape(ct, x.shape), *([None] * len(dyn_shape)))


# z = reshape(x):  dx = reshape(g) back to x's shape.  With ``dimensions`` (Fortran
# order, ``ravel(order="F")``) reshape first transposes x by ``dimensions``, so the
# cotangent is reshaped to the transposed shape and transposed back (as in JAX).
@defvjp("reshape")
def _reshape_vjp(g, ans, x, *dyn, dimensions=None, **params):
  if dimensions is None:
    return (lax.reshape(g, x.shape), *([None] * len(dyn)))
  ct = lax.reshape(g, tuple(np.take(x.shape, dimensions)))
  return (lax.transpose(ct, tuple(np.argsort(dimensions))), *([None] * len(dyn)))


# Squeeze moves no data either.  (expand_dims is not a primitive: it lowers to
# broadcast_in_dim.)
defvjp("squeeze", lambda g, ans, x, *, dimensions: (lax.reshape(g, x.shape),))

# z = transpose(x, perm):  dx = transpose(g, perm⁻¹)
defvjp("transpose", lambda g, ans, x, *, permutation: (
    lax.transpose(g, tuple(np.argsort(permutation))),))

# z = rev(x, dims):  dx = rev(g, dims)
defvjp("rev", lambda g, ans, x, *, dimensions: (lax.rev(g, dimensions),))


# z = concatenate(x₁, …, xₙ) along d:  dxᵢ = the slice of g that xᵢ filled.
@defvjp("concatenate")
def _concatenate_vjp(g, ans, *xs, dimension):
  out, start = [], 0
  for x in xs:
    size = np.shape(x)[dimension]
    out.append(lax.slice_in_dim(g, start, start + size, axis=dimension))
    start += size
  return tuple(out)


# (z₁, …, zₙ) = split(x) along axis:  dx = concatenate(g₁, …, gₙ)
@defvjp("split")
def _split_vjp(g, ans, x, *, sizes, axis):
  g = [zeros_like(z) if ct is None else ct for ct, z in zip(g, ans)]  # None: no blame
  return (lax.concatenate(g, axis),)


# z = x[start:limit:stride]:  dx = g placed back with zeros around and between.
@defvjp("slice")
def _slice_vjp(g, ans, x, *, start_indices, limit_indices, strides):
  strides = strides or (1,) * x.ndim
  config = []
  for n, start, stride, out in zip(x.shape, start_indices, strides, g.shape):
    last = start + (out - 1) * stride if out > 0 else start - 1
    config.append((start, n - last - 1, stride - 1))
  zero = lax.full((), 0, g.dtype)
  if any(out == 0 for out in g.shape):
    return (lax.full(x.shape, 0, x.dtype),)
  return (lax.pad(g, zero, config),)


# z = x[i:i+size] (dynamic start):  dx = zeros with g written at the same start.
# dynamic_update_slice clamps the start exactly as dynamic_slice did.
@defvjp("dynamic_slice")
def _dynamic_slice_vjp(g, ans, x, *starts, slice_sizes):
  zero = lax.full(x.shape, 0, x.dtype)
  return (lax.dynamic_update_slice(zero, g, starts), *([None] * len(starts)))


# z = x with x[i:i+n] = u:  dx = g with that window zeroed;  du = g[i:i+n].
@defvjp("dynamic_update_slice")
def _dynamic_update_slice_vjp(g, ans, x, update, *starts):
  dx = lax.dynamic_update_slice(g, lax.full(update.shape, 0, g.dtype), starts)
  du = lax.dynamic_slice(g, starts, update.shape)
  return (dx, lax.convert_element_type(du, update.dtype), *([None] * len(starts)))


# z = pad(x, v, config):  dx = the un-padded part of g (negative padding crops, so
# negating the edges undoes them; the stride undoes interior padding);
# dv = Σg − Σdx, the blame on every padded position.
@defvjp("pad")
def _pad_vjp(g, ans, x, padding_value, *, padding_config):
  lo, hi, interior = zip(*padding_config)
  zero = lax.full((), 0, g.dtype)
  unpadded = lax.pad(g, zero, [(-l, -h, 0) for l, h in zip(lo, hi)])
  dx = lax.slice(unpadded, (0,) * g.ndim, unpadded.shape, [i + 1 for i in interior])
  all_axes = tuple(range(g.ndim))
  dv = lax.sub(lax.reduce_sum(g, all_axes), lax.reduce_sum(dx, all_axes))
  return dx, lax.convert_element_type(dv, lax.dtype(padding_value))


# z = tile(x, reps):  dx = g summed over the copies.
@defvjp("tile")
def _tile_vjp(g, ans, x, *, reps):
  shape = []
  for r, n in zip(reps, x.shape):
    shape += [r, n]
  ct = lax.reshape(g, tuple(shape))
  return (lax.reduce_sum(ct, tuple(range(0, 2 * x.ndim, 2))),)
