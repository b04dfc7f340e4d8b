"""Specs of the linear-algebra rules (``rules/solve.py``, ``rules/decompositions.py``):
``triangular_solve`` with every parameter combination, ``custom_linear_solve`` through
``jnp.linalg.solve``/``inv`` and through user solvers (a ``while_loop`` conjugate
gradient that is never differentiated, ``has_aux``), ``cholesky``, ``lu`` (square, tall,
wide), ``qr`` (reduced, complete, wide, pivoted), ``eigh``, ``svd``, ``eig``'s
eigenvalues, batched; edge values: matrices that are not positive definite or of low
rank, and exactly degenerate eigenvalues and singular values, where the gradient is
finite exactly when no blame reaches the vectors (as ``jax.vjp`` gives it).

Functions whose linear algebra sits inside a ``custom_jvp`` (``det``, ``slogdet``) or a
``cond`` (``expm``), where the sweep's equation finder does not look, are checked the
same way in ``tests/_src/rules/test_linalg.py``.

Samplers draw well-conditioned inputs for finite differences: symmetric positive
definite matrices, matrices with a dominant diagonal, triangular factors with a
diagonal away from zero, symmetric matrices with well-separated eigenvalues.
"""

from __future__ import annotations

import functools
import itertools
import warnings

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from handgrad._src.specs import RuleSpec, normal

# -------------------------------------------------------------------------------------
# Samplers (``sampler(rng, shape, dtype)``; the last two axes are the matrix).


def _eye_like(shape):
  return np.broadcast_to(np.eye(shape[-1]), shape)


def spd():
  """Symmetric positive definite: ``B Bᵀ / n + I`` (eigenvalues in about [1, 5])."""
  def sample(rng, shape, dt):
    b = rng.standard_normal(shape)
    return (b @ np.swapaxes(b, -1, -2) / shape[-1] + _eye_like(shape)).astype(dt)
  return sample


def dominant():
  """A random matrix plus ``3·I`` on its leading square: well conditioned, and its LU
  pivots stay put under small perturbations."""
  def sample(rng, shape, dt):
    x = rng.standard_normal(shape)
    k = min(shape[-2:])
    x[..., range(k), range(k)] += 3.0 * np.sign(x[..., range(k), range(k)] + 1e-3)
    return x.astype(dt)
  return sample


def triangular_operand():
  """A full matrix whose diagonal is at least 1 in size: every triangle of it is well
  conditioned (the rule must ignore the triangle ``triangular_solve`` does not read)."""
  def sample(rng, shape, dt):
    x = 0.5 * rng.standard_normal(shape)
    n = shape[-1]
    d = rng.choice([-1.0, 1.0], shape[:-1]) * rng.uniform(1.0, 2.0, shape[:-1])
    x[..., range(n), range(n)] = d
    return x.astype(dt)
  return sample


def separated_symmetric():
  """``Q diag(λ) Qᵀ`` with eigenvalues ``λ`` at least 1 apart."""
  def sample(rng, shape, dt):
    n = shape[-1]
    q, _ = np.linalg.qr(rng.standard_normal(shape))
    lam = np.arange(n) * 1.5 - n / 2 + rng.uniform(-0.25, 0.25, shape[:-1])
    return ((q * lam[..., None, :]) @ np.swapaxes(q, -1, -2)).astype(dt)
  return sample


def separated_singular_values():
  """``U diag(σ) Vᵀ`` with singular values ``σ`` in [1, 4], at least 0.6 apart."""
  def sample(rng, shape, dt):
    m, n = shape[-2:]
    k = min(m, n)
    u, _ = np.linalg.qr(rng.standard_normal(shape[:-2] + (m, k)))
    v, _ = np.linalg.qr(rng.standard_normal(shape[:-2] + (n, k)))
    s = 1.0 + np.arange(k) * 0.8 + rng.uniform(-0.1, 0.1, shape[:-2] + (k,))
    return ((u * s[..., None, :]) @ np.swapaxes(v, -1, -2)).astype(dt)
  return sample


def separated_eigenvalues():
  """``S diag(λ) S⁻¹``, ``S`` near the identity, real ``λ`` at least 1 apart: a
  non-symmetric matrix whose eigenvalues are simple and real."""
  def sample(rng, shape, dt):
    n = shape[-1]
    s = _eye_like(shape) + 0.3 * rng.standard_normal(shape)
    lam = np.arange(n) * 1.5 + rng.uniform(-0.2, 0.2, shape[:-1])
    return ((s * lam[..., None, :]) @ np.linalg.inv(s)).astype(dt)
  return sample


