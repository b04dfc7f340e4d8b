"""Matrix decompositions: cholesky, lu, qr, eigh, svd, eig (eigenvalues, and eigenvectors
where JAX differentiates them).

Each rule is the transpose of the JVP that JAX defines for the primitive (the standard
adjoints, M. Giles, "Collected matrix derivative results for forward and reverse mode
algorithmic differentiation", 2008; I. Murray, "Differentiation of the Cholesky
decomposition", 2016; J. Townsend, "Differentiating the singular value decomposition",
2016), written by hand in ``lax``/``jnp``.  Leading axes are batch dimensions.  Complex
matrices are supported too: cotangents pair with tangents without conjugation (JAX's
convention), so a complex-linear map transposes to its plain transpose.  Conventions are JAX's,
including where they are singular: ``1/(wⱼ − wᵢ)`` at a degenerate eigenvalue is
``inf`` (so the gradient is ``nan``) unless no blame reaches the eigenvectors; the
eigenvector derivatives assume distinct eigenvalues.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
from jax import lax

from handgrad._src import jaxpr as hj
from handgrad._src.registry import defvjp
from handgrad._src.rules._common import zeros_where_missing
from handgrad._src.rules._matrix import (
    T, absent_or, diag, diag_matrix, eye, is_complex, mm, no_other_params,
    solve_tri, tril, triu)


def _pad_axis(x, axis: int, after: int, value=0):
  """``x`` with ``after`` entries of ``value`` appended along ``axis``."""
  config = [(0, 0, 0)] * x.ndim
  config[axis] = (0, after, 0)
  return lax.pad(x, np.array(value, x.dtype), config)


def _inverse_permutation(perm):
  """``inv`` with ``inv[perm[i]] = i`` along the last axis (``perm`` a permutation)."""
  iota = jnp.zeros_like(perm) + lax.iota(perm.dtype, perm.shape[-1])  # perm's sharding
  return lax.sort_key_val(perm, iota, dimension=perm.ndim - 1)[1]


def _take(x, index, axis: int):
  """``x`` with its rows (``axis=-2``) or columns (``axis=-1``) re-ordered by ``index``
  (``[..., size]``, every entry in range): row ``i`` of the result is row ``index[i]``."""
  index = index[..., :, None] if axis == -2 else index[..., None, :]
  return jnp.take_along_axis(x, jnp.broadcast_to(index, x.shape), axis=axis)


# -------------------------------------------------------------------------------------
# Cholesky.

def _phi(x):
  """Lower triangle with the diagonal halved (Murray's Φ; self-adjoint)."""
  n = x.shape[-1]
  return tril(x) * (1 - 0.5 * eye(n, x.dtype, x.ndim))


# L = cholesky(Σ), read from the lower triangle of the primitive's output (its strict
# upper triangle is unspecified; lax.linalg.cholesky takes tril afterwards).  JAX's JVP
# (Murray): L̇ = L·Φ(L⁻¹ Σ̇ L⁻ᵀ), hence
#   Σ̄ = L⁻ᵀ Φ(Lᵀ L̄) L⁻¹
# unsymmetrised, as jax.vjp of the primitive gives it; symmetrize_input=True (the
# default of lax.linalg.cholesky and jnp.linalg.cholesky) is ½(x + xᴴ) in front of the
# primitive, whose own rule symmetrises the result.  For a Hermitian Σ = L Lᴴ the JVP
# is L Φ(L⁻¹ Σ̇ L⁻ᴴ), complex-linear in Σ̇, so its transpose (no conjugation, JAX's
# convention) ends with conj(L)⁻¹ instead of L⁻¹.
#
# jax ≥ 0.12 differentiates the lower triangle only: its JVP first maps the tangent to
# M(Σ̇) = tril(Σ̇) + tril(Σ̇, −1)ᵀ (for complex Σ̇: real part so, imaginary part
# tril(Im, −1) − tril(Im, −1)ᵀ).  The cotangent is then Mᵀ(Σ̄): tril(Σ̄) + tril(Σ̄ᵀ, −1)
# (imaginary part tril(Im Σ̄, −1) − tril(Im Σ̄ᵀ, −1)).
@defvjp("cholesky")
def _cholesky_vjp(g, ans, x, **params):
  no_other_params("cholesky", params)
  L = tril(ans)
  p = _phi(mm(T(L), g))
  y = solve_tri(L, p, left_side=True, lower=True, transpose_a=True)  # L⁻ᵀ P
  ct = solve_tri(L, y, left_side=False, lower=True, conjugate_a=True)  # · conj(L)⁻¹
  if hj.CHOLESKY_READS_LOWER_TRIANGLE:
    ct = _lower_triangle_transpose(ct)
  return (ct,)


def _lower_triangle_transpose(ct):
  """Mᵀ(ct) for M(Σ̇) = tril(Σ̇) + tril(Σ̇, −1)ᵀ (the imaginary part antisymmetric)."""
  if not is_complex(ct):
    return tril(ct) + tril(T(ct), -1)
  re, im = jnp.real(ct), jnp.imag(ct)
  return lax.complex(tril(re) + tril(T(re), -1), tril(im, -1) - tril(T(im), -1))


# -------------------------------------------------------------------------------------
# LU with partial pivoting.

def _lu_factors(lu, m: int, n: int):
  """L (m×m, unit lower) and U (n×n) of the packed factorisation, padded as in JAX's
  JVP: L takes an identity block right of its k = min(m, n) columns, U an identity
  block below-right of its k rows."""
  k = min(m, n)
  dtype = lu.dtype
  L = _pad_axis(tril(lu[..., :, :k], -1), -1, m - k) + eye(m, dtype, lu.ndim)
  u_eye = jnp.pad(jnp.eye(n - k, dtype=dtype), ((k, 0), (k, 0)))
  U = _pad_axis(triu(lu[..., :k, :]), -2, n - k) + lax.expand_dims(u_eye, tuple(range(lu.ndim - 2)))
  return L, U


# P A = L U, packed into one m×n matrix (L strictly below the diagonal, U on and above
# it); pivots and permutation are integers and carry no gradient.  JAX's JVP (de Hoog,
# Anderssen and Lukas): with X = L⁻¹ (P Ȧ) U⁻¹,  (LU)˙ = L·tril(X, −1) + triu(X)·U.
# Transposed:
#   X̄ = tril(Lᵀ ḡ, −1) + triu(ḡ Uᵀ),   P·Ā = L⁻ᵀ X̄ U⁻ᵀ,   Ā = Pᵀ(P·Ā)
# (rows put back through the inverse permutation).  The JVP is complex-linear, so the
# same plain transposes serve complex matrices (JAX's convention: no conjugation).
@defvjp("lu")
def _lu_vjp(g, ans, x, **params):
  no_other_params("lu", params)
  g_lu = g[0]
  lu, _, perm = ans
  m, n = x.shape[-2:]
  L, U = _lu_factors(lu, m, n)
  xbar = tril(mm(T(L), g_lu), -1) + triu(mm(g_lu, T(U)))
  xbar = solve_tri(U, xbar, left_side=False, lower=False, transpose_a=True)
  pa_bar = solve_tri(L, xbar, left_side=True, lower=True, transpose_a=True, unit_diagonal=True)
  return (_take(pa_bar, _inverse_permutation(perm), axis=-2),)


# -------------------------------------------------------------------------------------
# QR.

def _H(x):
  """``xᴴ``: the conjugate transpose over the last two axes (``xᵀ`` for real ``x``)."""
  return jnp.conj(T(x)) if is_complex(x) else T(x)


def _conj(x):
  return jnp.conj(x) if is_complex(x) else x


def _thin_qr_vjp(q, r, gq, gr):
  """Ā for A = Q R with Q m×n, R n×n (m ≥ n), transposing JAX's JVP (Townsend's
  derivation): with B = Ȧ R⁻¹, C = Qᴴ B, Ω = tril(C, −1) − tril(C, −1)ᴴ + i·Im diag(C),
      Q̇ = Q(Ω − C) + B,   Ṙ = (C − Ω) R.
  Transposed, with M = Qᵀ Q̄ and N = R̄ Rᵀ (no conjugation of cotangents):
      Ω̄ = M − N,   C̄ = N − M + tril(Ω̄ − Ω̄ᴴ, −1) + i·Im diag(Ω̄),
      B̄ = Q̄ + conj(Q) C̄,   Ā = B̄ R⁻ᵀ
  (for real matrices Ω's diagonal term vanishes and conj(Q) = Q)."""
  M = mm(T(q), gq)
  N = mm(gr, T(r))
  omega = M - N
  c = N - M + tril(omega - _H(omega), -1)
  if is_complex(c):
    c = c + diag_matrix(1j * jnp.imag(diag(omega)))
  b = gq + mm(_conj(q), c)
  return solve_tri(r, b, left_side=False, lower=False, transpose_a=True)


# Q, R = qr(A) (A[:, p] = Q R with pivoting; p is an integer output, no gradient).
# * m ≥ n, reduced (or square): the thin rule above.
# * m > n, full_matrices: Q = [Q₁ Q₂] with Q₂ m×(m−n); JAX's JVP (arXiv:2409.13374,
#   eqs. 32–33) sets, with Z = Q₂ₙ (Q₁ₙ − I)⁻¹ (Q₁ₙ the top n rows of Q₁, Q₂ₙ the other
#   m−n rows) and W = Q₁ + Q₂ Z,
#       Q̇₂ = Q̇₁ Zᴴ − W (Q̇₁[n:] − Z Q̇₁[:n])ᴴ,   Ṙ = [Ṙ₁; 0].
#   Transposed: Ē = −Q̄₂ᴴ conj(W), and Q̄₁ gains Q̄₂ conj(Z), −Zᵀ Ē in its top n rows
#   and Ē in the others; then the thin rule with (Q₁, R₁).
# * m < n: A = [A₁ A₂], R = [R₁ R₂] with A₁ = Q R₁ square and R₂ = Qᴴ A₂, so
#   Ṙ₂ = Q̇ᴴ A₂ + Qᴴ Ȧ₂:  Ā₂ = conj(Q) R̄₂, and Q̄ gains conj(A₂) R̄₂ᴴ before the thin
#   rule for A₁.  A₂ are the columns of the pivoted A[:, p] (JAX's JVP reads them from
#   the unpivoted A, a mismatch only for pivoting=True with m < n; this rule agrees with
#   finite differences there).
# With pivoting the cotangent of A[:, p] is put back through the inverse permutation.
@defvjp("qr")
def _qr_vjp(g, ans, x, *, pivoting, full_matrices, use_magma=None, **params):
  # use_magma only picks the GPU library that factorises; the derivative is the same.
  no_other_params("qr", params)
  q, r = ans[0], ans[1]
  gq, gr = zeros_where_missing(g[:2], ans[:2])
  m, n = x.shape[-2:]
  if pivoting:
    x = _take(x, ans[2], axis=-1)
  if m < n:
    gr1, gr2 = gr[..., :, :m], gr[..., :, m:]
    gq = gq + mm(_conj(x[..., :, m:]), _H(gr2))
    dx = jnp.concatenate([_thin_qr_vjp(q, r[..., :, :m], gq, gr1), mm(_conj(q), gr2)],
                         axis=-1)
  elif full_matrices and m > n:
    q1, q2 = q[..., :, :n], q[..., :, n:]
    gq1, gq2 = gq[..., :, :n], gq[..., :, n:]
    q1n, q1p = q1[..., :n, :], q1[..., n:, :]
    zh = jnp.linalg.solve(_H(q1n - eye(n, q.dtype, q.ndim)), _H(q1p))  # Zᴴ, n×(m−n)
    z = _H(zh)
    w = q1 + mm(q2, z)
    e = -mm(_H(gq2), _conj(w))                                           # Ē, (m−n)×n
    gq1 = gq1 + mm(gq2, _conj(z)) + jnp.concatenate([-mm(T(z), e), e], axis=-2)
    dx = _thin_qr_vjp(q1, r[..., :n, :], gq1, gr[..., :n, :])
  else:
    dx = _thin_qr_vjp(q, r, gq, gr)
  if pivoting:
    dx = _take(dx, _inverse_permutation(ans[2]), axis=-1)
  return (dx,)


# -------------------------------------------------------------------------------------
# Symmetric eigendecomposition.

def _reciprocal_gaps(w):
  """F[i, j] = 1/(wⱼ − wᵢ) off the diagonal, 0 on it: JAX's
  ``(I + wⱼ − wᵢ)⁻¹ − I``, ``inf`` where two eigenvalues are exactly equal."""
  n = w.shape[-1]
  i = eye(n, w.dtype, w.ndim + 1)
  return lax.integer_pow(i + w[..., None, :] - w[..., :, None], -1) - i


# V, w = eigh(A) for a symmetric (Hermitian) A, A V = V diag(w), w real.  JAX's JVP
# (non-degenerate perturbation theory, Giles §3.1): with Ṁ = Vᴴ Ȧ V,  ẇ = Re diag(Ṁ),
# V̇ = V (F ∘ Ṁ).  Transposed (no conjugation of cotangents, JAX's convention):
#   Ā = conj(V) (diag(w̄) + F ∘ (Vᵀ V̄)) Vᵀ
# (unsymmetrised, as jax.vjp of the primitive; jnp.linalg.eigh symmetrises its input
# in front of the primitive).  At a degenerate eigenvalue F is inf and so is the
# eigenvector term, unless V̄ is absent (eigvalsh, or a loss of w only): JAX's rule.
# lower, sort_eigenvalues and algorithm only say how the factorisation is computed:
# the rule reads V and w from the primitive's own outputs.
@defvjp("eigh")
def _eigh_vjp(g, ans, x, *, lower=True, sort_eigenvalues=True, subset_by_index=None,
              algorithm=None, **params):
  no_other_params("eigh", params)
  n = x.shape[-1]
  if not (subset_by_index is None or tuple(subset_by_index) == (0, n)):
    raise NotImplementedError(
        f"eigh with subset_by_index={subset_by_index}: derivatives are not defined for a "
        f"partial eigendecomposition (nor by jax.grad)")
  v, w = ans
  gv, gw = g[0], zeros_where_missing(g[1:], ans[1:])[0]
  w, gw = w.astype(v.dtype), gw.astype(v.dtype)
  inner = diag_matrix(gw) + absent_or(gv, lambda gv: _reciprocal_gaps(w) * mm(T(v), gv))
  return (mm(mm(jnp.conj(v), inner), T(v)),)


# -------------------------------------------------------------------------------------
# Singular value decomposition.

# s, U, Vᴴ = svd(A) (thin: k = min(m, n) singular values).  JAX's JVP (Townsend): with
# Ṡ = Uᴴ Ȧ V, S = diag(s), F[i, j] = 1/(sⱼ² − sᵢ²) off the diagonal (0 on it),
#   ṡ = Re diag(Ṡ),  U̇ = U (F ∘ (Ṡ S + S Ṡᴴ) + D) [+ (I − UUᴴ) Ȧ V S⁻¹ when m > n],
#   V̇ = V (F ∘ (S Ṡ + Ṡᴴ S)) [+ (I − VVᴴ) Ȧᴴ U S⁻¹ when n > m],
#   D = diag(i·Im(Ṡⱼⱼ)/sⱼ) (zero for real matrices; 1/0 read as 0).
# Transposed (no conjugation of cotangents), with Kᵤ = Uᵀ Ū, Jᵤ = F ∘ Kᵤ and
# Jᵥ = F ∘ (Vᵀ V̄), V̄ = conj(V̄ᴴ)ᵀ:
#   S̄ = diag(s̄) + (Jᵤ + Jᵤᴴ) S + S (Jᵥ + Jᵥᴴ) + ½(Δ − Δᴴ),  Δ = diag(diag(Kᵤ)/s),
#   Ā = conj(U) S̄ Vᵀ  [+ (I − conj(U) Uᵀ) Ū S⁻¹ Vᵀ when m > n]
#                     [+ ((I − conj(V) Vᵀ) V̄ S⁻¹ Uᵀ)ᴴ when n > m].
# Repeated singular values make F inf and a zero one makes S⁻¹ inf: the vector terms are
# then inf or nan, and dropped when no blame reaches U (resp. Vᴴ), as in JAX.  As in
# JAX the singular vectors of full_matrices=True have no derivative unless A is square.
@defvjp("svd")
def _svd_vjp(g, ans, x, *, full_matrices, compute_uv, subset_by_index=None, algorithm=None,
             **params):
  # algorithm only picks the LAPACK/GPU routine; the rule uses the outputs it returns.
  no_other_params("svd", params)
  m, n = x.shape[-2:]
  k = min(m, n)
  subset = not (subset_by_index is None or tuple(subset_by_index) == (0, k))
  if compute_uv and subset:
    raise NotImplementedError(
        f"svd with subset_by_index={subset_by_index} and compute_uv=True: the singular "
        f"vectors' derivative needs the vectors outside the subset")
  if compute_uv and full_matrices and m != n:
    raise NotImplementedError(
        "Singular value decomposition JVP not implemented for full matrices "
        f"(svd of a {m}×{n} matrix with full_matrices=True, compute_uv=True; as in JAX)")
  if compute_uv:
    s, u, vt = ans
    gs, gu, gvt = g
    gs = zeros_where_missing([gs], [s])[0]
  else:
    (s,), (gs,) = ans, g
    u, s, vt = lax.linalg.svd(x, full_matrices=False, compute_uv=True,
                              subset_by_index=subset_by_index, algorithm=algorithm)
  v = _H(vt)
  sbar = diag_matrix(gs.astype(u.dtype))
  row = s[..., None, :]  # row[i, j] = sⱼ

  if compute_uv:
    sq = (row + T(row)) * (row - T(row))
    i = eye(sq.shape[-1], sq.dtype, sq.ndim)
    f = 1 / (sq + i) - i

    def u_term(gu):
      ku = mm(T(u), gu)
      j = f * ku
      out = (j + _H(j)) * row
      if is_complex(ku):
        zero = (s == 0).astype(s.dtype)
        delta = diag_matrix(diag(ku) * (1 / (s + zero) - zero))
        out = out + 0.5 * (delta - _H(delta))
      return out

    def v_term(gvt):
      j = f * mm(T(v), _H(gvt))
      return T(row) * (j + _H(j))

    sbar = sbar + absent_or(gu, u_term) + absent_or(gvt, v_term)
  dx = mm(mm(_conj(u), sbar), _conj(vt))
  if compute_uv and m > n:
    dx = dx + absent_or(gu, lambda gu: mm(
        (gu - mm(_conj(u), mm(T(u), gu))) / row, _conj(vt)))
  if compute_uv and n > m:
    def v_outside(gvt):
      vbar = _H(gvt)
      return _H(mm((vbar - mm(_conj(v), mm(T(v), vbar))) / row, T(u)))
    dx = dx + absent_or(gvt, v_outside)
  return (dx,)


# -------------------------------------------------------------------------------------
# General eigendecomposition.
#
# Complex cotangents pair with tangents as ⟨t̄, ṫ⟩ = Re Σ t̄·ṫ (no conjugation): JAX's
# convention, under which a complex-linear map transposes to its plain transpose,
# Re(z) to t ↦ t, Im(z) to t ↦ −i·t, conj to conj, and a real-to-complex cast to Re.

def _eig_vector_cotangent(w, v, gw, gv):
  """P̄ for one set of eigenvectors, transposing JAX's JVP (Giles §3.1 with LAPACK's
  normalisation: each vⱼ of unit 2-norm with a real largest-magnitude entry k = kⱼ):
      Ṗ = V⁻¹ Ȧ V,  ẇ = diag(Ṗ),  U = V (F ∘ Ṗ),  v̇ⱼ = uⱼ + cⱼ vⱼ,
      cⱼ = −Re(vⱼᴴ uⱼ) − i·Im(u_kⱼ) / Re(v_kⱼ),
  F[i, j] = 1/(wⱼ − wᵢ) off the diagonal.  Transposed:
      c̄ⱼ = Σᵢ v̄ᵢⱼ vᵢⱼ,  Ū = V̄ − conj(V)·Re(c̄) + [i = kⱼ]·i·(−Im c̄ⱼ)/Re(v_kⱼ),
      P̄ = diag(w̄) + F ∘ (Vᵀ Ū);  then Ā = V⁻ᵀ P̄ Vᵀ (by the caller)."""
  n = w.shape[-1]
  i = eye(n, w.dtype, w.ndim + 1)
  f = lax.integer_pow(i + w[..., None, :] - w[..., :, None], -1) - i
  k = lax.argmax(jnp.abs(v), v.ndim - 2, jnp.int32)
  mask = (lax.broadcasted_iota(jnp.int32, v.shape, v.ndim - 2) == k[..., None, :]).astype(v.dtype)
  cbar = jnp.sum(gv * v, axis=-2)
  r = jnp.real(jnp.sum(mask * v, axis=-2))
  sbar = 1j * (-jnp.imag(cbar)) / r
  ubar = gv - jnp.conj(v) * jnp.real(cbar)[..., None, :] + mask * sbar[..., None, :]
  pbar = f * mm(T(v), ubar)
  return pbar if gw is None else pbar + diag_matrix(gw)


def _from_p(v, pbar):
  """V⁻ᵀ P̄ Vᵀ: the cotangent of Ȧ from that of Ṗ = V⁻¹ Ȧ V."""
  return jnp.linalg.solve(T(v), mm(pbar, T(v)))


# [w, vl, vr] = eig(A) (complex; A vr = vr diag(w), vlᴴ A = diag(w) vlᴴ).  JAX's JVP:
# ẇ = diag(V⁻¹ Ȧ V) with the right eigenvectors V, so for the eigenvalues alone
#   Ā = V⁻ᵀ diag(w̄) Vᵀ,
# its real part for a real A (the transpose of the real-to-complex cast).  Eigenvector
# derivatives (enable_eigvec_derivs=True; refused otherwise, as by JAX) transpose
# _eig_vector_cotangent's JVP; the left eigenvectors are the right ones of Aᴴ with
# eigenvalues conj(w), so their P̄ is mapped back through Ȧᴴ (Ā gains its ᴴ).
# implementation only picks the library: the rule recomputes vr with the same one.
@defvjp("eig")
def _eig_vjp(g, ans, x, *, compute_left_eigenvectors, compute_right_eigenvectors,
             enable_eigvec_derivs=False, implementation=None, **params):
  no_other_params("eig", params)
  vectors = compute_left_eigenvectors or compute_right_eigenvectors
  if vectors and not enable_eigvec_derivs:
    raise NotImplementedError(
        "Derivatives of non-symmetric eigenvectors are only valid under assumptions on "
        "the input that JAX cannot check (see the enable_eigvec_derivs argument to "
        "jax.lax.linalg.eig); use jnp.linalg.eigvals for the eigenvalues alone")
  w, gw = ans[0], zeros_where_missing(g[:1], ans[:1])[0]
  if compute_right_eigenvectors:
    vr, gvr = ans[-1], g[-1]
  else:
    # The recomputation keeps enable_eigvec_derivs, as JAX's JVP does: a second
    # derivative through vr is then as allowed (or refused) as JAX makes it.
    _, vr = lax.linalg.eig(x, compute_left_eigenvectors=False, compute_right_eigenvectors=True,
                           enable_eigvec_derivs=enable_eigvec_derivs,
                           implementation=implementation)
    gvr = None
  if not vectors:
    ct = _from_p(vr, diag_matrix(gw))
  else:
    pbar = diag_matrix(gw) if gvr is None else _eig_vector_cotangent(w, vr, gw, gvr)
    ct = _from_p(vr, pbar)
    if compute_left_eigenvectors and g[1] is not None:
      vl, gvl = ans[1], g[1]
      ct = ct + jnp.conj(T(_from_p(vl, _eig_vector_cotangent(jnp.conj(w), vl, None, gvl))))
  if not is_complex(x):
    ct = jnp.real(ct)
  return (ct.astype(x.dtype),)
