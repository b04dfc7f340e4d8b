"""Elementwise arithmetic, comparisons, selection and dtype conversion.

Each rule follows JAX's convention at its kinks and ties exactly, so that "equals
``jax.grad``" holds everywhere: ``max``/``min`` split a tie evenly between the two
operands; ``abs'(0) = +1``; ``sign`` of a real operand, ``floor``, ``ceil`` and
``round`` have zero derivative; comparisons carry no gradient.

On complex operands the holomorphic rules (``add`` … ``div``, powers, ``polynomial``)
are ``g · f'(x)`` with no conjugation, JAX's convention; ``abs`` and ``sign`` are not
holomorphic and transpose their R-linear JVPs (see each rule).
"""

from __future__ import annotations

import jax.numpy as jnp
from jax import lax

from handgrad._src import jaxpr
from handgrad._src.registry import defvjp, defvjp_each, defvjp_unary
from handgrad._src.rules import _sharding
from handgrad._src.rules._common import (
    broadcast_to, is_complex, like, replace_zero, sum_to, zeros_like)

# z = x + y:  dx = g,  dy = g   (each summed back over its broadcast dimensions)
defvjp_each("add", lambda g, ans, x, y: g, lambda g, ans, x, y: g)
defvjp_each("add_any", lambda g, ans, x, y: g, lambda g, ans, x, y: g)
# z = x - y:  dx = g,  dy = -g
defvjp_each("sub", lambda g, ans, x, y: g, lambda g, ans, x, y: -g)
# z = -x:  dx = -g
defvjp_unary("neg", lambda g, ans, x: -g)


# z = x * y:  dx = g * y,  dy = x * g.  With ``out_dtype`` (z wider than x and y, e.g.
# bfloat16 operands, float32 product) each factor is widened to g's dtype and the
# product cast back to the operand's dtype by sum_to.
def _as_g(v, g):
  return lax.convert_element_type(v, g.dtype)


defvjp_each("mul", lambda g, ans, x, y, out_dtype=None: g * _as_g(y, g),
            lambda g, ans, x, y, out_dtype=None: _as_g(x, g) * g)
# z = x / y:  dx = g / y,  dy = -g * x / y²
defvjp_each("div", lambda g, ans, x, y: g / y,
            lambda g, ans, x, y: -g * x * lax.integer_pow(y, -2))


# z = max(x, y):  dx = g·[x == z]·(½ if y == z too else 1); likewise dy.
# On a tie the blame is split evenly, as in JAX.  Note jax.nn.relu is not max(x, 0):
# it is a custom_jvp with relu'(0) = 0, handled by the engine from its own JVP rule.
def _balanced_eq(x, z, y):
  one, zero, two = like(1, z), like(0, z), like(2, z)
  return lax.div(lax.select(lax.eq(x, z), lax.full_like(z, one), lax.full_like(z, zero)),
                 lax.select(lax.eq(y, z), lax.full_like(z, two), lax.full_like(z, one)))


def _minmax_vjp(g, ans, x, y):
  return sum_to(g * _balanced_eq(x, ans, y), x), sum_to(g * _balanced_eq(y, ans, x), y)


defvjp("max", _minmax_vjp)
defvjp("min", _minmax_vjp)


# z = |x|, real x:  dx = g·(+1 if x >= 0 else -1)   (JAX takes the +1 branch at 0).
# z = |x|, complex x (z real):  dz = Re(conj(x)/|x| · dx), whose transpose is
# dx = g·conj(x)/|x|; at x = 0 JAX divides by |x| with zeros replaced by ones, so
# dx = 0 there.
def _abs_vjp(g, ans, x):
  if is_complex(x):
    return lax.convert_element_type(g, x.dtype) * (
        lax.conj(x) / replace_zero(lax.convert_element_type(ans, x.dtype)))
  return lax.select(x >= 0, g, -g)


defvjp_unary("abs", _abs_vjp)


# z = sign(x), real x: piecewise constant, zero derivative (also at 0, as in JAX).
# z = sign(x) = e^{iθ}, complex x:  dz = i·z·dθ with dθ = Im(conj(z)·dx)/|x|, whose
# transpose is dx = i·Im(g·z)/|x| · conj(z); zero at x = 0 (|x| replaced by 1, z = 0).
# This is the derivative of jax ≥ 0.12; earlier JAX releases give complex sign a zero
# derivative, which is not its derivative.
def _sign_vjp(g, ans, x):
  if not is_complex(x):
    return None
  s = lax.imag(g * ans) / replace_zero(lax.abs(x))
  return lax.complex(zeros_like(s), s) * lax.conj(ans)


defvjp_unary("sign", _sign_vjp)
# z = x²:  dx = 2x·g
defvjp_unary("square", lambda g, ans, x: g * (like(2, x) * x))


# z = xⁿ (integer n):  dx = n·xⁿ⁻¹·g;  n = 0 gives zero.
def _integer_pow_vjp(g, ans, x, *, y):
  if y == 0:
    return zeros_like(g)
  if y == 1:
    return g
  if y == 2:
    return g * (like(2, x) * x)
  return g * (like(y, x) * lax.integer_pow(x, y - 1))


defvjp_unary("integer_pow", _integer_pow_vjp)


# z = x^y:  dx = y·x^(y-1)·g  (zero where an integer y is 0);  dy = log(x)·z·g with
# log(0) replaced by log(1) = 0, as JAX does, so 0^y has a finite y-derivative.
def _pow_dx(g, ans, x, y):
  shape, where = g.shape, _sharding.of(g)
  xb = broadcast_to(x, shape, where)
  yb = broadcast_to(lax.convert_element_type(y, lax.dtype(x)), shape, where)
  jac = yb * lax.pow(xb, yb - like(1, yb))
  if jnp.issubdtype(lax.dtype(y), jnp.integer):
    jac = lax.select(yb == like(0, yb), zeros_like(yb), jac)
  return g * jac


