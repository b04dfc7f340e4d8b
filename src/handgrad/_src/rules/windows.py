"""Windowed reductions: average and max pooling.

``reduce_window_sum`` (average pooling is it divided by the window size),
``reduce_window_max`` / ``reduce_window_min`` (max and min pooling), the generic
``reduce_window`` with a sum, max or min body, and the two primitives that JAX's own
max-pooling gradient is made of, ``select_and_scatter_add`` and
``select_and_gather_add`` (they appear when a jaxpr of ``jax.grad`` is differentiated).

Along one axis, with n elements, base dilation a, padding (lo, hi), window size k,
window dilation d and stride s, output i reduces the elements x̃[i·s + j·d], j < k, of
the input dilated by a and padded by (lo, hi): exactly the windows of a convolution
(``rules/conv.py``) whose kernel is all ones.

Ties in max pooling (JAX's convention, ``select_and_scatter_add`` with ``ge``): the
whole cotangent of a window goes to ONE element, the first maximum in the window's
row-major order, where padding and base-dilation holes are candidates equal to −∞
(+∞ for min) whose cotangent is dropped.  That differs from ``reduce_max``, which
splits a tie evenly.
"""

from __future__ import annotations

import itertools
import math

import numpy as np
from jax import lax

from handgrad._src import jaxpr as jaxpr_util
from handgrad._src.registry import defvjp
from handgrad._src.rules.conv import _input_grad_padding


def _zeros(x):
  # full_like keeps x's sharding: a cotangent carries its primal's sharding.
  return lax.full_like(x, 0)


def _params(window_dimensions, window_strides, padding, base_dilation, window_dilation,
            **unknown):
  if unknown:
    raise NotImplementedError(f"windowed reduction: the rule does not know the param(s) "
                              f"{sorted(unknown)}")
  return (tuple(window_dimensions), tuple(window_strides), tuple(map(tuple, padding)),
          tuple(base_dilation), tuple(window_dilation))


def _no_windows(x, y) -> bool:
  return x.size == 0 or y.size == 0


# --- sum -----------------------------------------------------------------------------

def _window_sum_transpose(g, x_shape, window, strides, padding, base, wdil):
  """dx[m] = Σ over the windows i that read x[m] of g[i].

  The windows are those of a convolution with an all-ones kernel, so this is the
  input-gradient convolution of ``rules/conv.py`` with that kernel (flipping it changes
  nothing): g dilated by the stride, padded by ``_input_grad_padding``, summed over
  windows of the same size and dilation at stride a (the base dilation).
  """
  pads = [_input_grad_padding(n, a, lo, hi, k, d, s, o) for n, a, (lo, hi), k, d, s, o
          in zip(x_shape, base, padding, window, wdil, strides, g.shape)]
  zero = np.zeros((), g.dtype)
  spread = lax.pad(g, zero, [(lo, hi, s - 1) for (lo, hi), s in zip(pads, strides)])
  return lax.reduce_window(spread, zero, lax.add, window, base, [(0, 0)] * g.ndim,
                           window_dilation=wdil)


@defvjp("reduce_window_sum")
def _reduce_window_sum_vjp(g, y, x, **params):
  """y[i] = Σ_{j in window i} x̃[j]:   dx[m] = Σ_{windows i ∋ m} g[i]."""
  window, strides, padding, base, wdil = _params(**params)
  if _no_windows(x, y):
    return (_zeros(x),)
  return (_window_sum_transpose(g, x.shape, window, strides, padding, base, wdil),)


# --- max and min: the first extremum of each window takes the cotangent --------------

def _padded(x, fill, padding, base):
  """x dilated by ``base`` and padded, with ``fill`` in the holes and the padding."""
  return lax.pad(x, lax.convert_element_type(fill, x.dtype),
                 [(lo, hi, a - 1) for (lo, hi), a in zip(padding, base)])


def _unpadded(ct, padding, base):
  """The transpose of :func:`_padded` for the operand: the cotangent of each real
  element (padding and holes dropped; negative padding had cropped, so it pads back)."""
  zero = np.zeros((), ct.dtype)
  ct = lax.pad(ct, zero, [(-lo, -hi, 0) for lo, hi in padding])
  return lax.slice(ct, (0,) * ct.ndim, ct.shape, base)


