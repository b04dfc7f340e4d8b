"""Helpers shared by every rule family."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
from jax import lax


def sum_to(ct, x):
  """Sums the cotangent ``ct`` down to the shape of ``x`` and casts it to ``x``'s dtype.

  Binary primitives in a jaxpr broadcast implicitly: a scalar against an array
  (``mul f32[] f32[3,4]``) and size-1 dimensions against full ones
  (``add f32[5,8] f32[1,8]``).  The operand's cotangent is the output cotangent summed
  over every dimension the operand was broadcast along.  A complex cotangent of a real
  operand keeps its real part: the transpose of the embedding ``x ↦ x + 0i``.
  """
  shape = tuple(np.shape(x))
  if tuple(ct.shape) != shape:
    lead = ct.ndim - len(shape)
    axes = tuple(range(lead)) + tuple(
        lead + i for i, d in enumerate(shape) if d == 1 and ct.shape[lead + i] != 1)
    if axes:
      ct = lax.reduce_sum(ct, axes)
    ct = lax.reshape(ct, shape)
  dtype = getattr(x, "dtype", None)
  if dtype is not None and ct.dtype != dtype:
    if is_complex(ct) and not is_complex(x):
      ct = lax.real(ct)
    ct = lax.convert_element_type(ct, dtype)
  return ct


def broadcast_to(x, shape, out_sharding=None):
  """``x`` broadcast to ``shape`` as a binary primitive broadcasts its operands: a
  scalar everywhere, size-1 dimensions along full ones (same rank).  Under Explicit
  mesh axes ``out_sharding`` (the output's, ``_sharding.of(g)``) places the result
  where the values it is combined with live (``select`` needs equal shardings)."""
  shape, rank = tuple(shape), np.ndim(x)
  if tuple(np.shape(x)) == shape:
    return x
  return lax.broadcast_in_dim(x, shape, tuple(range(len(shape) - rank, len(shape))),
                              out_sharding=out_sharding)


def zeros_like(x):
  """Zeros of ``x``'s shape and dtype: the one zeros helper of the rules."""
  return lax.full_like(x, 0)  # keeps x's sharding


def like(value, x):
  """A scalar constant with ``x``'s dtype."""
  return np.array(value, dtype=lax.dtype(x))


def is_complex(x) -> bool:
  return jnp.issubdtype(lax.dtype(x), jnp.complexfloating)


def replace_zero(x):
  """``x`` with its zeros replaced by ones (a divisor where JAX defines 0/0 as 0)."""
  return lax.select(lax.eq(x, lax.full_like(x, 0)), lax.full_like(x, 1), x)


def zeros_where_missing(cts, outs) -> list:
  """A multi-output rule's cotangents with zeros where no blame arrived (``None``).

  The engine passes ``None`` for an output that received no blame; a rule whose math
  needs every output's cotangent as an array uses this.
  """
  return [zeros_like(o) if ct is None else ct for ct, o in zip(cts, outs)]
