"""Specs of the indexing, structural and reduction rules beyond the base table:
the scatter family (sub, mul, min, max), top_k, stack/unstack, device_put, variadic
reduce, logical reductions, every gather/scatter mode and out-of-range dynamic starts."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from handgrad._src.specs import (UNARY, VECTORS, RuleSpec, choice, distinct, integers,
                                 normal, permutation)


def _gate(reduce):
  """x·[reduce(x > 0)]: the logical reduction's output carries no blame."""
  return lambda x: lax.mul(x[0], lax.convert_element_type(
      reduce(lax.gt(x, lax.full_like(x, 0)), (0,)), x.dtype))


def _segments(op):
  return lambda x, ids: op(x, ids, 3)


def _pair_reduce(x, y):
  # lax.reduce of a tuple: a sum and a max, each with its own accumulator.
  return lax.reduce((x, y), (np.array(0, x.dtype), np.array(-np.inf, y.dtype)),
                    lambda a, b: (lax.add(a[0], b[0]), lax.max(a[1], b[1])), (0,))


def _times_constants(x, i):
  # x.at[i].multiply(c) with constant factors c: only the operand is differentiated.
  c = np.linspace(-2, 2, i.size, dtype=x.dtype).reshape(i.shape + (1,) * (x.ndim - 1))
  return x.at[i].multiply(c)


