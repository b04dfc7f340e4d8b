"""Transcendental functions: exp/log family, trigonometric, hyperbolic, erf.

Where JAX writes a derivative in terms of the output (``exp' = exp``,
``tanh' = (1 + tanh)(1 − tanh)``) we do the same: it is cheaper (the output is already
computed) and it keeps the float32 rounding identical to ``jax.grad``.  The
``accuracy`` parameter some of these primitives carry is ignored in the backward pass
(default accuracy), as in JAX's own rules for the default mode.
"""

from __future__ import annotations

import math

from jax import lax

from handgrad._src.registry import defvjp
from handgrad._src.rules._common import like, sum_to

# d exp(x) = exp(x)·g
defvjp("exp", lambda g, ans, x, **p: (lax.mul(g, ans),))
# d 2^x = log(2)·2^x·g
defvjp("exp2", lambda g, ans, x, **p: (lax.mul(like(math.log(2), x), lax.mul(g, ans)),))
# d log(x) = g / x
defvjp("log", lambda g, ans, x, **p: (lax.div(g, x),))
# d log(1 + x) = g / (1 + x)
defvjp("log1p", lambda g, ans, x, **p: (lax.div(g, lax.add(x, like(1, x))),))
# d (e^x − 1) = (ans + 1)·g
defvjp("expm1", lambda g, ans, x, **p: (lax.mul(g, lax.add(ans, like(1, ans))),))
# d tanh(x) = (1 + tanh)(1 − tanh)·g, written as JAX writes it: (g + g·ans)(1 − ans).
# Also the rule of the layer op handgrad.ops.tanh, registered under the same name.
defvjp("tanh", lambda g, ans, x, **p: (
    lax.mul(lax.add(g, lax.mul(g, ans)), lax.sub(like(1, x), ans)),))
# d σ(x) = σ(1 − σ)·g
defvjp("logistic", lambda g, ans, x, **p: (
    lax.mul(g, lax.mul(ans, lax.sub(like(1, ans), ans))),))
# d √x = g·½/√x
defvjp("sqrt", lambda g, ans, x, **p: (lax.mul(g, lax.div(like(0.5, x), ans)),))
# d x^(-½) = g·(−½)·ans/x
defvjp("rsqrt", lambda g, ans, x, **p: (lax.mul(g, lax.mul(like(-0.5, x), lax.div(ans, x))),))
# d ∛x = g·⅓·ans⁻²
defvjp("cbrt", lambda g, ans, x, **p: (
    lax.mul(g, lax.mul(like(1 / 3, x), lax.integer_pow(ans, -2))),))

# Trigonometric.
defvjp("sin", lambda g, ans, x, **p: (lax.mul(g, lax.cos(x)),))
defvjp("cos", lambda g, ans, x, **p: (lax.neg(lax.mul(g, lax.sin(x))),))
defvjp("tan", lambda g, ans, x, **p: (lax.mul(g, lax.add(like(1, x), lax.square(ans))),))
defvjp("asin", lambda g, ans, x: (lax.mul(g, lax.rsqrt(lax.sub(like(1, x), lax.square(x)))),))
defvjp("acos", lambda g, ans, x: (
    lax.mul(g, lax.neg(lax.rsqrt(lax.sub(like(1, x), lax.square(x))))),))
defvjp("atan", lambda g, ans, x: (lax.div(g, lax.add(like(1, x), lax.square(x))),))


# atan2(x, y):  dx = g·y/(x² + y²),  dy = −g·x/(x² + y²)
@defvjp("atan2")
def _atan2_vjp(g, ans, x, y):
  r2 = lax.add(lax.square(x), lax.square(y))
  return (sum_to(lax.mul(g, lax.div(y, r2)), x),
          sum_to(lax.mul(g, lax.div(lax.neg(x), r2)), y))


# Hyperbolic.
defvjp("sinh", lambda g, ans, x: (lax.mul(g, lax.cosh(x)),))
defvjp("cosh", lambda g, ans, x: (lax.mul(g, lax.sinh(x)),))
defvjp("asinh", lambda g, ans, x: (lax.mul(g, lax.rsqrt(lax.add(lax.square(x), like(1, x)))),))
defvjp("acosh", lambda g, ans, x: (lax.mul(g, lax.rsqrt(lax.sub(lax.square(x), like(1, x)))),))
defvjp("atanh", lambda g, ans, x: (
    lax.mul(lax.div(like(1, x), lax.add(like(1, x), x)), lax.div(g, lax.sub(like(1, x), x))),))

# Error function family.
# d erf(x) = 2/√π · e^(−x²)·g
defvjp("erf", lambda g, ans, x: (
    lax.mul(g, lax.mul(like(2 / math.sqrt(math.pi), x), lax.exp(lax.neg(lax.square(x))))),))
# d erfc(x) = −2/√π · e^(−x²)·g
defvjp("erfc", lambda g, ans, x: (
    lax.mul(g, lax.mul(like(-2 / math.sqrt(math.pi), x), lax.exp(lax.neg(lax.square(x))))),))
# d erf⁻¹(x) = √π/2 · e^(ans²)·g
defvjp("erf_inv", lambda g, ans, x: (
    lax.mul(g, lax.mul(like(math.sqrt(math.pi) / 2, x), lax.exp(lax.square(ans)))),))