def diagonal(values):
  """The diagonal matrix ``diag(values)`` in every batch entry (exact degeneracies)."""
  def sample(rng, shape, dt):
    return np.broadcast_to(np.diag(np.asarray(values, np.float64)), shape).astype(dt)
  return sample


def repeated_singular_values():
  """``diag(2, 2, 0, …)`` in the matrix's shape: repeated and zero singular values."""
  def sample(rng, shape, dt):
    x = np.zeros(shape)
    k = min(shape[-2:])
    x[..., range(k), range(k)] = ([2.0, 2.0] + [0.0] * k)[:k]
    return x.astype(dt)
  return sample


def singular(rank: int):
  """A square matrix of the given rank (a product of random n×rank and rank×n)."""
  def sample(rng, shape, dt):
    a = rng.standard_normal(shape[:-1] + (rank,))
    b = rng.standard_normal(shape[:-2] + (rank, shape[-1]))
    return (a @ b).astype(dt)
  return sample


# -------------------------------------------------------------------------------------
# Functions holding one rule's equation.

def _all_outputs(decomposition):
  """The float outputs of a decomposition as a tuple (pivots dropped)."""
  def fun(x):
    outs = decomposition(x)
    outs = outs if isinstance(outs, (tuple, list)) else (outs,)
    return tuple(o for o in outs if jnp.issubdtype(o.dtype, jnp.inexact))
  return fun


def _triangular(left_side, lower, transpose_a, unit_diagonal, conjugate_a=False):
  return lambda a, b: lax.linalg.triangular_solve(
      a, b, left_side=left_side, lower=lower, transpose_a=transpose_a,
      conjugate_a=conjugate_a, unit_diagonal=unit_diagonal)


def _cg(matvec, b, iters):
  """Conjugate gradients in a ``while_loop`` (not differentiable by reverse mode): the
  hand rule of ``custom_linear_solve`` never differentiates it."""
  def cond(state):
    return state[-1] < iters

  def body(state):
    x, r, p, k = state
    ap = matvec(p)
    alpha = jnp.vdot(r, r) / jnp.vdot(p, ap)
    x, r_new = x + alpha * p, r - alpha * ap
    p = r_new + jnp.vdot(r_new, r_new) / jnp.vdot(r, r) * p
    return x, r_new, p, k + 1

  x0 = jnp.zeros_like(b)
  return lax.while_loop(cond, body, (x0, b, b, 0))[0]


def _user_solve(a, b):
  """``custom_linear_solve`` of the symmetric ``a`` by conjugate gradients."""
  matvec = lambda x: a @ x
  return lax.custom_linear_solve(matvec, b, lambda mv, r: _cg(mv, r, 3 * b.shape[0]),
                                 symmetric=True)


def _user_solve_aux(a, b):
  """``has_aux``: both solvers also return their residual norm, which carries no
  gradient."""
  def solver(m):
    def solve(mv, r):
      x = jnp.linalg.solve(m, r)
      return x, jnp.linalg.norm(mv(x) - r)
    return solve
  return lax.custom_linear_solve(lambda x: a @ x, b, solver(a), solver(a.T), has_aux=True)


def _cho_solve(x):
  x = (x + jnp.swapaxes(x, -1, -2)) / 2
  factor = jax.scipy.linalg.cho_factor(x)
  return jax.scipy.linalg.cho_solve(factor, jnp.ones(x.shape[-1], x.dtype))


def _projected(z, dtype):
  """``Re(z) + 2·Im(z)`` (the real part of ``z·(1 − 2i)``): a real function of both
  parts of a complex output, which central differences can check."""
  with warnings.catch_warnings():  # dropping the imaginary part is the point here
    warnings.simplefilter("ignore", np.exceptions.ComplexWarning)
    return lax.convert_element_type(z * (1 - 2j), dtype)


def _eigvals_projected(x):
  return _projected(jnp.linalg.eigvals(x), x.dtype)


def _eig_projected(left, right):
  """Every output of ``eig`` with eigenvector derivatives enabled, projected to reals."""
  def fun(x):
    outs = lax.linalg.eig(x, compute_left_eigenvectors=left, compute_right_eigenvectors=right,
                          enable_eigvec_derivs=True)
    return tuple(_projected(o, x.dtype) for o in outs)
  return fun


# -------------------------------------------------------------------------------------
# The table.

SQUARE = (((3, 3),), ((1, 1),), ((2, 4, 4),))
TALL, WIDE = ((4, 2),), ((2, 4),)