def table() -> list[RuleSpec]:
  S = RuleSpec
  return [
      # --- dynamic slicing: starts out of range on either side -------------------------
      S("dynamic_slice", lambda x: lax.dynamic_index_in_dim(x, -8, 0), (((5, 5),), ((2, 3),)),
        label="start -8", note="the wrapper makes −8 into −3, the primitive clamps it to 0"),
      S("dynamic_slice", lambda x: lax.dynamic_slice_in_dim(x, 7, 2, 1), (((3, 4),),),
        label="start past the end"),
      S("dynamic_update_slice",
        lambda x, u: lax.dynamic_update_index_in_dim(x, u, -8, 0), (((5, 5), (5,)),),
        label="start -8"),
      # --- pad ------------------------------------------------------------------------
      S("pad", lambda x, v: lax.pad(x, v, ()), (((), ()),), label="rank 0",
        note="an empty padding config: z = x, dv = 0"),
      S("pad", lambda x, v: lax.pad(x, v, ((-2, -1, 2),)), (((4,), ()),),
        label="negative edges over interior padding"),
      # --- stack / unstack --------------------------------------------------------------
      S("stack", lambda x, y: jnp.stack([x, y]), (((), ()), ((2, 3), (2, 3)), ((0, 2), (0, 2)))),
      S("stack", lambda x, y, z: jnp.stack([x, y, z], axis=-1), (((2, 1),) * 3, ((3,),) * 3),
        label="last axis"),
      S("unstack", lambda x: jnp.unstack(x, axis=0), (((3,),), ((2, 3),), ((1, 1, 2),))),
      S("unstack", lambda x: jnp.unstack(x, axis=1)[0], (((2, 3),), ((3, 1),)),
        label="one output used"),
      # --- device_put -----------------------------------------------------------------
      S("device_put", lambda x: jax.device_put(x, jax.devices()[0]), UNARY),
      S("device_put", lambda x, i: jax.device_put((lax.sin(x), i)), (((2, 3), (2,)),),
        (normal(), integers(0, 5)), label="with an int32 operand"),
      # --- gather modes ---------------------------------------------------------------
      S("gather", lambda x, i: x.at[i].get(mode="promise_in_bounds"), (((5,), (4,)),),
        (normal(), integers(0, 5)), label="promise_in_bounds"),
      S("gather", lambda x, i: x.at[i].get(mode="fill", fill_value=7.0), (((4, 2), (5,)),),
        (normal(), integers(-6, 6)), label="fill value 7, rows",
        note="out-of-bounds rows read the fill value and pass no cotangent"),
      S("gather", lambda x, i: jnp.take(x, i, axis=1, mode="clip"), (((2, 4), (3,)),),
        (normal(), integers(-3, 7)), label="clip, second axis"),
      # --- scatter-add / scatter-sub / scatter modes -----------------------------------
      S("scatter-add", lambda x, i, u: x.at[i].add(u, mode="clip"), (((5,), (6,), (6,)),),
        (normal(), integers(-2, 8), normal()), label="clip"),
      S("scatter-add", lambda x, i, u: x.at[i].add(u, mode="promise_in_bounds"),
        (((5,), (6,), (6,)),), (normal(), integers(0, 5), normal()), label="promise_in_bounds"),
      S("scatter-sub", lambda x, i, u: x.at[i].subtract(u),
        (((5,), (4,), (4,)), ((4, 3), (3,), (3, 3))), (normal(), integers(0, 3), normal()),
        note="repeated indices accumulate"),
      S("scatter-sub", lambda x, i, u: x.at[i].subtract(u, mode="drop"), (((5,), (6,), (6,)),),
        (normal(), integers(0, 8), normal()), label="out of bounds, drop"),
      S("scatter", lambda x, i, u: x.at[i].set(u, mode="clip"), (((5,), (6,), (6,)),),
        (normal(), integers(-2, 8), normal()), fd=False, label="clip",
        note="repeated clamped indices: the winner is XLA's choice, no FD across it"),
      S("scatter", lambda x, i, u: x.at[i].set(u, mode="promise_in_bounds"),
        (((5,), (4,), (4,)),), (normal(), integers(0, 5), normal()), fd=False,
        label="promise_in_bounds", note="repeated indices: the winner is XLA's choice"),
      # --- scatter-mul -----------------------------------------------------------------
      S("scatter-mul", lambda x, i, u: x.at[i].multiply(u, unique_indices=True),
        (((5,), (5,), (5,)), ((4, 3), (4,), (4, 3))), (normal(), permutation(), normal()),
        note="unique indices: each place gets one factor"),
      S("scatter-mul", lambda x, i, u: x.at[i].multiply(u, unique_indices=True),
        (((6,), (6,), (6,)),), (choice((0.0, -1.5, 2.0)), permutation(), choice((0.0, 0.5))),
        label="zeros", note="exact with zeros in x and u: nothing is divided"),
      S("scatter-mul", lambda x, i, u: x.at[i].multiply(u, mode="drop", unique_indices=True),
        (((5,), (5,), (5,)),), (normal(), lambda r, s, d: (np.arange(5) * 2).astype(np.int32),
                                normal()), label="out of bounds, drop"),
      S("scatter-mul", _times_constants,
        (((5,), (6,)), ((3, 2), (4,))), (normal(), integers(0, 3)),
        label="repeated indices, operand",
        note="jax.vjp refuses the updates' cotangent with repeated indices; tests/_src/rules/"
             "test_indexing.py checks it (segment_prod) against finite differences"),
      # --- scatter-max / scatter-min ----------------------------------------------------
      S("scatter-max", lambda x, i, u: x.at[i].max(u), (((5,), (4,), (4,)), ((4, 3), (3,), (3, 3))),
        (distinct(), integers(0, 3), distinct()), note="distinct values: one winner per place"),
      S("scatter-min", lambda x, i, u: x.at[i].min(u), (((5,), (4,), (4,)), ((4, 3), (3,), (3, 3))),
        (distinct(), integers(0, 3), distinct())),
      S("scatter-max", _segments(jax.ops.segment_max), (((6,), (6,)), ((5, 2), (5,))),
        (distinct(), integers(0, 3)), fd=False, label="segment_max",
        note="an empty segment is -inf (no FD through it)"),
      S("scatter-min", _segments(jax.ops.segment_min), (((6,), (6,)), ((5, 2), (5,))),
        (distinct(), integers(0, 3)), fd=False, label="segment_min"),
      S("scatter-max", lambda x, i, u: x.at[i].max(u), (((4,), (6,), (6,)),),
        (choice((0.0, 1.0)), integers(0, 3), choice((0.0, 1.0))), fd=False, label="ties",
        note="ties among the updates and with the old value share the cotangent evenly"),
      S("scatter-min", lambda x, i, u: x.at[i].min(u, mode="clip"), (((4,), (6,), (6,)),),
        (choice((0.0, 1.0)), integers(0, 4), choice((0.0, 1.0))), fd=False,
        label="ties, clip",
        note="in-bounds indices: jax < 0.12 reads out-of-bounds contenders clamped but "
             "counts them dropped (test_indexing.py checks those against finite "
             "differences)"),
      S("scatter-max", lambda x, i, u: x.at[i].max(u, mode="drop"), (((4,), (6,), (6,)),),
        (distinct(), integers(-6, 6), distinct()), label="out of bounds, drop"),
      # --- batching dimensions (vmap of indexing) ------------------------------------
      S("gather", jax.vmap(lambda x, i: x[i]), (((2, 5), (2, 3)), ((3, 4, 2), (3, 2))),
        (normal(), integers(0, 4)), label="operand_batching_dims"),
      S("scatter-add", jax.vmap(lambda x, i, u: x.at[i].add(u)), (((2, 5), (2, 3), (2, 3)),),
        (normal(), integers(0, 4), normal()), label="operand_batching_dims"),
      S("scatter", jax.vmap(lambda x, i, u: x.at[i].set(u, unique_indices=True)),
        (((2, 5), (2, 5), (2, 5)),), (normal(), permutation(), normal()),
        label="operand_batching_dims"),
      S("scatter-max", jax.vmap(lambda x, i, u: x.at[i].max(u)), (((2, 5), (2, 4), (2, 4)),),
        (distinct(), integers(0, 4), distinct()), label="operand_batching_dims"),
      S("scatter-mul", jax.vmap(lambda x, i, u: x.at[i].multiply(u, unique_indices=True)),
        (((2, 5), (2, 5), (2, 5)),), (normal(), permutation(), normal()),
        label="operand_batching_dims"),
      # --- top_k ----------------------------------------------------------------------
      S("top_k", lambda x: lax.top_k(x, 2)[0], (((5,),), ((3, 4),), ((2, 1, 3),)), distinct()),
      S("top_k", lambda x: lax.top_k(x, 3), (((6,),), ((2, 4),)), choice((0.0, 1.0, 2.0)),
        fd=False, label="ties", note="among tied values the cotangent follows the indices"),
      S("top_k", lambda x: lax.top_k(x, 1)[0], (((4, 1),),), normal(), label="k = n"),
      # --- logical reductions -----------------------------------------------------------
      S("reduce_and", _gate(lax.reduce_and), VECTORS, no_gradient=True),
      S("reduce_or", _gate(lax.reduce_or), VECTORS, no_gradient=True),
      S("reduce_xor", _gate(lax.reduce_xor), VECTORS, no_gradient=True),
      # --- variadic reduce ------------------------------------------------------------
      S("reduce", _pair_reduce, (((4, 3), (4, 3)), ((1,), (1,)), ((5,), (5,))),
        (normal(), distinct()), label="sum and max of a tuple"),
      S("reduce", _pair_reduce, (((5, 2), (5, 2)), ((3,), (3,))),
        (normal(), choice((1.0, 2.0))), fd=False, label="ties",
        note="ties split as in JAX's halving tree (½ at each max that meets one)"),
      S("reduce", lambda x, y: lax.reduce((x, y), (np.array(0, x.dtype),) * 2,
                                          lambda a, b: (lax.add(b[0], a[0]), lax.min(a[1], b[1])),
                                          (1,)),
        (((3, 2), (3, 2)), ((2, 0), (2, 0))), (normal(), distinct()),
        label="sum and min, initial values 0"),
      S("reduce", lambda x: lax.reduce(x, np.array(1, x.dtype), lambda p, q: p * q, (1,)),
        (((2, 5),), ((3, 1),), ((2, 0),)), normal(), label="product body",
        note="any body: JAX's halving tree, each combine by the body's own rules"),
      S("reduce", lambda x: lax.reduce(x, np.array(2.0, x.dtype), lax.add, (0,)),
        (((3, 2),), ((0, 2),)), normal(), label="sum, initial value 2"),
  ]
