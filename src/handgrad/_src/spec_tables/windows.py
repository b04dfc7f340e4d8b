"""Specs of the windowed reductions (``rules/windows.py``): sum, max and min pooling with
strides, SAME/VALID/explicit/negative padding, base and window dilation, windows that
see only padding, empty operands; ties, −∞ and padding for max pooling (one element of
a tied window takes the whole cotangent, as ``jax.grad`` gives it); the generic
``reduce_window`` with sum/max/min bodies; JAX's own max-pooling gradient primitives."""

from __future__ import annotations

import functools
import itertools

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from handgrad._src.specs import RuleSpec, choice, distinct, normal

INF = np.inf


def _sum(window, strides, padding, base=None, wdil=None):
  return lambda x: lax.reduce_window(x, 0.0, lax.add, window, strides, padding, base, wdil)


def _max(window, strides, padding, base=None, wdil=None):
  return lambda x: lax.reduce_window(x, -jnp.inf, lax.max, window, strides, padding, base,
                                     wdil)


def _min(window, strides, padding, base=None, wdil=None):
  return lambda x: lax.reduce_window(x, jnp.inf, lax.min, window, strides, padding, base,
                                     wdil)


def _by_views(reduce, fill, window, strides, padding, base=None, wdil=None):
  """The same windowed reduction written as a reduction over stacked strided slices of
  the padded input: a reference ``jax.vjp`` differentiates where it cannot differentiate
  the primitive (window dilation of max pooling, generic ``reduce_window``)."""
  base = base or (1,) * len(window)
  wdil = wdil or (1,) * len(window)

  def fun(x, init=None):
    xp = lax.pad(x, jnp.asarray(fill, x.dtype),
                 [(lo, hi, a - 1) for (lo, hi), a in zip(padding, base)])
    out = [(p - ((k - 1) * d + 1)) // s + 1
           for p, k, d, s in zip(xp.shape, window, wdil, strides)]
    views = []
    for js in itertools.product(*(range(k) for k in window)):
      start = [j * d for j, d in zip(js, wdil)]
      limit = [st + (o - 1) * s + 1 for st, s, o in zip(start, strides, out)]
      views.append(lax.slice(xp, start, limit, strides))
    if init is not None:
      views.insert(0, jnp.broadcast_to(init, views[0].shape))
    return reduce(jnp.stack(views), axis=0)
  return fun


def _generic(reduce, window, strides, padding, base=None, wdil=None):
  return lambda x, c: lax.reduce_window(x, c, reduce, window, strides, padding, base, wdil)


def _scatter_of_max_pool(window, strides, padding):
  # jax.vjp of max pooling: its jaxpr holds select_and_scatter_add(source, operand).
  return lambda s, x: jax.vjp(_max(window, strides, padding), x)[1](s)[0]


def _gather_of_max_pool(window, strides, padding, base=None):
  # jax.jvp of max pooling: its jaxpr holds select_and_gather_add(tangents, operand).
  return lambda t, x: jax.jvp(_max(window, strides, padding, base), (x,), (t,))[1]