def _window_offsets(window, wdil):
  """Start offset of every window position j in the padded input, row-major order."""
  return [tuple(j * d for j, d in zip(js, wdil))
          for js in itertools.product(*(range(k) for k in window))]


def _view(xp, start, strides, out_shape):
  """Element j of every window: xp[i·s + start] for each output i (a strided slice)."""
  limit = [st + (o - 1) * s + 1 for st, s, o in zip(start, strides, out_shape)]
  return lax.slice(xp, start, limit, strides)


def _unview(ct, start, strides, padded_shape):
  """Transpose of :func:`_view`: ``ct`` placed back at xp[i·s + start], zeros elsewhere."""
  zero = np.zeros((), ct.dtype)
  cfg = [(st, p - st - (o - 1) * s - 1, s - 1)
         for st, s, o, p in zip(start, strides, ct.shape, padded_shape)]
  return lax.pad(ct, zero, cfg)


def _first_hits(xp, y, strides, window, wdil, taken=None):
  """For every window position j (row-major), the outputs whose window takes its
  extremum at j first: ``(start_j, hit_j)`` with hit_j = (x̃ at j == y) and no earlier
  position hit.  ``taken`` marks outputs already claimed (the init of ``reduce_window``)."""
  hits = []
  for start in _window_offsets(window, wdil):
    hit = lax.eq(_view(xp, start, strides, y.shape), y)
    if taken is not None:
      hit = lax.bitwise_and(hit, lax.bitwise_not(taken))
      taken = lax.bitwise_or(taken, hit)
    else:
      taken = hit
    hits.append((start, hit))
  return hits


def _route_to_first_extremum(g, x, y, fill, window, strides, padding, base, wdil,
                             taken=None):
  """dx: each window's cotangent g[i] routed to the first element equal to y[i]."""
  xp = _padded(x, fill, padding, base)
  zero = _zeros(g)
  dxp = None
  for start, hit in _first_hits(xp, y, strides, window, wdil, taken):
    part = _unview(lax.select(hit, g, zero), start, strides, xp.shape)
    dxp = part if dxp is None else dxp + part
  return _unpadded(dxp, padding, base)


def _extremum_vjp(fill):
  def rule(g, y, x, **params):
    window, strides, padding, base, wdil = _params(**params)
    if _no_windows(x, y):
      return (_zeros(x),)
    return (_route_to_first_extremum(g, x, y, fill, window, strides, padding, base, wdil),)
  return rule


# y[i] = max of window i:  dx[m] = Σ_i g[i]·[m is the first maximum of window i]
# (JAX's ``select_and_scatter_add`` with ``ge``: a later tie never replaces the first).
defvjp("reduce_window_max", _extremum_vjp(-np.inf))
# y[i] = min of window i:  the same with the first minimum (``le``).
defvjp("reduce_window_min", _extremum_vjp(np.inf))


# --- generic reduce_window: a sum, max or min body -----------------------------------

_BODIES = {"add": "sum", "max": "max", "min": "min"}