def table() -> list[RuleSpec]:
  S = RuleSpec
  specs = []
  # --- triangular_solve: every combination of its parameters -----------------------
  for left_side, lower, transpose_a, unit in itertools.product((True, False), repeat=4):
    b_shapes = ((3, 2), (2, 3)) if left_side else ((2, 3), (3, 2))
    specs.append(S(
        "triangular_solve", _triangular(left_side, lower, transpose_a, unit),
        (((3, 3), b_shapes[0]), ((1, 1), (1, 1)), ((2, 3, 3), (2,) + b_shapes[0])),
        (triangular_operand(), normal()),
        label=f"left_side={left_side} lower={lower} transpose_a={transpose_a} "
              f"unit_diagonal={unit}",
        note="the triangle that is not read (and the diagonal with unit_diagonal) gets "
             "no cotangent"))
  specs.append(S(
      "triangular_solve", _triangular(True, True, False, False, conjugate_a=True),
      (((3, 3), (3, 2)),), (triangular_operand(), normal()), label="conjugate_a on real",
      note="conjugate_a has no effect on a real matrix"))
  specs += [
      S("triangular_solve", lambda a, b: jax.scipy.linalg.solve_triangular(a, b, lower=True),
        (((3, 3), (3,)), ((1, 1), (1,))), (triangular_operand(), normal()),
        label="solve_triangular, vector right-hand side"),
      # --- custom_linear_solve ---------------------------------------------------------
      S("custom_linear_solve", jnp.linalg.solve,
        (((3, 3), (3,)), ((3, 3), (3, 2)), ((1, 1), (1,)), ((2, 3, 3), (2, 3, 1))),
        (dominant(), normal()), label="jnp.linalg.solve",
        note="A reaches the solve through matvec's constant, its LU factors are held "
             "under stop_gradient"),
      S("custom_linear_solve", jnp.linalg.inv, SQUARE, dominant(), label="jnp.linalg.inv"),
      S("custom_linear_solve", _user_solve, (((3, 3), (3,)), ((4, 4), (4,))),
        (spd(), normal()), fd=False, label="symmetric, while_loop conjugate gradients",
        note="conjugate gradients stop after 3n steps, accurate to about 1e-10 only: "
             "no FD; jax.vjp differentiates the same solves"),
      S("custom_linear_solve", _user_solve_aux, (((3, 3), (3,)),), (dominant(), normal()),
        label="has_aux", note="the auxiliary output carries no gradient (as in JAX)"),
      # --- cholesky ----------------------------------------------------------------------
      S("cholesky", jnp.linalg.cholesky, SQUARE, spd(),
        note="jnp.linalg.cholesky symmetrises its input in front of the primitive"),
      S("cholesky", lambda x: lax.linalg.cholesky(x, symmetrize_input=False), SQUARE, spd(),
        fd=False, label="symmetrize_input=False",
        note="the primitive reads the lower triangle only, yet jax.vjp's cotangent (the "
             "transpose of its JVP, L⁻ᵀΦ(LᵀL̄)L⁻¹) fills both: no FD"),
      S("cholesky", _cho_solve, (((3, 3),), ((4, 4),)), spd(), label="cho_factor, cho_solve",
        note="cho_factor reads one triangle (symmetrize_input=False): the spec symmetrises "
             "its input so that central differences see the same function"),
      # --- lu ------------------------------------------------------------------------------
      S("lu", _all_outputs(lax.linalg.lu), SQUARE + (TALL, WIDE, ((2, 4, 3),), ((2, 3, 4),)),
        dominant(), note="pivots and permutation are integers: no cotangent"),
      S("lu", _all_outputs(jax.scipy.linalg.lu), (((3, 3),), ((4, 3),)), dominant(),
        label="jax.scipy.linalg.lu (P, L, U)"),
      # --- qr ------------------------------------------------------------------------------
      S("qr", _all_outputs(jnp.linalg.qr), SQUARE + (TALL, ((2, 4, 3),)), dominant(),
        label="reduced"),
      S("qr", _all_outputs(functools.partial(jnp.linalg.qr, mode="complete")),
        (((4, 2),), ((5, 3),), ((3, 3),), ((2, 4, 3),)), dominant(), label="complete"),
      S("qr", _all_outputs(jnp.linalg.qr), (WIDE, ((3, 5),), ((2, 2, 4),)), dominant(),
        label="wide"),
      S("qr", _all_outputs(lambda x: lax.linalg.qr(x, pivoting=True, full_matrices=False)),
        (((3, 3),), ((4, 2),)), dominant(), label="pivoting",
        note="the pivots are the same under small perturbations"),
      S("qr", lambda x: jnp.linalg.qr(x, mode="r"), (((4, 3),),), dominant(), label="mode r"),
      # --- eigh ----------------------------------------------------------------------------
      S("eigh", _all_outputs(jnp.linalg.eigh), (((3, 3),), ((1, 1),), ((2, 4, 4),)),
        separated_symmetric(), note="jnp.linalg.eigh symmetrises its input"),
      S("eigh", jnp.linalg.eigvalsh, (((3, 3),), ((2, 4, 4),)), separated_symmetric(),
        label="eigvalsh"),
      S("eigh", _all_outputs(lambda x: lax.linalg.eigh(x, symmetrize_input=False)),
        (((3, 3),),), separated_symmetric(), fd=False, label="symmetrize_input=False",
        note="the primitive reads one triangle, jax.vjp's cotangent fills both: no FD"),
      S("eigh", jnp.linalg.eigvalsh, (((4, 4),),), diagonal((1.0, 1.0, 2.0, 2.0)), fd=False,
        label="degenerate, eigenvalues only",
        note="exactly repeated eigenvalues: finite, no blame reaches the eigenvectors"),
      S("eigh", _all_outputs(jnp.linalg.eigh), (((3, 3),),), diagonal((1.0, 1.0, 3.0)),
        fd=False, label="degenerate, eigenvectors",
        note="1/(wⱼ − wᵢ) = inf at the repeated eigenvalue: NaN where jax.vjp has NaN"),
      # --- svd -----------------------------------------------------------------------------
      S("svd", _all_outputs(functools.partial(jnp.linalg.svd, full_matrices=False)),
        (((3, 3),), ((4, 2),), ((2, 4),), ((2, 3, 4),), ((1, 1),)),
        separated_singular_values(), label="reduced"),
      S("svd", _all_outputs(jnp.linalg.svd), (((3, 3),), ((2, 3, 3),)),
        separated_singular_values(), label="full_matrices, square"),
      S("svd", functools.partial(jnp.linalg.svd, compute_uv=False),
        (((3, 3),), ((4, 2),), ((2, 2, 5),)), separated_singular_values(),
        label="compute_uv=False"),
      S("svd", lambda x: jnp.linalg.norm(x, 2), (((3, 4),),), separated_singular_values(),
        label="norm 2"),
      S("svd", lambda x: jnp.linalg.svd(x, full_matrices=False)[1], (((3, 3),), ((4, 2),)),
        repeated_singular_values(), fd=False,
        label="degenerate, singular values only",
        note="repeated and zero singular values: finite, no blame reaches U or Vᵀ"),
      S("svd", _all_outputs(functools.partial(jnp.linalg.svd, full_matrices=False)),
        (((3, 3),), ((4, 2),)), repeated_singular_values(), fd=False,
        label="degenerate, vectors",
        note="1/(sⱼ² − sᵢ²) and 1/s are inf: non-finite where jax.vjp is"),
      # --- eig -----------------------------------------------------------------------------
      S("eig", _eigvals_projected, (((3, 3),), ((1, 1),), ((2, 4, 4),)),
        separated_eigenvalues(), label="eigenvalues",
        note="the cotangent of the complex eigenvalues is complex; a real matrix's is the "
             "real part of V⁻ᵀ diag(w̄) Vᵀ"),
      S("eig", _eigvals_projected, (((4, 4),),), normal(), fd=False,
        label="complex eigenvalue pairs",
        note="a Gaussian matrix has complex-conjugate eigenvalue pairs; LAPACK's order of "
             "a pair can swap under a perturbation: no FD"),
  ]
  for left, right in ((False, True), (True, False), (True, True)):
    specs.append(S(
        "eig", _eig_projected(left, right), (((3, 3),), ((2, 3, 3),)), separated_eigenvalues(),
        label=f"eigenvectors, left={left} right={right}",
        note="enable_eigvec_derivs=True: LAPACK's normalisation (unit norm, real "
             "largest entry) is differentiated, as by JAX"))
  # --- tridiagonal_solve ------------------------------------------------------------------
  tri_shapes = (((3,), (3,), (3,), (3, 2)), ((1,), (1,), (1,), (1, 1)),
                ((2, 4), (2, 4), (2, 4), (2, 4, 3)))
  specs += [
      S("tridiagonal_solve", lax.linalg.tridiagonal_solve, tri_shapes,
        (normal(), _dominant_diagonal, normal(), normal()),
        note="dl[0] and du[m-1] lie outside the matrix: their cotangent is zero"),
      S("tridiagonal_solve",
        functools.partial(lax.linalg.tridiagonal_solve, perturb_singular=True),
        tri_shapes[:1], (normal(), _dominant_diagonal, normal(), normal()),
        label="perturb_singular", note="a regular matrix: the perturbation never applies"),
  ]
  return specs


def _dominant_diagonal(rng, shape, dt):
  """A tridiagonal system's diagonal of size 3 to 4 (off-diagonals are standard normal)."""
  return (3.0 + rng.uniform(0.0, 1.0, shape)).astype(dt)

