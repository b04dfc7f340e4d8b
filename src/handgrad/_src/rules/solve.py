"""Linear solves: ``triangular_solve``, ``tridiagonal_solve`` and ``custom_linear_solve``.

``custom_linear_solve`` is what ``jnp.linalg.solve``, ``inv``, ``slogdet``, ``det``,
``expm`` and ``jax.scipy.sparse.linalg.cg`` lower to: a solve whose derivative is
defined implicitly at the solution ``x`` of ``A x = b`` (``A`` given as a ``matvec``
function), never by differentiating the solver itself.
"""

from __future__ import annotations

import jax.numpy as jnp
from jax import lax
from jax.extend.core import primitives

from handgrad._src.registry import defvjp
from handgrad._src.rules._common import zeros_where_missing
from handgrad._src.rules._matrix import T, is_complex, mm, no_other_params, solve_tri, tril, triu


# X = op(A)⁻¹ B (left_side) or X = B op(A)⁻¹, op(A) = A or Aᵀ (transpose_a), where only
# the `lower` (or upper) triangle of A is read and, with unit_diagonal, not its diagonal:
#   dB = op(A)⁻ᵀ g                    (left)      dB = g op(A)⁻ᵀ                 (right)
#   d op(A) = −dB Xᵀ                   (left)      d op(A) = −Xᵀ dB               (right)
#   dA = the read triangle of d op(A), transposed back when transpose_a and conjugated
#   back when conjugate_a; JAX's JVP masks the tangent of A to the same triangle
#   (diagonal excluded when unit_diagonal).
# Complex operands pair cotangents without conjugation (JAX's convention), so op(A)⁻ᵀ
# keeps conjugate_a: the solve of JAX's own transpose rule.  conjugate_a has no effect
# on a real A.
@defvjp("triangular_solve")
def _triangular_solve_vjp(g, ans, a, b, *, left_side, lower, transpose_a, conjugate_a,
                          unit_diagonal, **params):
  no_other_params("triangular_solve", params)
  db = solve_tri(a, g, left_side=left_side, lower=lower, transpose_a=not transpose_a,
                 conjugate_a=conjugate_a, unit_diagonal=unit_diagonal)
  dop = -mm(db, T(ans)) if left_side else -mm(T(ans), db)
  da = T(dop) if transpose_a else dop
  da = jnp.conj(da) if conjugate_a and is_complex(da) else da
  k = 1 if unit_diagonal else 0
  da = tril(da, -k) if lower else triu(da, k)
  return da, db


# x = A⁻¹ b, A the linear map `matvec` closed over its constants (which carry A):
#   db = A⁻ᵀ ct_x: the transposed solve (`transpose_solve` with `vecmat`), bound as a
#        custom_linear_solve itself, as JAX's transpose rule does, so that a second
#        derivative is again implicit (it differentiates through `vecmat`'s constants,
#        never through a factorisation held under stop_gradient);
#   d(matvec constants) = −(VJP of c ↦ matvec_c(x) at the cotangent db), run by the
#        hand engine over the matvec jaxpr (from A x = b: dA·x + A·dx = db);
#   the constants of vecmat, solve and transpose_solve get no gradient: the solver is
#        assumed implicitly differentiable (JAX's convention: its JVP differentiates
#        only matvec's constants and b).
# Auxiliary outputs (has_aux) carry no gradient, as in JAX (zero tangents).
@defvjp("custom_linear_solve")
def _custom_linear_solve_vjp(g, ans, *args, const_lengths, jaxprs, **params):
  from handgrad._src import engine  # the engine imports the rules: import lazily
  no_other_params("custom_linear_solve", params)
  if jaxprs.transpose_solve is None:
    # JAX's own error: custom_linear_solve(..., transpose_solve=None, symmetric=False).
    raise TypeError("transpose_solve required for backwards mode automatic "
                    "differentiation of custom_linear_solve")
  n_consts = sum(const_lengths)
  consts, b = list(args[:n_consts]), list(args[n_consts:])
  n_mv, n_vm, n_s, n_ts = const_lengths
  matvec_c = consts[:n_mv]
  vecmat_c = consts[n_mv:n_mv + n_vm]
  solve_c = consts[n_mv + n_vm:n_mv + n_vm + n_s]
  tsolve_c = consts[n_mv + n_vm + n_s:]
  x = list(ans[:len(b)])
  ct_x = zeros_where_missing(g[:len(b)], x)
  ct_b = primitives.linear_solve_p.bind(
      *vecmat_c, *matvec_c, *tsolve_c, *solve_c, *ct_x,
      const_lengths=const_lengths.transpose(), jaxprs=jaxprs.transpose())[:len(b)]
  matvec = jaxprs.matvec
  active = [engine.is_float(c) for c in matvec_c]  # anything with a dtype
  ct_mv = [None] * n_mv
  if any(active):
    _, frame = engine.forward(matvec.jaxpr, matvec.consts, [*matvec_c, *x],
                              active + [False] * len(x))
    cts = engine.backward(frame, ct_b)[:n_mv]
    ct_mv = [None if ct is None else -ct for ct in cts]
  return (*ct_mv, *([None] * (n_vm + n_s + n_ts)), *ct_b)



