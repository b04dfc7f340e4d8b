"""Shape and layout operations: broadcast, reshape, transpose, slicing, padding,
stack/unstack, device_put.

All of these are linear in their array operand, so each rule is the transpose of the
operation: broadcast ↔ sum, slice ↔ pad with zeros, concatenate ↔ split,
stack ↔ unstack.  Cotangents keep their operand's sharding.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from handgrad._src.registry import defvjp
from handgrad._src.rules import _sharding
from handgrad._src.rules._common import zeros_where_missing


# z = broadcast_in_dim(x, shape, dims):  dx = g summed over the new dimensions and
# over the dimensions where x had size 1 but z does not, then reshaped to x.
@defvjp("broadcast_in_dim")
def _broadcast_in_dim_vjp(g, ans, x, *dyn_shape, shape, broadcast_dimensions, sharding=None):
  new_dims = [d for d in range(len(shape)) if d not in broadcast_dimensions]
  expanded = [bd for i, bd in enumerate(broadcast_dimensions)
              if x.shape[i] == 1 and shape[bd] != 1]
  axes = tuple(sorted(new_dims + expanded))
  ct = lax.reduce_sum(g, axes) if axes else g
  return (lax.reshape(ct, x.shape, out_sharding=_sharding.of(x)), *([None] * len(dyn_shape)))


# z = reshape(x):  dx = reshape(g) back to x's shape.  With ``dimensions`` (Fortran
# order, ``ravel(order="F")``) reshape first transposes x by ``dimensions``, so the
# cotangent is reshaped to the transposed shape and transposed back (as in JAX).
# ``sharding`` is the output's; the cotangent takes the operand's.
@defvjp("reshape")
def _reshape_vjp(g, ans, x, *dyn, new_sizes=None, dimensions=None, sharding=None):
  if dimensions is None:
    return (lax.reshape(g, x.shape, out_sharding=_sharding.of(x)), *([None] * len(dyn)))
  ct = lax.reshape(g, tuple(np.take(x.shape, dimensions)),
                   out_sharding=_sharding.permuted(x, dimensions))
  return (lax.transpose(ct, tuple(np.argsort(dimensions))), *([None] * len(dyn)))


# Squeeze moves no data either.  (expand_dims is not a primitive: it lowers to
# broadcast_in_dim.)
defvjp("squeeze", lambda g, ans, x, *, dimensions: (
    lax.reshape(g, x.shape, out_sharding=_sharding.of(x)),))

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
  return (lax.concatenate(zeros_where_missing(g, ans), axis),)


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
# The starts in the jaxpr are the primitive's own operands: the lax wrapper already
# turned a negative start into start + n, and the primitive clamps it into
# [0, n − size].  The cotangent is written with the dynamic_update_slice *primitive*,
# which clamps its starts into the same range (the window sizes agree), exactly as
# JAX's transpose does.  The lax.dynamic_update_slice wrapper would add n to a start
# that is still negative (−8 on a dimension of 5 arrives as −3 and would become 2).
@defvjp("dynamic_slice")
def _dynamic_slice_vjp(g, ans, x, *starts, slice_sizes):
  ndim = np.ndim(x)
  if len(starts) != ndim:  # dynamic slice sizes (dynamic shapes) come after the starts
    raise NotImplementedError(
        f"dynamic_slice with {len(starts) - ndim} dynamic slice sizes is not supported")
  zero = lax.full_like(x, 0)
  dx = lax.dynamic_update_slice_p.bind(zero, lax.convert_element_type(g, zero.dtype),
                                       *starts)
  return (dx, *([None] * len(starts)))


# z = x with x[i:i+n] = u:  dx = g with that window zeroed;  du = g[i:i+n].
# Both bind the primitives, whose clamping of the starts into [0, dim − n] is the one
# the forward pass used (see dynamic_slice above).
@defvjp("dynamic_update_slice")
def _dynamic_update_slice_vjp(g, ans, x, update, *starts):
  dx = lax.dynamic_update_slice_p.bind(g, lax.full_like(update, 0, g.dtype), *starts)
  du = lax.dynamic_slice_p.bind(g, *starts, slice_sizes=tuple(np.shape(update)))
  return (dx, lax.convert_element_type(du, lax.dtype(update)), *([None] * len(starts)))


# z = pad(x, v, config):  dx = the un-padded part of g (negative padding crops, so
# negating the edges undoes them; the stride undoes interior padding);
# dv = Σg − Σdx, the blame on every padded position.  A rank-0 operand has an empty
# config: z = x and dv = 0.
@defvjp("pad")
def _pad_vjp(g, ans, x, padding_value, *, padding_config):
  lo = [p[0] for p in padding_config]
  hi = [p[1] for p in padding_config]
  interior = [p[2] for p in padding_config]
  zero = lax.full((), 0, g.dtype)
  unpadded = lax.pad(g, zero, [(-l, -h, 0) for l, h in zip(lo, hi)])
  dx = lax.slice(unpadded, (0,) * g.ndim, unpadded.shape, [i + 1 for i in interior])
  all_axes = tuple(range(g.ndim))
  dv = lax.sub(lax.reduce_sum(g, all_axes), lax.reduce_sum(dx, all_axes))
  return dx, lax.convert_element_type(dv, lax.dtype(padding_value))


# z = tile(x, reps):  dx = g summed over the copies.  The copies axis of each pair is
# unsharded and the operand's axis keeps its sharding, as in JAX's transpose.
@defvjp("tile")
def _tile_vjp(g, ans, x, *, reps):
  shape = []
  for r, n in zip(reps, np.shape(x)):
    shape += [r, n]
  sharding = _sharding.of(x)
  if sharding is not None:
    parts = tuple(sharding.spec) + (None,) * (np.ndim(x) - len(sharding.spec))
    sharding = sharding.update(spec=tuple(s for p in parts for s in (None, p)))
  ct = lax.reshape(g, tuple(shape), out_sharding=sharding)
  return (lax.reduce_sum(ct, tuple(range(0, 2 * np.ndim(x), 2))),)


# z = stack(x₁, …, xₙ) along a new axis:  dxᵢ = g[…, i, …] (the i-th slice, squeezed).
# jnp.stack binds this primitive since jax 0.10.1.
@defvjp("stack")
def _stack_vjp(g, ans, *xs, axis):
  return tuple(
      lax.convert_element_type(
          lax.squeeze(lax.slice_in_dim(g, i, i + 1, axis=axis), (axis,)), lax.dtype(x))
      for i, x in enumerate(xs))


# (z₁, …, zₙ) = unstack(x) along axis:  dx = the zᵢ's cotangents stacked back along
# axis (each gets a size-1 axis, then one concatenate).
@defvjp("unstack")
def _unstack_vjp(g, ans, x, *, axis):
  g = zeros_where_missing(g, ans)
  parts = [lax.broadcast_in_dim(ct, ct.shape[:axis] + (1,) + ct.shape[axis:],
                                tuple(d for d in range(ct.ndim + 1) if d != axis))
           for ct in g]
  if not parts:  # unstack along a zero-length axis has no outputs
    return (lax.full_like(x, 0),)
  return (lax.convert_element_type(lax.concatenate(parts, axis), lax.dtype(x)),)


# (z₁, …) = device_put(x₁, …) to ``devices`` from ``srcs``:  dxᵢ = gᵢ moved back,
# as JAX's transpose does: the cotangent goes from the destination to the source
# (``devices`` and ``srcs`` swapped), copied (a donated input cannot be reused in the
# backward pass).  A source of None leaves the cotangent where it is, except for an
# operand in host memory, whose cotangent goes back to host memory, as in JAX.
@defvjp("device_put")
def _device_put_vjp(g, ans, *xs, devices, srcs, copy_semantics):
  idx = [i for i, x in enumerate(xs) if jnp.issubdtype(lax.dtype(x), jnp.inexact)]
  out = [None] * len(xs)
  if not idx:
    return tuple(out)
  back_to, copies = [], []
  for i in idx:
    cp = copy_semantics[i]
    if cp.name == "DONATE_INPUT":
      raise NotImplementedError(
          "device_put with copy_semantics=DONATE_INPUT (donate=True) cannot be "
          "differentiated (nor by jax.grad): its input is gone in the backward pass")
    copies.append(type(cp).ALWAYS_COPY)
    src = srcs[i]
    if src is None:
      space = getattr(jax.typeof(xs[i]), "memory_space", None)
      if getattr(space, "name", None) == "Host":
        src = space
    back_to.append(src)
  g = zeros_where_missing(g, ans)
  cts = lax.device_put_p.bind(*[g[i] for i in idx], devices=tuple(back_to),
                              srcs=tuple(devices[i] for i in idx),
                              copy_semantics=tuple(copies))
  for i, ct in zip(idx, cts):
    out[i] = lax.convert_element_type(ct, lax.dtype(xs[i]))
  return tuple(out)
