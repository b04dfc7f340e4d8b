"""Reductions and cumulative reductions (sum, product, max, min, log-sum-exp)."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
from jax import lax

from handgrad._src.registry import defvjp
from handgrad._src.rules.arithmetic import _minmax_vjp


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
  if n == 0:  # an empty product is 1 whatever x is: x has no elements to blame
    return (lax.full(x.shape, 0, x.dtype),)
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


# --- cumulative reductions -------------------------------------------------------------
# cumprod, cummax, cummin and cumlogsumexp.  JAX differentiates each of them as the
# parallel prefix scan ``lax.associative_scan(combine, x)`` (combine adjacent pairs, scan
# the half-length result, fill in the even positions), whatever the forward pass lowers
# to.  The rule is the reverse pass of that same tree: recompute its levels, then send
# the cotangent back through every ``combine`` with its partial derivatives.  Walking
# the same tree keeps JAX's conventions exactly: cummax/cummin split a tie at every
# combine that meets one (max's ½ rule), and cumprod needs no division, so zeros are
# exact.

def _every(x, start, stop, stride, axis):
  return lax.slice_in_dim(x, start, stop, stride, axis)


def _place(g, n, start, stride, axis):
  """Transpose of ``x[start:n:stride]`` along ``axis``: ``g`` spread back into zeros."""
  m = g.shape[axis]
  if m == 0:
    shape = list(g.shape)
    shape[axis] = n
    return lax.full(tuple(shape), 0, g.dtype)
  config = [(0, 0, 0)] * g.ndim
  last = start + (m - 1) * stride
  config[axis] = (start, n - last - 1, stride - 1)
  return lax.pad(g, lax.full((), 0, g.dtype), config)


def _prefix_scan_vjp(g, x, combine, combine_vjp, axis):
  """Cotangent of ``x`` for ``lax.associative_scan(combine, x, axis=axis)``."""
  n = x.shape[axis]
  if n < 2:
    return g
  # Forward: r = combine(x[0::2], x[1::2]) (pairs), odd = scan(r) (the outputs at odd
  # positions), e = combine(odd[:len(x[2::2])], x[2::2]) (the even ones after the first).
  a, b = _every(x, 0, n - 1, 2, axis), _every(x, 1, n, 2, axis)
  r = combine(a, b)
  odd = lax.associative_scan(combine, r, axis=axis)
  q = _every(x, 2, n, 2, axis)
  p = _every(odd, 0, q.shape[axis], 1, axis)
  e = combine(p, q)
  # Backward, level by level.
  g_even, g_odd = _every(g, 0, n, 2, axis), _every(g, 1, n, 2, axis)
  g_p, g_q = combine_vjp(_every(g_even, 1, g_even.shape[axis], 1, axis), e, p, q)
  g_odd = lax.add(g_odd, _place(g_p, g_odd.shape[axis], 0, 1, axis))
  g_a, g_b = combine_vjp(_prefix_scan_vjp(g_odd, r, combine, combine_vjp, axis), r, a, b)
  return lax.add(lax.add(_place(_every(g_even, 0, 1, 1, axis), n, 0, 1, axis),
                         _place(g_q, n, 2, 2, axis)),
                 lax.add(_place(g_a, n, 0, 2, axis), _place(g_b, n, 1, 2, axis)))


def _cumulative_vjp(combine, combine_vjp):
  def rule(g, ans, x, *, axis, reverse):
    if reverse:  # a reversed scan is the scan of the reversed input, reversed
      return (lax.rev(_prefix_scan_vjp(lax.rev(g, (axis,)), lax.rev(x, (axis,)), combine,
                                       combine_vjp, axis), (axis,)),)
    return (_prefix_scan_vjp(g, x, combine, combine_vjp, axis),)
  return rule


# combine(a, b) = a·b:  da = g·b,  db = a·g
defvjp("cumprod", _cumulative_vjp(lax.mul, lambda g, z, a, b: (lax.mul(g, b), lax.mul(a, g))))
# combine = max / min, with the tie split of the max and min rules.
defvjp("cummax", _cumulative_vjp(lax.max, lambda g, z, a, b: _minmax_vjp(g, z, a, b)))
defvjp("cummin", _cumulative_vjp(lax.min, lambda g, z, a, b: _minmax_vjp(g, z, a, b)))


# combine(a, b) = log(eᵃ + eᵇ):  da = g·e^(a − z),  db = g·e^(b − z), with +inf replaced
# by 0 in the exponent as JAX's logaddexp rule does (so +inf inputs give no NaN).
def _replace_inf(x):
  return lax.select(lax.eq(x, lax.full_like(x, jnp.inf)), lax.full_like(x, 0), x)


def _logaddexp_vjp(g, z, a, b):
  zr = _replace_inf(z)
  return (lax.mul(g, lax.exp(lax.sub(_replace_inf(a), zr))),
          lax.mul(g, lax.exp(lax.sub(_replace_inf(b), zr))))


defvjp("cumlogsumexp", _cumulative_vjp(jnp.logaddexp, _logaddexp_vjp))
