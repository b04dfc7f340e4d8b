"""Helpers shared by the linear-algebra rules (``solve``, ``decompositions``).

Every helper works on the last two axes and treats leading axes as batch dimensions,
as the linear-algebra primitives do (``f32[b, n, n]`` is ``b`` matrices).  Products use
``Precision.HIGHEST``, the precision of JAX's own linear-algebra JVP rules.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax


def T(x):
  """``xᵀ`` over the last two axes."""
  return jnp.swapaxes(x, -1, -2)


def mm(a, b):
  """Batched matrix product ``a · b`` at the highest precision."""
  return jnp.matmul(a, b, precision=lax.Precision.HIGHEST)


def tril(x, k: int = 0):
  """The lower triangle (entries with ``col − row ≤ k``), zeros elsewhere."""
  return jnp.tril(x, k)


def triu(x, k: int = 0):
  """The upper triangle (entries with ``col − row ≥ k``), zeros elsewhere."""
  return jnp.triu(x, k)


def eye(n: int, dtype, ndim: int = 2):
  """The ``n × n`` identity with ``ndim − 2`` leading axes of size 1 (broadcasts)."""
  return lax.expand_dims(jnp.eye(n, dtype=dtype), tuple(range(ndim - 2)))


def diag(x):
  """The diagonal of each matrix: ``[..., n, n] -> [..., n]``."""
  return jnp.diagonal(x, axis1=-2, axis2=-1)


def diag_matrix(v):
  """The diagonal matrix of each vector: ``[..., n] -> [..., n, n]``."""
  n = v.shape[-1]
  return v[..., :, None] * eye(n, v.dtype, v.ndim + 1)


def solve_tri(a, b, *, left_side: bool, lower: bool, transpose_a: bool = False,
              conjugate_a: bool = False, unit_diagonal: bool = False):
  """``op(a)⁻¹ b`` (``left_side``) or ``b op(a)⁻¹``: the ``triangular_solve`` primitive,
  ``op(a)`` being ``a`` transposed (``transpose_a``) and conjugated (``conjugate_a``).

  ``lax.linalg.triangular_solve`` only adds a trailing axis to a vector ``b``; with
  ``b`` of ``a``'s rank it binds the primitive with exactly these parameters.
  """
  assert np.ndim(b) == np.ndim(a), (np.shape(a), np.shape(b))
  return lax.linalg.triangular_solve(a, b, left_side=left_side, lower=lower,
                                     transpose_a=transpose_a, conjugate_a=conjugate_a,
                                     unit_diagonal=unit_diagonal)


def is_complex(x) -> bool:
  return jax.dtypes.issubdtype(jnp.result_type(x), jnp.complexfloating)


def no_other_params(name: str, params: dict) -> None:
  """Raises on a parameter the rule does not know (a newer JAX release may add one)."""
  if params:
    raise NotImplementedError(
        f"handgrad's '{name}' rule does not handle the parameter(s) "
        f"{', '.join(f'{k}={v!r}' for k, v in sorted(params.items()))}")


def absent_or(ct, term):
  """``term(ct)``; ``0`` where the cotangent ``ct`` is absent (``None``) or all zero.

  JAX skips the terms of an output that received no blame (a symbolic zero); the
  engine hands a multi-output primitive's rule ``None`` for such an output, and the
  term is dropped.  Terms that multiply a zero cotangent by a non-finite factor
  (``1/(wⱼ − wᵢ)`` at a degenerate eigenvalue) would turn ``0`` into ``nan`` where
  ``jax.grad`` stays finite (``eigvalsh`` of the identity), so an all-zero cotangent
  (blame that cancelled, or zeros instantiated upstream) drops its term too.
  """
  if ct is None:
    return 0
  value = term(ct)
  # A scalar predicate: the selected values keep the sharding of ``value``.
  return lax.select(jnp.all(ct == 0), jnp.zeros_like(value), value)
