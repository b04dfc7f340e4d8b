"""Special functions, as far as JAX differentiates them.

Where JAX defines no derivative (``polygamma`` in its order ``m``, the incomplete beta
function in ``a`` and ``b``) the rule returns :class:`NotDifferentiable` for that
argument (see :mod:`handgrad._src.registry`): harmless while no gradient is asked there, and the engine raises a
``RuleError`` (a ``ValueError``, the error ``jax.grad`` raises) naming the rule and the
argument when one is.  Primitives JAX gives no derivative at all (``zeta``,
``igamma_grad_a``, and so second derivatives of ``igamma`` in ``a`` and of gamma
samples) have no rule: handgrad's missing-rule error is a ``NotImplementedError``, as
JAX's is.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
from jax import lax

from handgrad._src.registry import NotDifferentiable, defvjp, defvjp_each, defvjp_unary
from handgrad._src.rules._common import like


# d lgamma(x) = ψ(x)·g
defvjp_unary("lgamma", lambda g, ans, x: g * lax.digamma(x))
# d ψ(x) = ψ⁽¹⁾(x)·g
defvjp_unary("digamma", lambda g, ans, x: g * lax.polygamma(like(1, x), x))
# d ψ⁽ᵐ⁾(x) = ψ⁽ᵐ⁺¹⁾(x)·g;  none in m (JAX: "polygamma gradient with respect to m is not
# supported").
defvjp("polygamma", lambda g, ans, m, x: (
    NotDifferentiable("polygamma gradient with respect to m is not supported"),
    g * lax.polygamma(m + like(1, m), x)))


# P(a, x) = γ(a, x)/Γ(a), the regularized lower incomplete gamma function:
#   dx = g·e^(−x)·x^(a−1)/Γ(a)  (written as JAX writes it, exp(−x + (a−1)·log x − lgamma a)),
#   da = g·∂P/∂a, JAX's series / continued fraction (igamma_grad_a).
# Q = 1 − P (igammac) has the negated cotangents.
def _igamma_dx(g, ans, a, x):
  return g * lax.exp(-x + (a - like(1, a)) * lax.log(x) - lax.lgamma(a))


def _igamma_da(g, ans, a, x):
  return g * lax.igamma_grad_a(a, x)


defvjp_each("igamma", _igamma_da, _igamma_dx)
defvjp_each("igammac", lambda *args: -_igamma_da(*args), lambda *args: -_igamma_dx(*args))


# I(a, b, x), the regularized incomplete beta function:
#   dx = g·(1−x)^(b−1)·x^(a−1)/B(a, b);  none in a and b (JAX: "Betainc gradient with
#   respect to a and b not supported").
@defvjp("regularized_incomplete_beta")
def _betainc_vjp(g, ans, a, b, x):
  lbeta = lax.lgamma(a) + lax.lgamma(b) - lax.lgamma(a + b)
  dx = g * lax.exp((b - like(1, b)) * lax.log1p(-x) + (a - like(1, a)) * lax.log(x) - lbeta)
  why = NotDifferentiable("Betainc gradient with respect to a and b not supported")
  return why, why, dx


# e^(−|x|)·I₀(x):  dx = g·(i1e(x) − sign(x)·i0e(x))
defvjp_unary("bessel_i0e", lambda g, ans, x: g * (lax.bessel_i1e(x) - lax.sign(x) * ans))


# e^(−|x|)·I₁(x):  dx = g·(i0e(x) − i1e(x)·(sign(x) + 1/x)), and ½ where |x| ≤ eps, where
# the 1/x term cannot be evaluated (JAX's convention; the limit at 0 is ½).
def _bessel_i1e_vjp(g, ans, x):
  eps = like(jnp.finfo(lax.dtype(x)).eps, x)
  not_tiny = lax.abs(x) > eps
  safe_x = lax.select(not_tiny, x, lax.full_like(x, eps))
  slope = lax.bessel_i0e(safe_x) - ans * (lax.sign(safe_x) + lax.integer_pow(safe_x, -1))
  return g * lax.select(not_tiny, slope, lax.full_like(x, 0.5))


defvjp_unary("bessel_i1e", _bessel_i1e_vjp)


# z ~ Gamma(a, 1) by reparameterisation (jax.random.gamma):  da = g·∂z/∂a, the implicit
# derivative −(∂F/∂a)/(∂F/∂z) of the CDF F(z; a) held fixed (lax.random_gamma_grad,
# elementwise).  With log_space the sample is log z: da = g·(∂z/∂a)/z, with z = e^ans
# raised to the smallest normal number where it underflows to 0, as JAX does.
# The key gets no gradient.
@defvjp("random_gamma")
def _random_gamma_vjp(g, ans, key, a, *, log_space):
  if not log_space:
    return None, g * lax.random_gamma_grad(a, ans)
  z = lax.exp(ans)
  z = lax.select(z == like(0, z), lax.full_like(z, np.finfo(lax.dtype(z)).tiny), z)
  return None, g * (lax.random_gamma_grad(a, z) / z)
