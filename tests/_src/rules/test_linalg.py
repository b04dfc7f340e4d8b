"""Linear algebra through the public API: ``handgrad.grad`` of losses built from
``jnp.linalg`` and ``jax.scipy.linalg`` against ``jax.grad`` (float64 and float32),
a Gaussian-process negative log likelihood, second order (``handgrad.hessian`` and
hand reverse over hand reverse) against ``jax.hessian``, JAX's conventions at singular
matrices and degenerate eigenvalues, complex matrices against ``jax.vjp``, and the
errors JAX raises where it defines no derivative.  The rules' own sweep is in ``handgrad/_src/spec_tables/linalg.py``."""

import warnings

import jax
import jax.numpy as jnp
import jax.scipy as jsp
import numpy as np
import pytest
from jax import lax

import handgrad as hg
from handgrad._src import check
from handgrad._src import specs
from handgrad._src.spec_tables.linalg import dominant, singular
from handgrad._src.second_order import hvp_reverse


pytestmark = pytest.mark.usefixtures("x64")  # tests/conftest.py


def _rng(seed=0):
  return np.random.default_rng(seed)


def _matrix(shape, seed=0, shift=3.0):
  x = _rng(seed).standard_normal(shape)
  n = shape[-1]
  return jnp.asarray(x + shift * np.eye(n) if shape[-2] == n else x)


def _spd(n, seed=0, batch=()):
  b = _rng(seed).standard_normal(batch + (n, n))
  return jnp.asarray(b @ np.swapaxes(b, -1, -2) / n + np.eye(n))


def _weights(shape, seed=1):
  return jnp.asarray(_rng(seed).standard_normal(shape))


def _both(f, *args, argnums=0):
  """``(handgrad.grad, jax.grad)`` in one jitted program."""
  return jax.jit(lambda *a: (hg.grad(f, argnums)(*a), jax.grad(f, argnums)(*a)))(*args)


def _assert_close(f, *args, argnums=0, dtype=jnp.float64):
  args = [jnp.asarray(a, dtype) for a in args]
  hand, ref = _both(f, *args, argnums=argnums)
  report = check.compare("grad", "jax.grad", hand, ref)
  assert report.passed, str(report)
  return hand


def _loss(decomposition, shapes_seed=1):
  """Σ Wₖ·outₖ over the float outputs, with fixed random weights Wₖ."""
  def loss(x):
    outs = decomposition(x)
    outs = outs if isinstance(outs, (tuple, list)) else (outs,)
    outs = [o for o in outs if jnp.issubdtype(o.dtype, jnp.floating)]
    return sum(jnp.sum(_weights(o.shape, shapes_seed + k).astype(o.dtype) * o)
               for k, o in enumerate(outs))
  return loss


def _finite_differences(f, x, eps=1e-6):
  x = np.asarray(x, np.float64)
  out = np.zeros_like(x)
  for i in np.ndindex(x.shape):
    e = np.zeros_like(x)
    e[i] = eps
    out[i] = (f(x + e) - f(x - e)) / (2 * eps)
  return out


# -------------------------------------------------------------------------------------
# Losses through the public API, float64 and float32.

LOSSES = {
    "solve": (lambda a, b: jnp.sum(jnp.sin(jnp.linalg.solve(a, b))), ((4, 4), (4,))),
    "solve, matrix rhs": (lambda a, b: jnp.sum(jnp.linalg.solve(a, b) ** 2), ((4, 4), (4, 2))),
    "solve, batched": (lambda a, b: jnp.sum(jnp.linalg.solve(a, b) ** 2),
                       ((3, 4, 4), (3, 4, 1))),
    "inv": (lambda a, b: jnp.sum(jnp.linalg.inv(a) * b), ((4, 4), (4, 4))),
    "det": (lambda a, b: jnp.linalg.det(a) * jnp.sum(b), ((5, 5), (2,))),
    "det 3x3": (lambda a, b: jnp.linalg.det(a) * jnp.sum(b), ((3, 3), (2,))),
    "slogdet": (lambda a, b: jnp.sum(jnp.linalg.slogdet(a)[1]) + jnp.sum(b), ((2, 4, 4), (1,))),
    "solve_triangular": (lambda a, b: jnp.sum(jsp.linalg.solve_triangular(a, b, lower=True) ** 2),
                         ((4, 4), (4, 3))),
    "solve_triangular trans": (
        lambda a, b: jnp.sum(jsp.linalg.solve_triangular(a, b, trans=1, unit_diagonal=True)),
        ((4, 4), (4,))),
    "expm": (lambda a, b: jnp.sum(jsp.linalg.expm(0.5 * a) * b), ((3, 3), (3, 3))),
    "matrix_power -2": (lambda a, b: jnp.sum(jnp.linalg.matrix_power(a, -2)) + jnp.sum(b),
                        ((3, 3), (1,))),
    "lu_solve": (lambda a, b: jnp.sum(jsp.linalg.lu_solve(jsp.linalg.lu_factor(a), b) ** 2),
                 ((4, 4), (4,))),
    "pinv": (lambda a, b: jnp.sum(jnp.linalg.pinv(a) * b), ((4, 3), (3, 4))),
    "lstsq": (lambda a, b: jnp.sum(jnp.linalg.lstsq(a, b)[0] ** 2), ((5, 3), (5,))),
}