@defvjp("reduce_window")
def _reduce_window_vjp(gs, ys, x, init, *, jaxpr, consts, **params):
  """``lax.reduce_window`` with an init value that is not the reduction's identity.

  Each window starts from ``init`` and combines the input elements it covers (padding
  and base-dilation holes contribute nothing, as XLA evaluates it), so

  * sum body: y[i] = init + Σ_{x[m] in window i} x[m]:
    dx = the window-sum transpose of g,  dinit = Σ_i g[i];
  * max (min) body: y[i] = max(init, elements of window i).  ``init`` comes first,
    then the window in row-major order, and the first maximum takes g[i]:
    dinit = Σ_i g[i]·[y[i] == init], dx as for ``reduce_window_max`` elsewhere.

  ``jax.grad`` cannot differentiate this primitive (its JVP does not transpose); away
  from ties the rule equals ``jax.jvp``'s derivative, at ties it follows
  ``reduce_window_max``'s convention with the init value as the first element.
  """
  window, strides, padding, base, wdil = _params(**params)
  body = jaxpr_util.primitive_names(jaxpr)
  kind = _BODIES.get(body[0]) if len(body) == 1 and not consts else None
  if kind is None or len(gs) != 1:
    raise NotImplementedError(
        f"reduce_window: only a single operand with a sum, max or min body is "
        f"differentiable by hand, got {len(gs)} operand(s) and a body of {body} with "
        f"{len(consts)} consts")
  (g,), (y,) = gs, ys
  if y.size == 0:
    return _zeros(x), _zeros(init)
  total = lambda v: lax.reduce_sum(v, tuple(range(v.ndim)))  # noqa: E731
  if kind == "sum":
    dx = _zeros(x) if x.size == 0 else _window_sum_transpose(
        g, x.shape, window, strides, padding, base, wdil)
    return dx, total(g).astype(init.dtype)
  claimed = lax.eq(y, lax.full_like(y, init))
  dinit = total(lax.select(claimed, g, _zeros(g)))
  if x.size == 0:
    return _zeros(x), dinit.astype(init.dtype)
  fill = -np.inf if kind == "max" else np.inf  # padding is never a candidate
  dx = _route_to_first_extremum(g, x, y, fill, window, strides, padding, base, wdil,
                                taken=claimed)
  return dx, dinit.astype(init.dtype)


# --- the primitives of JAX's own max-pooling gradient --------------------------------

_SELECT = {"ge": -np.inf, "le": np.inf}


def _fill_of(select_prim):
  name = getattr(select_prim, "name", str(select_prim))
  if name not in _SELECT:
    raise NotImplementedError(f"select_and_*: select_prim {name!r} (only ge and le)")
  return _SELECT[name]


@defvjp("select_and_scatter_add")
def _select_and_scatter_add_vjp(g, z, source, operand, *, select_prim, window_dimensions,
                                window_strides, padding, **unknown):
  """z = scatter-add of source[i] to the first extremum of operand's window i.

  Linear in ``source``: dsource[i] = g at that element (a gather along the same
  routes); the routes are piecewise constant in ``operand``: no gradient.
  """
  if unknown:
    raise NotImplementedError(f"select_and_scatter_add: unknown param(s) {sorted(unknown)}")
  fill = _fill_of(select_prim)
  window, strides = tuple(window_dimensions), tuple(window_strides)
  padding = tuple(map(tuple, padding))
  base = (1,) * operand.ndim
  if _no_windows(operand, source):
    return _zeros(source), None
  reduce = lax.max if fill < 0 else lax.min
  y = lax.reduce_window(operand, np.asarray(fill, operand.dtype), reduce, window, strides,
                        padding)
  return _gather_first_extremum(g, operand, y, fill, window, strides, padding, base,
                                base), None


def _gather_first_extremum(g, x, y, fill, window, strides, padding, base, wdil):
  """out[i] = g at the first extremum of window i (0 where that is padding or a hole)."""
  xp = _padded(x, fill, padding, base)
  gp = _padded(g, 0, padding, base)
  zero = lax.full_like(y, 0, g.dtype)
  out = zero
  for start, hit in _first_hits(xp, y, strides, window, wdil):
    out = out + lax.select(hit, _view(gp, start, strides, y.shape), zero)
  return out


@defvjp("select_and_gather_add")
def _select_and_gather_add_vjp(g, z, tangents, operand, *, select_prim, window_dimensions,
                               window_strides, padding, base_dilation, window_dilation,
                               **unknown):
  """z[i] = tangents at the first extremum of operand's window i (the JVP of max
  pooling).  Linear in ``tangents``: dtangents routes g[i] back to that element, the
  max-pooling backward pass; no gradient for ``operand``."""
  if unknown:
    raise NotImplementedError(f"select_and_gather_add: unknown param(s) {sorted(unknown)}")
  fill = _fill_of(select_prim)
  window, strides, padding, base, wdil = _params(
      window_dimensions, window_strides, padding, base_dilation, window_dilation)
  if _no_windows(operand, z):
    return _zeros(tangents), None
  reduce = lax.max if fill < 0 else lax.min
  y = lax.reduce_window(operand, np.asarray(fill, operand.dtype), reduce, window, strides,
                        padding, base, wdil)
  return _route_to_first_extremum(g, operand, y, fill, window, strides, padding, base,
                                  wdil), None
