"""Complex numbers under JAX's convention: the VJP is the transpose of the R-linear
JVP (no conjugation for holomorphic functions), and ``handgrad.grad`` of a real loss of
complex parameters equals ``jax.grad``.  The per-rule sweep (complex64/complex128
columns) is in ``handgrad/_src/spec_tables/complex.py``."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

import handgrad as hg
from handgrad._src import check
from handgrad._src import specs

C64, C128 = "complex64", "complex128"


def _x64(dtype):
  return jax.enable_x64(dtype == C128)


def _complex(rng, shape, dtype):
  return (rng.standard_normal(shape) + 1j * rng.standard_normal(shape)).astype(dtype)


def _numerical_vjp(f, x, ct, eps=1e-6):
  """``∂p/∂Re x − i·∂p/∂Im x`` for ``p = Re Σ f(x)·ct``, by central differences."""
  p = lambda x: float(np.real(np.sum(np.asarray(f(x)) * ct)))
  out = np.zeros(x.shape, np.complex128)
  for k in np.ndindex(x.shape):
    for step, part in ((eps, 1.0), (1j * eps, -1j)):
      e = np.zeros(x.shape, np.complex128)
      e[k] = step
      out[k] += part * (p(x + e) - p(x - e)) / (2 * eps)
  return out


def _loss(z, w):
  # A real loss of complex parameters through holomorphic and non-holomorphic maps.
  h = jnp.sin(z) * w + z ** 2 / 3 - jnp.conj(w) * jnp.exp(z / 4)
  u = lax.complex(jnp.real(z), jnp.broadcast_to(jnp.abs(w), z.shape)) * jnp.conj(z)
  return jnp.sum(jnp.abs(h) ** 2) + jnp.sum(jnp.real(h) * jnp.imag(z)) + jnp.sum(u.real)


@pytest.mark.parametrize("dtype", [C64, C128])
def test_grad_of_a_real_loss_of_complex_parameters_equals_jax_grad(dtype):
  rng = np.random.default_rng(0)
  with _x64(dtype):
    z, w = _complex(rng, (3, 2), dtype), _complex(rng, (2,), dtype)
    both = jax.jit(lambda z, w: (hg.grad(_loss, (0, 1))(z, w), jax.grad(_loss, (0, 1))(z, w)))
    hand, ref = both(z, w)
  assert all(h.dtype == np.dtype(dtype) for h in hand)
  report = check.compare("complex loss", "jax.grad", hand, ref)
  assert report.passed, str(report)


def test_complex_loss_gradient_is_dre_minus_i_dim():
  # JAX's convention made concrete: for L(z) = |z|² = x² + y² the gradient is
  # ∂L/∂Re z − i·∂L/∂Im z = 2x − 2iy = 2·conj(z).
  z = jnp.asarray([1.0 + 2.0j, -0.5 + 0.25j], jnp.complex64)
  g = hg.grad(lambda z: jnp.sum(jnp.abs(z) ** 2))(z)
  np.testing.assert_allclose(np.asarray(g), 2 * np.conj(np.asarray(z)), rtol=1e-6)
  np.testing.assert_allclose(np.asarray(g),
                             np.asarray(jax.grad(lambda z: jnp.sum(jnp.abs(z) ** 2))(z)),
                             rtol=1e-6)


@pytest.mark.parametrize("dtype", [C64, C128])
def test_abs_of_complex_zero_is_jax_s(dtype):
  # |x| has no derivative at 0; JAX divides by |x| with zeros replaced by ones: 0.
  with _x64(dtype):
    x = np.asarray([0.0, 0.0 + 0.0j, 3.0 - 4.0j], dtype)
    f = lambda x: jnp.sum(lax.abs(x))
    hand, ref = jax.jit(lambda x: (hg.grad(f)(x), jax.grad(f)(x)))(x)
  np.testing.assert_array_equal(np.asarray(hand), np.asarray(ref))
  np.testing.assert_array_equal(np.asarray(hand)[:2], [0, 0])


def test_complex_sign_against_finite_differences():
  # sign(x) = x/|x| is smooth away from 0.  jax ≤ 0.11 gives it a zero derivative on
  # complex operands; handgrad computes the derivative on every release.
  rng = np.random.default_rng(1)
  with jax.enable_x64(True):
    x = _complex(rng, (4,), C128)
    ct = _complex(rng, (4,), C128)
    _, vjp = hg.vjp(lax.sign, x)
    (hand,) = vjp(ct)
    numeric = _numerical_vjp(lambda v: lax.sign(jnp.asarray(v)), x, ct)
    report = check.compare("sign complex", "finite differences", hand, numeric,
                           rtol=specs.FD_RTOL, atol=specs.FD_ATOL)
    assert report.passed, str(report)
    if jax.__version_info__ >= (0, 12):
      (ref,) = jax.vjp(lax.sign, x)[1](ct)
      assert check.compare("sign complex", "jax.vjp", hand, ref).passed
    # sign(0) = 0 gets no blame, as in JAX.
    (at_zero,) = hg.vjp(lax.sign, jnp.zeros(2, C128))[1](ct[:2])
    np.testing.assert_array_equal(np.asarray(at_zero), [0, 0])


def test_real_sign_has_zero_derivative():
  x = jnp.asarray([-1.0, 0.0, 2.0])
  np.testing.assert_array_equal(np.asarray(hg.grad(lambda x: jnp.sum(jnp.sign(x) * x))(x)),
                                np.asarray(jax.grad(lambda x: jnp.sum(jnp.sign(x) * x))(x)))


@pytest.mark.parametrize("f", [lax.real, lax.imag, lax.conj, jnp.abs,
                               lambda z: lax.complex(lax.imag(z), lax.real(z))],
                         ids=["real", "imag", "conj", "abs", "swap"])
def test_non_holomorphic_maps_against_finite_differences(f):
  rng = np.random.default_rng(2)
  with jax.enable_x64(True):
    x = _complex(rng, (3,), C128)
    complex_out = jnp.issubdtype(jax.eval_shape(f, x).dtype, jnp.complexfloating)
    ct = _complex(rng, (3,), C128) if complex_out else rng.standard_normal(3)
    (hand,) = hg.vjp(f, x)[1](ct)
    numeric = _numerical_vjp(lambda v: f(jnp.asarray(v)), x, ct)
  report = check.compare("map", "finite differences", hand, numeric,
                         rtol=specs.FD_RTOL, atol=specs.FD_ATOL)
  assert report.passed, str(report)


def test_complex_samplers_draw_both_parts():
  rng = np.random.default_rng(0)
  for sampler in (specs.normal(), specs.uniform(0.1, 3.0), specs.away_from_zero()):
    x = sampler(rng, (50,), np.dtype(C64))
    assert x.dtype == np.complex64 and np.all(x.imag != 0) and np.all(x.real != 0)
  x = specs.uniform(0.1, 3.0)(rng, (50,), np.dtype(C128))
  assert np.all((x.real >= 0.1) & (x.real < 3.0) & (x.imag >= 0.1) & (x.imag < 3.0))


def test_complex_finite_differences_catch_a_conjugated_rule():
  # A rule that conjugates (the other convention) must fail the sweep's complex checks.
  spec = next(s for s in specs.all_specs() if s.id == "sin[complex]")
  good = hg.registry["sin"]
  hg.defvjp("sin", lambda g, ans, x, accuracy=None: (g * jnp.conj(jnp.cos(x)),))
  try:
    reports = specs.check_rule(spec, C128, finite_differences=True)
  finally:
    hg.defvjp("sin", good)
  failed = {r.reference for r in reports if not r.passed}
  assert failed == {"jax.vjp", "finite differences"}