@pytest.mark.parametrize("name", list(LOSSES))
@pytest.mark.parametrize("dtype", [jnp.float64, jnp.float32])
def test_solve_family_matches_jax_grad(name, dtype):
  f, shapes = LOSSES[name]
  a = _matrix(shapes[0])
  b = _weights(shapes[1], seed=2)
  _assert_close(f, a, b, argnums=(0, 1), dtype=dtype)


DECOMPOSITIONS = {
    "cholesky": (jnp.linalg.cholesky, "spd", (4,)),
    "cholesky, batched": (jnp.linalg.cholesky, "spd", (2, 3)),
    "lu": (lax.linalg.lu, "matrix", (4, 4)),
    "lu, wide": (lax.linalg.lu, "matrix", (3, 5)),
    "scipy lu": (jsp.linalg.lu, "matrix", (4, 3)),
    "qr": (jnp.linalg.qr, "matrix", (4, 3)),
    "qr complete": (lambda x: jnp.linalg.qr(x, mode="complete"), "matrix", (5, 3)),
    "qr wide, batched": (jnp.linalg.qr, "matrix", (2, 3, 5)),
    "eigh": (jnp.linalg.eigh, "matrix", (4, 4)),
    "eigh, batched": (jnp.linalg.eigh, "matrix", (3, 3, 3)),
    "eigvalsh": (jnp.linalg.eigvalsh, "matrix", (4, 4)),
    "svd": (lambda x: jnp.linalg.svd(x, full_matrices=False), "matrix", (5, 3)),
    "svd wide, batched": (lambda x: jnp.linalg.svd(x, full_matrices=False), "matrix", (2, 3, 4)),
    "svd square": (jnp.linalg.svd, "matrix", (3, 3)),
    "svdvals": (jnp.linalg.svdvals, "matrix", (3, 5)),
    "norm nuc": (lambda x: jnp.linalg.norm(x, "nuc"), "matrix", (4, 3)),
}


@pytest.mark.parametrize("name", list(DECOMPOSITIONS))
@pytest.mark.parametrize("dtype", [jnp.float64, jnp.float32])
def test_decompositions_match_jax_grad(name, dtype):
  fun, kind, shape = DECOMPOSITIONS[name]
  if kind == "spd":
    x = _spd(shape[-1], batch=shape[:-1])
  else:
    x = _matrix(shape, shift=0.0)
  _assert_close(_loss(fun), x, dtype=dtype)


def _real_part(w, dtype):
  """The real part of ``w`` as a ``convert_element_type`` (numpy warns: on purpose)."""
  with warnings.catch_warnings():
    warnings.simplefilter("ignore", np.exceptions.ComplexWarning)
    return lax.convert_element_type(w, dtype)


def test_eigvals_matches_jax_grad():
  # A real loss of the complex eigenvalues, through both parts of them.
  def loss(x):
    return jnp.sum(_real_part(jnp.linalg.eigvals(x) * (1 + 0.5j), x.dtype) ** 2)
  _assert_close(loss, _matrix((4, 4), shift=0.0))