def table() -> list[RuleSpec]:
  S = RuleSpec
  ties, with_inf = choice((0.0, 1.0)), choice((-INF, -INF, 0.5, 1.0))
  return [
      # --- reduce_window_sum (average pooling) -------------------------------------
      S("reduce_window_sum", _sum((2, 2), (1, 1), "VALID"), (((3, 4),), ((2, 2),))),
      S("reduce_window_sum", _sum((1, 3, 3, 1), (1, 2, 2, 1), "SAME"), (((2, 5, 6, 3),),),
        label="NHWC SAME strided"),
      S("reduce_window_sum", _sum((2, 3), (2, 1), ((-1, 2), (1, 0))), (((5, 4),),),
        label="negative padding"),
      S("reduce_window_sum", _sum((2, 2), (1, 2), ((1, 1), (0, 2)), (2, 1), (1, 2)),
        (((3, 4),),), label="base and window dilation"),
      S("reduce_window_sum", _sum((2,), (1,), ((3, 0),)), (((3,),),),
        label="windows inside the padding", note="outputs of padding alone: no gradient"),
      S("reduce_window_sum", _sum((2,), (3,), ((0, 0),)), (((8,),), ((0,),)),
        label="stride > window, empty"),
      # --- reduce_window_max (max pooling) -----------------------------------------
      S("reduce_window_max", _max((2, 2), (1, 1), "VALID"), (((3, 4),), ((2, 2),)),
        distinct()),
      S("reduce_window_max", _max((1, 2, 2, 1), (1, 2, 2, 1), "SAME"), (((2, 5, 5, 3),),),
        distinct(), label="NHWC SAME strided"),
      S("reduce_window_max", _max((3, 2), (2, 1), ((1, 2), (-1, 1))), (((5, 4),),),
        distinct(), label="explicit and negative padding",
        reference=_by_views(jnp.max, -INF, (3, 2), (2, 1), ((1, 2), (-1, 1))),
        note="jax.grad fails on negative padding (a negative slice start on CPU); the "
             "reference is the max over stacked strided views, equal away from ties"),
      S("reduce_window_max", _max((2, 2), (1, 1), ((1, 0), (0, 1)), (2, 2)), (((3, 3),),),
        distinct(), label="base dilation"),
      S("reduce_window_max", _max((2, 2), (1, 1), ((1, 0), (0, 1)), (2, 3)), (((3, 3),),),
        distinct(), fd=False, label="base dilation, windows of holes only",
        note="windows of holes and padding alone are −∞: no finite differences"),
      S("reduce_window_max", _max((2, 2), (1, 2), ((0, 1), (1, 1)), None, (2, 1)),
        (((4, 5),),), distinct(), label="window dilation",
        reference=_by_views(jnp.max, -INF, (2, 2), (1, 2), ((0, 1), (1, 1)), None, (2, 1)),
        note="jax.grad refuses window dilation (select_and_gather_add's transpose); the "
             "reference is the max over stacked strided views, equal away from ties"),
      S("reduce_window_max", _max((2, 2), (1, 1), "VALID"), (((3, 4),), ((4, 4),)), ties,
        fd=False, label="ties", note="a tied window's whole cotangent goes to its first "
        "maximum in row-major order (reduce_max would split it)"),
      S("reduce_window_max", _max((3, 1), (2, 1), ((1, 2), (0, 0))), (((4, 3),),), ties,
        fd=False, label="ties, overlapping and padded"),
      S("reduce_window_max", _max((2, 2), (1, 1), ((1, 1), (1, 0))), (((3, 3),), ((2, 4),)),
        with_inf, fd=False, label="-inf and padding",
        note="padding is a −∞ candidate: an all −∞ window that starts in the padding "
             "drops its cotangent"),
      S("reduce_window_max", _max((2,), (1,), ((3, 1),)), (((3,),),), distinct(), fd=False,
        label="windows inside the padding",
        note="windows of padding alone are −∞ and drop their cotangent; no finite "
             "differences through −∞"),
      S("reduce_window_max", _max((2, 1), (1, 1), "VALID"), (((0, 3),), ((1, 0),)),
        label="empty"),
      # --- reduce_window_min -------------------------------------------------------
      S("reduce_window_min", _min((2, 2), (2, 1), ((0, 1), (1, 0))), (((3, 4),), ((2, 2),)),
        distinct()),
      S("reduce_window_min", _min((2, 2), (1, 1), "VALID"), (((3, 4),),), ties, fd=False,
        label="ties"),
      S("reduce_window_min", _min((2,), (1,), ((1, 1),), (2,)), (((3,),),),
        choice((INF, 1.0)), fd=False, label="+inf, base dilation"),
      # --- generic reduce_window ---------------------------------------------------
      S("reduce_window", _generic(lax.add, (2, 2), (1, 2), ((1, 0), (0, 1)), (1, 2)),
        (((3, 4), ()), ((2, 2), ())), label="sum body, init and base dilation",
        fd=False, reference=_by_views(jnp.sum, 0.0, (2, 2), (1, 2), ((1, 0), (0, 1)),
                                      (1, 2)),
        note="jax.grad cannot differentiate the generic reduce_window: the reference "
             "sums the init and the stacked views (padding adds nothing); no finite "
             "differences (reduce_window does not batch a batched init)"),
      S("reduce_window", _generic(lax.max, (2, 2), (1, 1), ((1, 1), (0, 1))),
        (((3, 4), ()), ((2, 3), ())), distinct(-2.0, 2.0), label="max body, init",
        fd=False, reference=_by_views(jnp.max, -INF, (2, 2), (1, 1), ((1, 1), (0, 1))),
        note="the reference is a max over the init and the stacked views; no ties"),
      S("reduce_window", _generic(lax.min, (3,), (2,), ((0, 2),)), (((6,), ()),),
        distinct(-2.0, 2.0), label="min body, init",
        fd=False, reference=_by_views(jnp.min, INF, (3,), (2,), ((0, 2),)),
        note="the reference is a min over the init and the stacked views; no ties"),
      # --- JAX's max-pooling gradient primitives -----------------------------------
      S("select_and_scatter_add", _scatter_of_max_pool((2, 2), (1, 1), ((1, 0), (0, 1))),
        (((3, 4), (3, 4)),), (normal(), distinct()),
        note="from a jaxpr of jax.vjp of max pooling; the operand gets no gradient"),
      S("select_and_scatter_add", _scatter_of_max_pool((2, 2), (2, 2), "VALID"),
        (((2, 2), (4, 4)),), (normal(), ties), fd=False, label="ties"),
      S("select_and_gather_add", _gather_of_max_pool((2, 2), (1, 2), ((1, 0), (0, 1)),
                                                     (1, 2)),
        (((3, 3), (3, 3)),), (normal(), distinct()),
        note="from a jaxpr of jax.jvp of max pooling"),
  ]
