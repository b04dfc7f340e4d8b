"""Transcendental functions: exp/log family, trigonometric, hyperbolic, erf.

Where JAX writes a derivative in terms of the output (``exp' = exp``,
``tanh' = (1 + tanh)(1 − tanh)``) we do the same: it is cheaper (the output is already
computed) and it keeps the float32 rounding identical to ``jax.grad``.

Every rule holds on complex operands too: these functions are holomorphic, and JAX's
VJP of a holomorphic ``f`` is ``g · f'(x)`` with no conjugation (the transpose of the
C-linear JVP ``dx ↦ f'(x)·dx``).

``accuracy`` (a ``lax.AccuracyMode`` or ``lax.Tolerance``; jax 0.12 gave ``erfc`` one
too) selects the forward implementation.  The derivative does not depend on it, but a
rule that evaluates a transcendental function again passes the same accuracy on, and
with ``AccuracyMode.HIGHEST`` uses JAX's more accurate formula (``expm1' = exp``,
``tanh' = 4·σ(2x)·σ(−2x)``, ``σ' = σ(x)·σ(−x)``) instead of the one in terms of the
output.
"""

from __future__ import annotations

import math

from jax import lax

from handgrad._src import jaxpr
from handgrad._src.registry import defvjp_each, defvjp_unary
from handgrad._src.rules._common import like

_HIGHEST = lax.AccuracyMode.HIGHEST


def _one_minus_square(x):
  return like(1, x) - lax.square(x)


# d exp(x) = exp(x)·g
defvjp_unary("exp", lambda g, ans, x, accuracy=None: g * ans)
# d 2^x = log(2)·2^x·g
defvjp_unary("exp2", lambda g, ans, x, accuracy=None: like(math.log(2), x) * (g * ans))
# d log(x) = g / x
defvjp_unary("log", lambda g, ans, x, accuracy=None: g / x)
# d log₂(x) = g / (x·log 2)      (primitive since jax 0.11)
if jaxpr.has_primitive("log2"):
  defvjp_unary("log2", lambda g, ans, x, accuracy=None: g / (x * like(math.log(2), x)))
# d log(1 + x) = g / (1 + x)
defvjp_unary("log1p", lambda g, ans, x, accuracy=None: g / (x + like(1, x)))


# d (e^x − 1) = e^x·g = (ans + 1)·g
def _expm1_vjp(g, ans, x, accuracy=None):
  if accuracy is _HIGHEST:
    return g * lax.exp(x, accuracy=accuracy)
  return g * (ans + like(1, ans))


defvjp_unary("expm1", _expm1_vjp)


# d tanh(x) = (1 + tanh)(1 − tanh)·g, written as JAX writes it: (g + g·ans)(1 − ans);
# with HIGHEST accuracy 4·σ(2x)·σ(−2x)·g.  Also the rule of the layer op
# handgrad.ops.tanh, registered under the same name.
def _tanh_vjp(g, ans, x, accuracy=None):
  if accuracy is _HIGHEST:
    return g * (like(4, x) * (lax.logistic(like(2, x) * x, accuracy=accuracy) *
                              lax.logistic(like(-2, x) * x, accuracy=accuracy)))
  return (g + g * ans) * (like(1, x) - ans)


defvjp_unary("tanh", _tanh_vjp)


# d σ(x) = σ(1 − σ)·g;  with HIGHEST accuracy σ(x)·σ(−x)·g.
def _logistic_vjp(g, ans, x, accuracy=None):
  if accuracy is _HIGHEST:
    return g * (ans * lax.logistic(-x, accuracy=accuracy))
  return g * (ans * (like(1, ans) - ans))


defvjp_unary("logistic", _logistic_vjp)
# d √x = g·½/√x
defvjp_unary("sqrt", lambda g, ans, x, accuracy=None: g * (like(0.5, x) / ans))
# d x^(-½) = g·(−½)·ans/x
defvjp_unary("rsqrt", lambda g, ans, x, accuracy=None: g * (like(-0.5, x) * (ans / x)))
# d ∛x = g·⅓·ans⁻²
defvjp_unary("cbrt", lambda g, ans, x, accuracy=None:
             g * (like(1 / 3, x) * lax.integer_pow(ans, -2)))
# d (1 − x²) = −2x·g      (primitive since jax 0.11)
if jaxpr.has_primitive("one_minus_square"):
  defvjp_unary("one_minus_square", lambda g, ans, x: g * (like(-2, x) * x))

# Trigonometric.
defvjp_unary("sin", lambda g, ans, x, accuracy=None: g * lax.cos(x, accuracy=accuracy))
defvjp_unary("cos", lambda g, ans, x, accuracy=None: -(g * lax.sin(x, accuracy=accuracy)))
defvjp_unary("tan", lambda g, ans, x, accuracy=None: g * (like(1, x) + lax.square(ans)))
defvjp_unary("asin", lambda g, ans, x: g * lax.rsqrt(_one_minus_square(x)))
defvjp_unary("acos", lambda g, ans, x: g * -lax.rsqrt(_one_minus_square(x)))
defvjp_unary("atan", lambda g, ans, x: g / (like(1, x) + lax.square(x)))
# atan2(x, y):  dx = g·y/(x² + y²),  dy = −g·x/(x² + y²)
defvjp_each("atan2", lambda g, ans, x, y: g * (y / (lax.square(x) + lax.square(y))),
            lambda g, ans, x, y: g * (-x / (lax.square(x) + lax.square(y))))

# Hyperbolic.
defvjp_unary("sinh", lambda g, ans, x: g * lax.cosh(x))
defvjp_unary("cosh", lambda g, ans, x: g * lax.sinh(x))
defvjp_unary("asinh", lambda g, ans, x: g * lax.rsqrt(lax.square(x) + like(1, x)))
defvjp_unary("acosh", lambda g, ans, x: g * lax.rsqrt(lax.square(x) - like(1, x)))
defvjp_unary("atanh", lambda g, ans, x: (like(1, x) / (like(1, x) + x)) * (g / (like(1, x) - x)))

# Error function family.
# d erf(x) = 2/√π · e^(−x²)·g
defvjp_unary("erf", lambda g, ans, x:
             g * (like(2 / math.sqrt(math.pi), x) * lax.exp(-lax.square(x))))
# d erfc(x) = −2/√π · e^(−x²)·g   (jax 0.12 gave erfc an ``accuracy``)
defvjp_unary("erfc", lambda g, ans, x, accuracy=None:
             g * (like(-2 / math.sqrt(math.pi), x) * lax.exp(-lax.square(x))))
# d erf⁻¹(x) = √π/2 · e^(ans²)·g
defvjp_unary("erf_inv", lambda g, ans, x:
             g * (like(math.sqrt(math.pi) / 2, x) * lax.exp(lax.square(ans))))
