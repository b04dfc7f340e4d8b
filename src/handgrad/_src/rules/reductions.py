"""Reductions and cumulative reductions (sum, product, max, min, log-sum-exp), the
logical reductions, and the variadic ``reduce`` of ``lax.reduce``."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from handgrad._src import jaxpr as jaxpr_lib
from handgrad._src.registry import defvjp
from handgrad._src.rules import _sharding
from handgrad._src.rules._common import zeros_where_missing
from handgrad._src.rules.arithmetic import _minmax_vjp


def _keep_dims_shape(shape, axes):
  return tuple(1 if i in axes else d for i, d in enumerate(shape))


def _broadcast_back(ct, shape, axes, like=None):
  """Broadcasts a reduced cotangent back along the reduced ``axes`` to ``shape``, with
  the sharding of the operand ``like`` (as JAX's transpose of a reduction does)."""
  kept = tuple(i for i in range(len(shape)) if i not in axes)
  sharding = None if like is None else _sharding.of(like)
  return lax.broadcast_in_dim(ct, tuple(shape), kept, out_sharding=sharding)


# z = Σ_axes x:  dx = g broadcast back along the summed axes.  ``out_sharding`` is the
# output's; the cotangent takes the operand's.
@defvjp("reduce_sum")
def _reduce_sum_vjp(g, ans, x, *, axes, out_sharding=None):
  return (_broadcast_back(g, x.shape, axes, x),)


# z = max_axes x:  dx = g at the positions that attain the max, split evenly among
# ties (JAX's convention for reduce_max and reduce_min).
def _reduce_chooser_vjp(g, ans, x, *, axes, out_sharding=None):
  location = lax.convert_element_type(
      lax.eq(x, lax.reshape(ans, _keep_dims_shape(x.shape, axes))), g.dtype)
  counts = lax.reduce_sum(location, axes)
  share = lax.div(g, counts)
  return (lax.mul(_broadcast_back(share, x.shape, axes, x), location),)


defvjp("reduce_max", _reduce_chooser_vjp)
defvjp("reduce_min", _reduce_chooser_vjp)


# z = Π_axes x:  dx = g·Π_{j≠i} x_j, computed as a product of exclusive prefix and
# suffix products so zeros in x are handled exactly (no division by x).
@defvjp("reduce_prod")
def _reduce_prod_vjp(g, ans, x, *, axes, out_sharding=None):
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


# Logical reductions of booleans carry no gradient.
for _name in ("reduce_and", "reduce_or", "reduce_xor"):
  defvjp(_name, lambda g, ans, x, **params: (None,))


# --- variadic reduce ---------------------------------------------------------------
# (z₁, …, zₙ) = reduce((x₁, …, xₙ), (v₁, …, vₙ), body, dims): ``lax.reduce`` of a tuple,
# or of one operand whose initial value is not the identity of its monoid (JAX binds
# reduce_sum/reduce_max/… otherwise).  Bodies that combine each pair on its own,
# zᵢ = opᵢ(aᵢ, bᵢ) with opᵢ ∈ {add, max, min}, have the rules right below; any other
# body (an argmax over (value, index) pairs, a product) goes through the generic tree
# further down.
#
# JAX differentiates this primitive as a tree: halve the reduced axis, combine the
# halves with the body (padding an odd half with the initial value), repeat.  For add
# every element gets g.  For max/min the tree is replayed here so that ties split as
# in JAX (½ at every binary max that meets one, the padding included).  The initial
# value is combined once more at the end, as XLA computes: zᵢ = opᵢ(vᵢ, tree(xᵢ))
# (idempotent for max/min, so the count of combines does not matter); for a constant
# identity (−inf for max, +inf for min) that combine is skipped, which keeps JAX's
# answer exactly.  jax.grad refuses an initial value that is differentiated; here
#   d vᵢ = Σ gᵢ (add),  d vᵢ = its share of the final combine and of the padding (max/min).

def _flatten_reduced(x, dims):
  """x with the reduced dims moved to the front and flattened into one: [n, rest…]."""
  rest = [d for d in range(x.ndim) if d not in dims]
  perm = list(dims) + rest
  n = int(np.prod([x.shape[d] for d in dims], dtype=np.int64))
  return lax.reshape(lax.transpose(x, perm), (n,) + tuple(x.shape[d] for d in rest)), perm


def _unflatten_reduced(ct, shape, perm):
  ct = lax.reshape(ct, tuple(shape[d] for d in perm))
  return lax.transpose(ct, tuple(np.argsort(perm)))


def _rows_of(v, like):
  """The scalar v as one row shaped (and sharded) like a row of ``like``."""
  return lax.broadcast_in_dim(v, (1,) + like.shape[1:], (), out_sharding=_sharding.of(like))


def _tree_vjp(g, x, v, op):
  """Cotangents (dx, dv) of JAX's halving tree of ``op`` over axis 0 of ``x``."""
  n = x.shape[0]
  if n == 0:  # the tree's value is the initial value itself
    return lax.full(x.shape, 0, g.dtype), lax.reduce_sum(g, tuple(range(g.ndim)))
  if n == 1:
    return lax.reshape(g, (1,) + g.shape), lax.full((), 0, g.dtype)
  n1 = (n + 1) // 2
  a, b = lax.slice_in_dim(x, 0, n1), lax.slice_in_dim(x, n1, n)
  padded = n - n1 != n1
  if padded:
    b = lax.concatenate([b, _rows_of(v, b)], 0)
  combined = op(a, b)
  ct, dv = _tree_vjp(g, combined, v, op)
  da, db = _minmax_vjp(ct, combined, a, b)
  if padded:
    dv = lax.add(dv, lax.reduce_sum(lax.slice_in_dim(db, n - n1, n1), tuple(range(db.ndim))))
    db = lax.slice_in_dim(db, 0, n - n1)
  return lax.concatenate([da, db], 0), dv


def _tree(x, v, op):
  """The value of JAX's halving tree (the primal of :func:`_tree_vjp`)."""
  while x.shape[0] > 1:
    n = x.shape[0]
    n1 = (n + 1) // 2
    a, b = lax.slice_in_dim(x, 0, n1), lax.slice_in_dim(x, n1, n)
    if n - n1 != n1:
      b = lax.concatenate([b, _rows_of(v, b)], 0)
    x = op(a, b)
  return lax.broadcast_in_dim(v, x.shape[1:], ()) if x.shape[0] == 0 else lax.squeeze(x, (0,))


def _is_identity(v, name):
  """Whether ``v`` is a constant (a literal of the jaxpr) equal to max's or min's
  identity; a traced value is not known to be one."""
  if not isinstance(v, (np.ndarray, np.generic, float)):
    return False
  return bool(np.asarray(v) == (-np.inf if name == "max" else np.inf))


def _pairwise_reduce_vjp(g, xs, inits, ops, dims):
  dxs, dvs = [], []
  for x, v, ct, name in zip(xs, inits, g, ops):
    if not jnp.issubdtype(lax.dtype(x), jnp.inexact):
      dxs.append(None)
      dvs.append(None)
      continue
    v = lax.convert_element_type(v, lax.dtype(x))
    if name == "add":
      dxs.append(_broadcast_back(ct, np.shape(x), dims, x))
      dvs.append(lax.reduce_sum(ct, tuple(range(ct.ndim))))
      continue
    op = lax.max if name == "max" else lax.min
    flat, perm = _flatten_reduced(x, dims)
    dv = lax.full((), 0, ct.dtype)
    if not _is_identity(v, name):
      t = _tree(flat, v, op)
      vb = lax.broadcast_in_dim(v, t.shape, (), out_sharding=_sharding.of(t))
      dvb, ct = _minmax_vjp(ct, op(vb, t), vb, t)
      dv = lax.reduce_sum(dvb, tuple(range(dvb.ndim)))
    dflat, dv_tree = _tree_vjp(ct, flat, v, op)
    dxs.append(_unflatten_reduced(dflat, np.shape(x), perm))
    dvs.append(lax.add(dv, dv_tree))
  return dxs, dvs


# Any other body: JAX's halving tree itself, each level's combine differentiated by
# the hand rules of the body's own equations (the engine run on the body, vectorised
# over the level's elements with jax.vmap).  The initial values enter only where they
# pad an odd half (and as the value of an empty reduction): their cotangent is the blame
# those places get, the derivative of that same tree.

def _body_fns(jaxpr, floats):
  """(combine, combine_vjp) of a reduce body, elementwise over equal-shaped arrays."""
  from handgrad._src import engine  # the engine imports the rules: import it lazily
  body, consts = jaxpr_lib.unwrap(jaxpr), list(getattr(jaxpr, "consts", ()))
  n = len(floats)

  def scalar_combine(*ab):
    return tuple(engine.forward(body, consts, list(ab), [False] * (2 * n))[0])

  def scalar_vjp(ab, cts):
    _, frame = engine.forward(body, consts, list(ab), floats + floats)
    cts_in = engine.backward(frame, [ct if f else None for ct, f in zip(cts, floats)])
    return tuple(
        (lax.full_like(x, 0) if ct is None else ct) if f else None
        for ct, x, f in zip(cts_in, ab, floats + floats))

  def vectorised(fn, arrays):
    shape = arrays[0].shape
    flat = [lax.reshape(a, (int(np.prod(shape, dtype=np.int64)),)) for a in arrays]
    outs = jax.vmap(fn)(*flat)
    return [None if o is None else lax.reshape(o, shape) for o in outs]

  combine = lambda a, b: vectorised(scalar_combine, [*a, *b])
  combine_vjp = lambda a, b, cts: vectorised(
      lambda *abc: scalar_vjp(abc[:2 * n], abc[2 * n:]),
      [*a, *b, *[c if f else lax.full_like(x, 0, jnp.float32) for c, x, f in zip(cts, a, floats)]])
  return combine, combine_vjp


def _generic_reduce_vjp(g, xs, inits, jaxpr, dims):
  floats = [jnp.issubdtype(lax.dtype(x), jnp.inexact) for x in xs]
  combine, combine_vjp = _body_fns(jaxpr, floats)
  flats = [_flatten_reduced(x, dims)[0] for x in xs]
  perm = _flatten_reduced(xs[0], dims)[1]
  dvs = [lax.full((), 0, lax.dtype(x)) if f else None for x, f in zip(xs, floats)]
  n = flats[0].shape[0]
  if n == 0:
    dvs = [lax.reduce_sum(ct, tuple(range(ct.ndim))) if f else None for ct, f in zip(g, floats)]
    return [lax.full_like(x, 0) if f else None for x, f in zip(xs, floats)], dvs
  levels = []  # (a, b, n, n1) of every halving, bottom first
  while flats[0].shape[0] > 1:
    m = flats[0].shape[0]
    m1 = (m + 1) // 2
    a = [lax.slice_in_dim(x, 0, m1) for x in flats]
    b = [lax.slice_in_dim(x, m1, m) for x in flats]
    if m - m1 != m1:
      b = [lax.concatenate([bi, _rows_of(lax.convert_element_type(v, bi.dtype), bi)], 0)
           for bi, v in zip(b, inits)]
    levels.append((a, b, m, m1))
    flats = combine(a, b)
  cts = [lax.reshape(ct, (1,) + tuple(ct.shape)) if f else None for ct, f in zip(g, floats)]
  for a, b, m, m1 in reversed(levels):
    d = combine_vjp(a, b, cts)
    da, db = d[:len(xs)], d[len(xs):]
    new = []
    for i, f in enumerate(floats):
      if not f:
        new.append(None)
        continue
      if m - m1 != m1:  # the padding row is the initial value's
        dvs[i] = lax.add(dvs[i], lax.reduce_sum(lax.slice_in_dim(db[i], m - m1, m1),
                                                tuple(range(db[i].ndim))))
        db[i] = lax.slice_in_dim(db[i], 0, m - m1)
      new.append(lax.concatenate([da[i], db[i]], 0))
    cts = new
  dxs = [_unflatten_reduced(ct, np.shape(x), perm) if f else None
         for ct, x, f in zip(cts, xs, floats)]
  return dxs, dvs


@defvjp("reduce")
def _reduce_vjp(g, ans, *args, computation, jaxpr, dimensions):
  n = len(args) // 2
  xs, inits = args[:n], args[n:]
  g = zeros_where_missing(g, ans)
  dims = tuple(sorted(dimensions))
  ops = jaxpr_lib.pairwise_ops(jaxpr)
  if ops is not None and set(ops) <= {"add", "max", "min"}:
    dxs, dvs = _pairwise_reduce_vjp(g, xs, inits, ops, dims)
  else:
    dxs, dvs = _generic_reduce_vjp(g, xs, inits, jaxpr, dims)
  dvs = [None if dv is None else lax.convert_element_type(dv, lax.dtype(v))
         for dv, v in zip(dvs, inits)]
  return (*dxs, *dvs)