# X = A⁻¹ B, A tridiagonal: A[i, i−1] = dl[i], A[i, i] = d[i], A[i, i+1] = du[i]
# (dl[0] and du[m−1] lie outside A and are never read):
#   dB = A⁻ᵀ g, a tridiagonal solve with Aᵀ's diagonals: dlᵀ[i] = du[i−1], duᵀ[i] = dl[i+1]
#   dA = −dB Xᵀ on A's three diagonals only:
#     dd[i] = −Σ_k dB[i,k] X[i,k],  ddl[i] = −Σ_k dB[i,k] X[i−1,k] (i ≥ 1, ddl[0] = 0),
#     ddu[i] = −Σ_k dB[i,k] X[i+1,k] (i ≤ m−2, ddu[m−1] = 0)
# Complex operands pair cotangents without conjugation (JAX's convention: its transpose
# rule solves with the plain transpose).  perturb_singular is passed on to the solve of
# Aᵀ, as JAX's JVP and transpose rules do.
@defvjp("tridiagonal_solve")
def _tridiagonal_solve_vjp(g, ans, dl, d, du, b, **params):
  perturb = {k: params.pop(k) for k in ("perturb_singular",) if k in params}
  no_other_params("tridiagonal_solve", params)
  m = d.shape[-1]
  last = d.ndim - 1
  # One zero column, sharded as d is (full_like keeps its operand's sharding).
  zero = lax.full_like(lax.slice_in_dim(d, 0, 1, axis=last), 0)
  dl_t = lax.concatenate([zero, lax.slice_in_dim(du, 0, m - 1, axis=last)], last)
  du_t = lax.concatenate([lax.slice_in_dim(dl, 1, m, axis=last), zero], last)
  db = lax.linalg.tridiagonal_solve(dl_t, d, du_t, g, **perturb)
  rows = b.ndim - 2
  dd = -jnp.sum(db * ans, axis=-1)
  up = lax.slice_in_dim(ans, 1, m, axis=rows)       # X[i+1] for i = 0 … m−2
  down = lax.slice_in_dim(ans, 0, m - 1, axis=rows)  # X[i−1] for i = 1 … m−1
  ddu = -jnp.sum(lax.slice_in_dim(db, 0, m - 1, axis=rows) * up, axis=-1)
  ddl = -jnp.sum(lax.slice_in_dim(db, 1, m, axis=rows) * down, axis=-1)
  ddu = lax.concatenate([ddu, zero], last)
  ddl = lax.concatenate([zero, ddl], last)
  return ddl, dd, ddu, db