def _pow_dy(g, ans, x, y):
  if not jnp.issubdtype(lax.dtype(y), jnp.inexact):
    return None
  return g * (lax.log(replace_zero(broadcast_to(x, g.shape, _sharding.of(g)))) * ans)


defvjp_each("pow", _pow_dx, _pow_dy)

# z = x mod y (truncated):  dx = g,  dy = -g·sign(x/y)·floor(|x/y|)
defvjp_each("rem", lambda g, ans, x, y: g,
            lambda g, ans, x, y: -g * (lax.sign(x / y) * lax.floor(lax.abs(x / y))))


# z = Σₖ cₖ·xᵏ (Horner, coefficients from the constant term up; jax ≥ 0.12):
#   dx = g·Σₖ k·cₖ·xᵏ⁻¹ (the derivative, a polynomial one degree lower, as JAX writes it),
#   dcₖ = g·xᵏ (each summed back over its broadcast dimensions).
# The derivative is holomorphic: no conjugation for complex operands.  ``unroll`` only
# selects how the forward pass is lowered; the derivative polynomial gets the same.
def _polynomial_vjp(g, ans, x, *coeffs, unroll=None):
  kw = {} if unroll is None else {"unroll": unroll}
  slopes = [like(k, c) * c for k, c in enumerate(coeffs[1:], 1)]
  dx = g * lax.polynomial(x, slopes, **kw) if slopes else None
  dcoeffs, xk = [], g
  for k, c in enumerate(coeffs):
    dcoeffs.append(sum_to(xk, c))
    if k + 1 < len(coeffs):
      xk = xk * x
  return (None if dx is None else sum_to(dx, x), *dcoeffs)


if jaxpr.has_primitive("polynomial"):
  defvjp("polynomial", _polynomial_vjp)

# Piecewise-constant functions: zero derivative everywhere JAX defines one.
# (nextafter has no rule: JAX defines no derivative for it, and x ↦ nextafter(x, y) is
# x moved by one ulp, whose slope is 1, not 0; a missing rule fails loudly instead.)
for _name in ("floor", "ceil", "round", "is_finite"):
  defvjp(_name, lambda g, ans, *args, **params: (None,) * len(args))

# Comparisons and logic have boolean outputs: no gradient flows through them.
for _name in ("eq", "ne", "lt", "le", "gt", "ge", "not", "and", "or", "xor",
              "argmax", "argmin", "iota", "population_count"):
  defvjp(_name, lambda g, ans, *args, **params: (None,) * len(args))


# z = select_n(which, c0, c1, ...):  dc_k = g where which == k, else 0.
@defvjp("select_n")
def _select_n_vjp(g, ans, which, *cases):
  zero = lax.full_like(g, 0)
  out = []
  for k, c in enumerate(cases):
    if len(cases) == 2 and lax.dtype(which) == bool:
      picked = lax.select(which, g, zero) if k == 1 else lax.select(which, zero, g)
    else:
      picked = lax.select(lax.eq(which, lax.full_like(which, k)), g, zero)
    out.append(sum_to(picked, c))
  return (None, *out)


# z = clamp(lo, x, hi):  dx = g inside (lo, hi);  dlo = g where lo > x (and lo < hi);
# dhi = g where hi < x.  Exactly JAX's choice at the boundaries.
@defvjp("clamp")
def _clamp_vjp(g, ans, lo, x, hi):
  lo_b, hi_b, zero = broadcast_to(lo, x.shape), broadcast_to(hi, x.shape), zeros_like(g)
  dlo = lax.select((lo_b > x) & (lo_b < hi_b), g, zero)
  dx = lax.select((x > lo_b) & (x < hi_b), g, zero)
  dhi = lax.select(hi_b < x, g, zero)
  return sum_to(dlo, lo), dx, sum_to(dhi, hi)


# z = convert(x):  dx = convert(g) back to x's dtype; integer and boolean inputs get none.
# Complex to real keeps the real part (z = Re x): dx = g + 0i; real to complex
# (z = x + 0i): dx = Re g.  ``new_dtype``/``weak_type`` describe z, which g already has;
# ``sharding`` is z's, and the cotangent is built from g, which carries it.
@defvjp("convert_element_type")
def _convert_vjp(g, ans, x, *, new_dtype=None, weak_type=None, sharding=None):
  # Not dtype.kind: bfloat16 and the float8 types are numpy "V" (void) kinds.
  if not jnp.issubdtype(lax.dtype(x), jnp.inexact):
    return (None,)
  if is_complex(g) and not is_complex(x):
    g = lax.real(g)
  return (lax.convert_element_type(g, lax.dtype(x)),)


# Identities: the cotangent passes through unchanged (sharding_constraint, which
# re-applies its constraint to the cotangent, is in sharding.py).
for _name in ("copy", "name"):
  defvjp(_name, lambda g, ans, x, **params: (g,))
# optimization_barrier is an identity on a tuple of values.
defvjp("optimization_barrier", lambda g, ans, *xs: tuple(g))

# reduce_precision rounds the forward value; its transpose rounds the cotangent the same way.
defvjp("reduce_precision", lambda g, ans, x, **p: (lax.reduce_precision(g, **p),))

# stop_gradient: the engine cuts activity at it, so this rule never receives blame;
# it is registered so the registry documents the convention.
defvjp("stop_gradient", lambda g, ans, x: (None,))
