"""Reductions and cumulative sums."""

from __future__ import annotations

import numpy as np
from jax import lax

from handgrad._src.registry import defvjp


def _keep_dims_shape(shape, axes):
  return tuple(1 if i in axes else d for i, d in enumerate(shape))


def _broadcast_back(ct, shape, axes):
  """Broadcasts a reduced cotangent back along the reduced ``axes`` to ``shape``."""
  kept = tuple(i for i in range(len(shape)) if i not in axes)
  return lax.broadcast_in_dim(ct, tuple(shape), kept)


# z = Σ_axes x:  dx = g broadcast back along the summed axes.
@defvjp("reduce_sum")
def _reduce_sum_vjp(g, ans, x, *, axes, **params):
  return (_broadcast_back(g, x.shape, axes),)


# z = max_axes x:  dx = g at the positions that attain the max, split evenly among
# ties (JAX's convention for reduce_max and reduce_min).
def _reduce_chooser_vjp(g, ans, x, *, axes, **params):
  location = lax.convert_element_type(
      lax.eq(x, lax.reshape(ans, _keep_dims_shape(x.shape, axes))), g.dtype)
  counts = lax.reduce_sum(location, axes)
  share = lax.div(g, counts)
  return (lax.mul(_broadcast_back(share, x.shape, axes), location),)


defvjp("reduce_max", _reduce_chooser_vjp)
defvjp("reduce_min", _reduce_chooser_vjp)


# z = Π_axes x:  dx = g·Π_{j≠i} x_j, computed as a product of exclusive prefix and
# suffix products so zeros in x are handled exactly (no division by x).
@defvjp("reduce_prod")
def _reduce_prod_vjp(g, ans, x, *, axes, **params):
  axes = tuple(sorted(axes))
  kept = [i for i in range(x.ndim) if i not in axes]
  perm = kept + list(axes)
  xt = lax.transpose(x, perm)
  n = int(np.prod([x.shape[a] for a in axes], dtype=np.int64))
  flat = lax.reshape(xt, tuple(x.shape[i] for i in kept) + (n,))
  last = flat.ndim - 1
  one = lax.full(flat.shape[:-1] + (1,), 1, x.dtype)
  before = lax.concatenate([one, lax.slice_in_dim(lax.cumprod(flat, last), 0, n - 1, axis=last)], last)
  after = lax.concatenate([lax.slice_in_dim(lax.cumprod(flat, last, reverse=True), 1, n, axis=last), one], last)
  others = lax.mul(before, after)
  gb = lax.broadcast_in_dim(g, others.shape, tuple(range(len(kept))))
  dx = lax.reshape(lax.mul(gb, others), xt.shape)
  return (lax.transpose(dx, tuple(np.argsort(perm))),)


# z = cumsum(x) along axis:  dx = reverse cumsum of g (the transpose of a prefix sum).
defvjp("cumsum", lambda g, ans, x, *, axis, reverse: (lax.cumsum(g, axis, not reverse),))