def test_eigvals_vjp_with_a_complex_cotangent():
  x = _matrix((2, 3, 3), shift=0.0)
  ct = jnp.asarray(_rng(3).standard_normal((2, 3)) + 1j * _rng(4).standard_normal((2, 3)))
  _, hand = hg.vjp(jnp.linalg.eigvals, x)
  _, ref = jax.vjp(jnp.linalg.eigvals, x)
  np.testing.assert_allclose(hand(ct)[0], ref(ct)[0], rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("left,right", [(False, True), (True, False), (True, True)])
@pytest.mark.parametrize("kind", ["real", "complex"])
def test_eig_eigenvector_vjp_matches_jax(left, right, kind):
  # enable_eigvec_derivs=True, on a real and on a complex matrix, complex cotangents.
  rng = _rng(11)
  x = rng.standard_normal((2, 4, 4)) + (1j * rng.standard_normal((2, 4, 4)) if kind == "complex"
                                        else 0)
  f = lambda x: tuple(lax.linalg.eig(x, compute_left_eigenvectors=left,
                                     compute_right_eigenvectors=right, enable_eigvec_derivs=True))
  out, ref = jax.vjp(f, jnp.asarray(x))
  cts = tuple(jnp.asarray(rng.standard_normal(o.shape) + 1j * rng.standard_normal(o.shape))
              for o in out)
  _, hand = hg.vjp(f, jnp.asarray(x))
  np.testing.assert_allclose(hand(cts)[0], ref(cts)[0], rtol=1e-9, atol=1e-9)


def test_gaussian_process_negative_log_likelihood():
  """−log N(y | 0, K + σ²I) with an RBF kernel, through cholesky and solve_triangular,
  differentiated in the kernel's hyperparameters and the data."""
  def nll(params, x, y):
    amplitude, length, noise = jnp.exp(params["log"])
    d2 = jnp.sum((x[:, None, :] - x[None, :, :]) ** 2, -1)
    k = amplitude * jnp.exp(-0.5 * d2 / length ** 2) + (noise + 1e-6) * jnp.eye(x.shape[0])
    chol = jnp.linalg.cholesky(k)
    alpha = jsp.linalg.solve_triangular(chol, y, lower=True)
    return (0.5 * jnp.sum(alpha ** 2) + jnp.sum(jnp.log(jnp.diag(chol)))
            + 0.5 * y.shape[0] * jnp.log(2 * jnp.pi))

  rng = _rng(7)
  x = jnp.asarray(rng.uniform(-2, 2, (12, 2)))
  y = jnp.sin(x[:, 0]) + 0.1 * jnp.asarray(rng.standard_normal(12))
  params = {"log": jnp.log(jnp.array([1.3, 0.7, 0.1]))}
  hand, ref = _both(nll, params, x, y, argnums=(0, 1, 2))
  report = check.compare("gp", "jax.grad", hand, ref)
  assert report.passed, str(report)


# Rules applied inside a custom_jvp's JVP (det, slogdet) or a cond (expm): the sweep's
# checks (float32 and float64 against jax.vjp, float64 finite differences), run here.
NESTED_SPECS = [
    specs.RuleSpec("triangular_solve", jnp.linalg.det, (((4, 4),), ((2, 5, 5),)), dominant(),
                   label="det", note="det (n > 3) is a custom_jvp whose JVP solves with "
                                     "the LU factors"),
    specs.RuleSpec("triangular_solve", jnp.linalg.det, (((4, 4),),), singular(3), fd=False,
                   label="det, singular",
                   note="a corank-1 matrix: JAX's cofactor JVP defines the gradient (the "
                        "adjugate); central differences are not accurate there"),
    specs.RuleSpec("custom_linear_solve", lambda a: jnp.linalg.slogdet(a)[1],
                   (((3, 3),), ((1, 1),), ((2, 4, 4),)), dominant(), label="slogdet",
                   note="the JVP of slogdet solves with the tangent as right-hand side"),
    specs.RuleSpec("custom_linear_solve", lambda a: jsp.linalg.expm(0.5 * a), (((3, 3),),),
                   specs.normal(), label="expm", note="expm's Padé step solves P·X = Q"),
]


@pytest.mark.parametrize("spec,dtype", [pytest.param(s, d, id=f"{s.id}-{d}")
                                        for s in NESTED_SPECS for d in s.dtypes])
def test_nested_rule_specs(spec, dtype):
  reports = specs.check_rule(spec, dtype, finite_differences=True)
  failed = [str(r) for r in reports if not r.passed]
  assert not failed, "\n".join(failed)
  if dtype == "float64" and spec.fd:
    assert "finite differences" in {r.reference for r in reports}


# -------------------------------------------------------------------------------------
# Second order.

SECOND_ORDER = {
    "solve": lambda a: jnp.sum(jnp.linalg.solve(a, jnp.arange(1.0, 4.0)) ** 2),
    "inv": lambda a: jnp.sum(jnp.linalg.inv(a) ** 3),
    "cholesky": lambda a: jnp.sum(jnp.linalg.cholesky(a @ a.T + jnp.eye(3)) ** 3),
    "slogdet": lambda a: jnp.linalg.slogdet(a)[1],
    "det 4x4": lambda a: jnp.linalg.det(jnp.pad(a, ((0, 1), (0, 1))) + jnp.eye(4)),
    "gp": lambda a: (
        jnp.sum(jsp.linalg.solve_triangular(
            jnp.linalg.cholesky(a @ a.T + jnp.eye(3)), jnp.ones(3), lower=True) ** 2)
        + 2 * jnp.sum(jnp.log(jnp.diag(jnp.linalg.cholesky(a @ a.T + jnp.eye(3)))))),
    "eigh": lambda a: jnp.sum(jnp.linalg.eigh(a)[1][:, 0] ** 4) + jnp.sum(
        jnp.linalg.eigvalsh(a) ** 3),
    "svd": lambda a: jnp.sum(jnp.linalg.svd(a)[0][:, 0] ** 4) + jnp.sum(jnp.linalg.svd(a)[1] ** 3),
    "qr": lambda a: jnp.sum(jnp.linalg.qr(a)[1] ** 3) + jnp.sum(jnp.linalg.qr(a)[0][0] ** 3),
    "lu": lambda a: jnp.sum(lax.linalg.lu(a)[0] ** 3),
    "solve_triangular": lambda a: jnp.sum(jsp.linalg.solve_triangular(
        a, jnp.arange(1.0, 4.0), lower=True, trans=1) ** 2),
}


@pytest.mark.parametrize("name", list(SECOND_ORDER))
def test_hessian_matches_jax_hessian(name):
  f = SECOND_ORDER[name]
  a = _matrix((3, 3))
  hand, ref = jax.jit(lambda a: (hg.hessian(f)(a), jax.hessian(f)(a)))(a)
  report = check.compare(name, "jax.hessian", hand, ref)
  assert report.passed, str(report)


@pytest.mark.parametrize("name", ["solve", "cholesky", "gp", "eigh", "lu"])
def test_hand_reverse_over_hand_reverse(name):
  # No JAX autodiff at all: the backward pass of custom_linear_solve is itself a
  # custom_linear_solve (of the transposed system), differentiated by hand again.
  f = SECOND_ORDER[name]
  a, v = _matrix((3, 3)), _weights((3, 3), seed=5)
  hand = jax.jit(lambda a, v: hvp_reverse(f, a, v))(a, v)
  ref = jax.jvp(jax.grad(f), (a,), (v,))[1]
  np.testing.assert_allclose(hand, ref, rtol=1e-9, atol=1e-9)


# -------------------------------------------------------------------------------------
# Solvers given by the user.

def _cg(matvec, b, iters):
  def body(state):
    x, r, p, k = state
    ap = matvec(p)
    alpha = (r @ r) / (p @ ap)
    x, r_new = x + alpha * p, r - alpha * ap
    return x, r_new, r_new + (r_new @ r_new) / (r @ r) * p, k + 1
  return lax.while_loop(lambda s: s[-1] < iters, body, (jnp.zeros_like(b), b, b, 0))[0]


def test_custom_linear_solve_never_differentiates_the_solver():
  # A while_loop solver: reverse mode cannot differentiate it, the implicit rule need not.
  def loss(a, b):
    x = lax.custom_linear_solve(lambda x: a @ x, b, lambda mv, r: _cg(mv, r, 20),
                                symmetric=True)
    return jnp.sum(jnp.cos(x))
  a, b = _spd(4), _weights((4,))
  hand, ref = _both(loss, a, b, argnums=(0, 1))
  for h, r in zip(hand, ref):
    np.testing.assert_allclose(h, r, rtol=1e-9, atol=1e-9)
  # ... and the result is the derivative of the exact solve.
  exact = jax.grad(lambda a, b: jnp.sum(jnp.cos(jnp.linalg.solve(a, b))), (0, 1))(a, b)
  for h, e in zip(hand, exact):
    np.testing.assert_allclose(h, e, rtol=1e-7, atol=1e-8)


def test_custom_linear_solve_with_a_pytree_rhs_and_nonlinear_matvec_constants():
  def loss(p, b):
    matvec = lambda x: {"u": p["d"] * x["u"] + p["c"] * x["v"], "v": p["c"] * x["u"] + 2 * x["v"]}
    def solve(mv, r):
      det = p["d"] * 2 - p["c"] ** 2
      return {"u": (2 * r["u"] - p["c"] * r["v"]) / det,
              "v": (p["d"] * r["v"] - p["c"] * r["u"]) / det}
    x = lax.custom_linear_solve(matvec, b, solve, symmetric=True)
    return jnp.sum(x["u"] ** 2 + jnp.sin(x["v"]))
  p = {"d": jnp.array([3.0, 4.0]), "c": jnp.array([0.5, -1.0])}
  b = {"u": jnp.array([1.0, 2.0]), "v": jnp.array([-0.5, 0.3])}
  hand, ref = _both(loss, p, b, argnums=(0, 1))
  report = check.compare("pytree solve", "jax.grad", hand, ref)
  assert report.passed, str(report)


def test_custom_linear_solve_without_transpose_solve_raises_like_jax():
  def loss(a, b):
    return jnp.sum(lax.custom_linear_solve(lambda x: a @ x, b,
                                           lambda mv, r: jnp.linalg.solve(a, r)))
  a, b = _matrix((3, 3)), _weights((3,))
  with pytest.raises(TypeError, match="transpose_solve required"):
    jax.grad(loss)(a, b)
  with pytest.raises(TypeError, match="transpose_solve required"):
    hg.grad(loss)(a, b)


# -------------------------------------------------------------------------------------
# Singular matrices and degenerate spectra: JAX's conventions.

def _same_finiteness(f, x):
  hand, ref = _both(f, x)
  report = check.compare("edge", "jax.grad", hand, ref)
  assert report.passed, str(report)
  return np.asarray(ref)


def test_det_of_singular_matrices_is_the_adjugate():
  corank1 = jnp.array([[1.0, 2, 3, 4], [2, 4, 6, 8], [0, 1, 0, 1], [1, 0, 1, 0]])
  g = _same_finiteness(jnp.linalg.det, corank1)
  assert np.all(np.isfinite(g)) and np.any(g != 0)
  corank2 = jnp.zeros((4, 4)).at[0, 0].set(1.0).at[1, 1].set(2.0)
  assert np.all(np.isfinite(_same_finiteness(jnp.linalg.det, corank2)))


def test_solve_and_slogdet_of_a_singular_matrix_are_not_finite_as_in_jax():
  s = jnp.array([[1.0, 2.0], [2.0, 4.0]])
  assert not np.all(np.isfinite(_same_finiteness(
      lambda a: jnp.sum(jnp.linalg.solve(a, jnp.ones(2))), s)))
  assert not np.all(np.isfinite(_same_finiteness(lambda a: jnp.linalg.slogdet(a)[1], s)))


def test_degenerate_eigenvalues_follow_jax():
  identity, d = jnp.eye(4), jnp.diag(jnp.array([1.0, 1.0, 2.0, 3.0]))
  # Only eigenvalues: finite (no blame reaches the eigenvectors).
  assert np.all(np.isfinite(_same_finiteness(lambda a: jnp.sum(jnp.linalg.eigvalsh(a) ** 2),
                                             identity)))
  assert np.all(np.isfinite(_same_finiteness(lambda a: jnp.sum(jnp.linalg.eigh(a)[0] ** 2), d)))
  # An eigenvector (even of a simple eigenvalue): 1/(w₁ − w₀) = inf, NaN as in JAX.
  g = _same_finiteness(lambda a: jnp.sum(jnp.linalg.eigh(a)[1][:, 3] * jnp.arange(4.0)), d)
  assert not np.all(np.isfinite(g))


def test_degenerate_and_zero_singular_values_follow_jax():
  rank1 = jnp.zeros((4, 3)).at[0, 0].set(1.0)
  assert np.all(np.isfinite(_same_finiteness(
      lambda a: jnp.sum(jnp.linalg.svd(a, full_matrices=False)[1]), rank1)))
  assert np.all(np.isfinite(_same_finiteness(lambda a: jnp.sum(jnp.linalg.svdvals(a)),
                                             jnp.eye(3))))
  g = _same_finiteness(lambda a: jnp.sum(jnp.linalg.svd(a)[0] * jnp.arange(3.0)), jnp.eye(3))
  assert not np.all(np.isfinite(g))


def test_cholesky_of_a_matrix_that_is_not_positive_definite_is_nan_as_in_jax():
  g = _same_finiteness(lambda a: jnp.sum(jnp.linalg.cholesky(a)), -jnp.eye(3))
  assert np.all(np.isnan(g))


# -------------------------------------------------------------------------------------
# Where JAX's own JVP and the math part: pivoted QR of a wide matrix.

def test_pivoted_qr_of_a_wide_matrix_agrees_with_finite_differences():
  # jax 0.10's JVP reads A₂ from the unpivoted columns; the rule uses A[:, p].
  x = _matrix((3, 5), shift=0.0)
  loss = _loss(lambda x: lax.linalg.qr(x, pivoting=True, full_matrices=False)[:2])
  hand = hg.grad(loss)(x)
  numeric = _finite_differences(lambda x: float(loss(jnp.asarray(x))), x)
  np.testing.assert_allclose(hand, numeric, rtol=1e-6, atol=1e-7)


def test_qr_complete_of_a_tall_matrix_agrees_with_finite_differences():
  x = _matrix((5, 2), shift=0.0)
  loss = _loss(lambda x: jnp.linalg.qr(x, mode="complete"))
  numeric = _finite_differences(lambda x: float(loss(jnp.asarray(x))), x)
  np.testing.assert_allclose(hg.grad(loss)(x), numeric, rtol=1e-6, atol=1e-7)


# -------------------------------------------------------------------------------------
# Transformations of the hand gradient.

def test_jit_and_vmap_of_the_hand_gradient():
  f = lambda a: jnp.sum(jnp.linalg.svd(a, full_matrices=False)[0][:, 0] ** 2) + jnp.sum(
      jnp.linalg.inv(a))
  batch = jnp.stack([_matrix((3, 3), seed=k) for k in range(3)])
  hand = jax.jit(jax.vmap(hg.grad(f)))(batch)
  ref = jax.vmap(jax.grad(f))(batch)
  np.testing.assert_allclose(hand, ref, rtol=1e-9, atol=1e-9)


# -------------------------------------------------------------------------------------
# Errors: where JAX defines no derivative, and what the rules refuse.

def test_svd_vectors_with_full_matrices_of_a_non_square_matrix_raise_like_jax():
  loss = lambda a: jnp.sum(jnp.linalg.svd(a, full_matrices=True)[0])
  a = _matrix((4, 3), shift=0.0)
  with pytest.raises(NotImplementedError, match="full matrices"):
    jax.grad(loss)(a)
  with pytest.raises(NotImplementedError, match="full matrices"):
    hg.grad(loss)(a)


def test_eig_eigenvectors_raise_like_jax():
  def loss(a):
    w, v = jnp.linalg.eig(a)
    return jnp.sum(_real_part(w, a.dtype))
  a = _matrix((3, 3), shift=0.0)
  with pytest.raises(NotImplementedError, match="enable_eigvec_derivs"):
    jax.grad(loss)(a)
  with pytest.raises(NotImplementedError, match="enable_eigvec_derivs"):
    hg.grad(loss)(a)


def _rule_call(name, args, outs, **params):
  g = [jnp.zeros_like(o) for o in outs]
  return hg.registry[name](g, outs, *args, **params)


def test_eigh_of_a_partial_spectrum_raises():
  x = jnp.eye(3)
  outs = list(lax.linalg.eigh(x))
  with pytest.raises(NotImplementedError, match="subset_by_index"):
    _rule_call("eigh", [x], outs, lower=True, sort_eigenvalues=True,
               subset_by_index=(0, 2), algorithm=None)


def test_svd_vectors_of_a_partial_spectrum_raise():
  x = jnp.eye(3)
  u, s, vt = lax.linalg.svd(x, full_matrices=False)
  with pytest.raises(NotImplementedError, match="subset_by_index"):
    _rule_call("svd", [x], [s, u, vt], full_matrices=False, compute_uv=True,
               subset_by_index=(0, 2), algorithm=None)


def test_unknown_parameters_are_refused():
  x = _spd(3)
  with pytest.raises(NotImplementedError, match="new_param"):
    hg.registry["cholesky"](x, x, x, new_param=1)


def _complex(shape, seed):
  rng = _rng(seed)
  return jnp.asarray(rng.standard_normal(shape) + 1j * rng.standard_normal(shape))


def _hermitian(n, seed, batch=()):
  b = _complex(batch + (n, n), seed)
  return b @ jnp.conj(jnp.swapaxes(b, -1, -2)) / n + jnp.eye(n)


COMPLEX = {
    "cholesky": (lambda x: lax.linalg.cholesky(x, symmetrize_input=False),
                 lambda: (_hermitian(4, 0, (2,)),)),
    "lu": (lambda x: lax.linalg.lu(x)[0], lambda: (_complex((2, 4, 3), 1),)),
    "qr": (lambda x: tuple(lax.linalg.qr(x, full_matrices=False)), lambda: (_complex((5, 3), 2),)),
    "qr complete": (lambda x: tuple(lax.linalg.qr(x)), lambda: (_complex((2, 5, 3), 3),)),
    "qr wide": (lambda x: tuple(lax.linalg.qr(x)), lambda: (_complex((3, 5), 4),)),
    "qr pivoting": (lambda x: tuple(lax.linalg.qr(x, pivoting=True, full_matrices=False))[:2],
                    lambda: (_complex((5, 3), 5),)),
    "eigh": (lambda x: tuple(lax.linalg.eigh(x, symmetrize_input=False)),
             lambda: (_hermitian(4, 6, (2,)),)),
    "svd": (lambda x: tuple(lax.linalg.svd(x, full_matrices=False)), lambda: (_complex((5, 3), 7),)),
    "svd wide": (lambda x: tuple(lax.linalg.svd(x, full_matrices=False)),
                 lambda: (_complex((2, 3, 5), 8),)),
    "svdvals": (lambda x: lax.linalg.svd(x, compute_uv=False), lambda: (_complex((3, 4), 9),)),
    "solve": (jnp.linalg.solve, lambda: (_complex((4, 4), 10) + 4 * jnp.eye(4),
                                          _complex((4, 2), 11))),
    "triangular_solve": (
        lambda a, b: lax.linalg.triangular_solve(a, b, left_side=True, lower=True,
                                                 transpose_a=True, conjugate_a=True),
        lambda: (_complex((3, 3), 12) + 3 * jnp.eye(3), _complex((3, 2), 13))),
    "triangular_solve right": (
        lambda a, b: lax.linalg.triangular_solve(a, b, left_side=False, lower=False,
                                                 conjugate_a=True, unit_diagonal=True),
        lambda: (_complex((3, 3), 14), _complex((2, 3), 15))),
    "eigvals": (jnp.linalg.eigvals, lambda: (_complex((3, 3), 16),)),
}


@pytest.mark.parametrize("name", list(COMPLEX))
def test_complex_matrices_match_jax_vjp(name):
  # Complex inputs and complex cotangents; JAX pairs them without conjugation.
  f, make = COMPLEX[name]
  args = make()
  out, ref = jax.vjp(f, *args)
  rng = _rng(99)
  cts = jax.tree.map(lambda o: jnp.asarray(
      rng.standard_normal(o.shape) + (1j * rng.standard_normal(o.shape)
                                      if jnp.iscomplexobj(o) else 0)).astype(o.dtype), out)
  _, hand = hg.vjp(f, *args)
  for h, r in zip(hand(cts), ref(cts)):
    assert h.dtype == r.dtype
    np.testing.assert_allclose(h, r, rtol=1e-9, atol=1e-9)
