"""Elementwise arithmetic, comparisons, selection and dtype conversion.

Each rule follows JAX's convention at its kinks and ties exactly, so that "equals
``jax.grad``" holds everywhere: ``max``/``min`` split a tie evenly between the two
operands; ``abs'(0) = +1``; ``sign``, ``floor``, ``ceil`` and ``round`` have zero
derivative; comparisons carry no gradient.
"""

from __future__ import annotations

import jax.numpy as jnp
from jax import lax

from handgrad._src.registry import defvjp
from handgrad._src.rules._common import like, sum_to, zeros_like

# z = x + y:  dx = g,  dy = g   (each summed back over its broadcast dimensions)
defvjp("add", lambda g, ans, x, y: (sum_to(g, x), sum_to(g, y)))
defvjp("add_any", lambda g, ans, x, y: (sum_to(g, x), sum_to(g, y)))
# z = x - y:  dx = g,  dy = -g
defvjp("sub", lambda g, ans, x, y: (sum_to(g, x), sum_to(lax.neg(g), y)))
# z = -x:  dx = -g
defvjp("neg", lambda g, ans, x: (lax.neg(g),))


# z = x * y:  dx = g * y,  dy = g * x
@defvjp("mul")
def _mul_vjp(g, ans, x, y, out_dtype=None):
  return sum_to(lax.mul(g, lax.convert_element_type(y, g.dtype)), x), \
         sum_to(lax.mul(lax.convert_element_type(x, g.dtype), g), y)


# z = x / y:  dx = g / y,  dy = -g * x / y²
defvjp("div", lambda g, ans, x, y: (
    sum_to(lax.div(g, y), x),
    sum_to(lax.mul(lax.mul(lax.neg(g), x), lax.integer_pow(y, -2)), y)))


# z = max(x, y):  dx = g·[x == z]·(½ if y == z too else 1); likewise dy.
# On a tie the blame is split evenly, as in JAX.  Note jax.nn.relu is not max(x, 0):
# it is a custom_jvp with relu'(0) = 0, handled by the engine from its own JVP rule.
def _balanced_eq(x, z, y):
  one, zero, two = like(1, z), like(0, z), like(2, z)
  return lax.div(lax.select(lax.eq(x, z), lax.full_like(z, one), lax.full_like(z, zero)),
                 lax.select(lax.eq(y, z), lax.full_like(z, two), lax.full_like(z, one)))


def _minmax_vjp(g, ans, x, y):
  return (sum_to(lax.mul(g, _balanced_eq(x, ans, y)), x),
          sum_to(lax.mul(g, _balanced_eq(y, ans, x)), y))


defvjp("max", _minmax_vjp)
defvjp("min", _minmax_vjp)


# z = |x|:  dx = g·(+1 if x >= 0 else -1)   (JAX takes the +1 branch at 0)
defvjp("abs", lambda g, ans, x: (lax.select(lax.ge(x, lax.full_like(x, 0)), g, lax.neg(g)),))
# z = x²:  dx = 2x·g
defvjp("square", lambda g, ans, x: (lax.mul(g, lax.mul(like(2, x), x)),))


# z = xⁿ (integer n):  dx = n·xⁿ⁻¹·g;  n = 0 gives zero.
@defvjp("integer_pow")
def _integer_pow_vjp(g, ans, x, *, y):
  if y == 0:
    return (zeros_like(g),)
  if y == 1:
    return (g,)
  if y == 2:
    return (lax.mul(g, lax.mul(like(2, x), x)),)
  return (lax.mul(g, lax.mul(like(y, x), lax.integer_pow(x, y - 1))),)


# z = x^y:  dx = y·x^(y-1)·g  (zero where an integer y is 0);  dy = log(x)·z·g with
# log(0) replaced by log(1) = 0, as JAX does, so 0^y has a finite y-derivative.
@defvjp("pow")
def _pow_vjp(g, ans, x, y):
  shape = lax.broadcast_shapes(tuple(x.shape), tuple(lax.full_like(y, 0).shape))
  xb = lax.broadcast_in_dim(x, shape, tuple(range(len(shape) - x.ndim, len(shape))))
  yf = lax.convert_element_type(y, x.dtype)
  yb = lax.broadcast_in_dim(yf, shape, tuple(range(len(shape) - yf.ndim, len(shape))))
  one = lax.full_like(yb, 1)
  if lax.dtype(y).kind in "iu":
    jac = lax.select(lax.eq(yb, lax.full_like(yb, 0)), lax.full_like(yb, 0),
                     lax.mul(yb, lax.pow(xb, lax.sub(yb, one))))
    return (sum_to(lax.mul(g, jac), x), None)
  jac = lax.mul(yb, lax.pow(xb, lax.sub(yb, one)))
  safe_x = lax.select(lax.eq(xb, lax.full_like(xb, 0)), lax.full_like(xb, 1), xb)
  dy = lax.mul(g, lax.mul(lax.log(safe_x), ans))
  return (sum_to(lax.mul(g, jac), x), sum_to(dy, y))


# z = x mod y (truncated):  dx = g,  dy = -g·sign(x/y)·floor(|x/y|)
defvjp("rem", lambda g, ans, x, y: (
    sum_to(g, x),
    sum_to(lax.mul(lax.neg(g), lax.mul(lax.sign(lax.div(x, y)),
                                       lax.floor(lax.abs(lax.div(x, y))))), y)))

# Piecewise-constant functions: zero derivative everywhere JAX defines one.
# (nextafter has no rule: JAX defines no derivative for it, and x ↦ nextafter(x, y) is
# x moved by one ulp, whose slope is 1, not 0; a missing rule fails loudly instead.)
for _name in ("sign", "floor", "ceil", "round", "is_finite"):
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
  zero = lax.full_like(g, 0)
  lo_b = lax.broadcast_in_dim(lo, x.shape, ()) if lo.ndim == 0 else lo
  hi_b = lax.broadcast_in_dim(hi, x.shape, ()) if hi.ndim == 0 else hi
  dlo = lax.select(lax.bitwise_and(lax.gt(lo_b, x), lax.lt(lo_b, hi_b)), g, zero)
  dx = lax.select(lax.bitwise_and(lax.gt(x, lo_b), lax.lt(x, hi_b)), g, zero)
  dhi = lax.select(lax.lt(hi_b, x), g, zero)
  return sum_to(dlo, lo), dx, sum_to(dhi, hi)


# z = convert(x):  dx = convert(g) back to x's dtype; integer and boolean inputs get none.
@defvjp("convert_element_type")
def _convert_vjp(g, ans, x, **params):
  # Not dtype.kind: bfloat16 and the float8 types are numpy "V" (void) kinds.
  if not jnp.issubdtype(lax.dtype(x), jnp.inexact):
    return (None,)
  return (lax.convert_element_type(g, lax.dtype(x)),)


# Identities: the cotangent passes through unchanged.
for _name in ("copy", "name", "sharding_constraint"):
  defvjp(_name, lambda g, ans, x, **params: (g,))
# optimization_barrier is an identity on a tuple of values.
defvjp("optimization_barrier", lambda g, ans, *xs: tuple(g))

# reduce_precision rounds the forward value; its transpose rounds the cotangent the same way.
defvjp("reduce_precision", lambda g, ans, x, **p: (lax.reduce_precision(g, **p),))

# stop_gradient: the engine cuts activity at it, so this rule never receives blame;
# it is registered so the registry documents the convention.
defvjp("stop_gradient", lambda g, ans, x: (None,))
