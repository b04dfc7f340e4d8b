"""Contractions: dot_general (matmul, batched matmul, einsum, tensordot).

For ``z = dot_general(x, y)`` with contracting dims ``(cx, cy)`` and batch dims
``(bx, by)``, the output's axes are ``[batch…, x free…, y free…]``.  The cotangent of
each operand is again a dot_general of ``g`` with the *other* operand, contracting
over that operand's free dimensions, followed by a transpose that puts the axes back
in the operand's order.  For a plain matmul ``z = x·W`` this is the seed's
``dx = g·Wᵀ`` and ``dW = xᵀ·g``.
"""

from __future__ import annotations

import numpy as np
from jax import lax

from handgrad._src.registry import defvjp
from handgrad._src.rules import _sharding


def _ranks(dims):
  """Position of each dim in ``sorted(dims)``."""
  order = sorted(dims)
  return [order.index(d) for d in dims]


def _operand_cotangent(g, other, x, x_contract, x_batch, other_contract, other_batch,
                       g_free_of_other, precision):
  """Cotangent of operand ``x`` (the one with dims x_*) given the other operand.

  ``g_free_of_other`` are the positions in ``g`` of the other operand's free dims.
  The contraction is computed in g's dtype (the output's, i.e. the
  ``preferred_element_type``: a bfloat16 matmul accumulated in float32 has a float32
  cotangent) with the forward ``precision``, and cast to x's dtype at the end; its
  ``out_sharding`` is x's sharding with the axes in the contraction's output order,
  as in JAX's transpose rule.
  """
  x_ndim, dtype = np.ndim(x), lax.dtype(x)
  other_free = [d for d in range(other.ndim) if d not in other_contract and d not in other_batch]
  nb = len(x_batch)
  dims = ((tuple(g_free_of_other), tuple(other_free)), (tuple(range(nb)), tuple(other_batch)))
  other = lax.convert_element_type(other, g.dtype)
  # ct axes: [batch…, x free…, x contract (in the order of sorted(other_contract))…]
  x_free = [d for d in range(x_ndim) if d not in x_contract and d not in x_batch]
  rank_in_other = _ranks(other_contract)
  contract_order = [d for _, d in sorted(zip(other_contract, x_contract))]
  ct = lax.dot_general(g, other, dims, precision=precision, preferred_element_type=g.dtype,
                       out_sharding=_sharding.permuted(x, list(x_batch) + x_free + contract_order))
  pos = [0] * x_ndim
  for i, d in enumerate(x_batch):
    pos[d] = i
  for j, d in enumerate(x_free):
    pos[d] = nb + j
  for k, d in enumerate(x_contract):
    pos[d] = nb + len(x_free) + rank_in_other[k]
  return lax.convert_element_type(lax.transpose(ct, tuple(pos)), dtype)


# z = dot_general(x, y):  dx = dot_general(g, y) over y's free dims, transposed back;
# dy likewise.  ``out_sharding`` is the output's: each cotangent takes its operand's.
@defvjp("dot_general")
def _dot_general_vjp(g, ans, x, y, *, dimension_numbers, precision=None,
                     preferred_element_type=None, out_sharding=None):
  (cx, cy), (bx, by) = dimension_numbers
  cx, cy, bx, by = map(list, (cx, cy, bx, by))
  nb = len(bx)
  x_free = [d for d in range(x.ndim) if d not in cx and d not in bx]
  y_free = [d for d in range(y.ndim) if d not in cy and d not in by]
  g_x_free = list(range(nb, nb + len(x_free)))
  g_y_free = list(range(nb + len(x_free), nb + len(x_free) + len(y_free)))
  dx = _operand_cotangent(g, y, x, cx, bx, cy, by, g_y_free, precision)
  dy = _operand_cotangent(g, x, y, cy, by, cx, bx, g_x_free, precision)
  return dx, dy
