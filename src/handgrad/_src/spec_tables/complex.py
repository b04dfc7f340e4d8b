"""Specs of the complex family (``real``, ``imag``, ``complex``, ``conj``, complex
``abs`` and ``sign``) and of the elementwise rules on complex operands.

Complex columns compare against ``jax.vjp`` with complex cotangents (JAX's
convention: the transpose of the R-linear JVP, no conjugation for holomorphic
functions); complex128 also against central differences along the real and the
imaginary part of every input element.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax
from jax.extend.core import primitives

from handgrad._src.specs import (
    BINARY, COMPLEX_DTYPES, SAME, UNARY, RuleSpec, away_from_zero, booleans, choice, normal,
    uniform)


def _complex_sign_has_a_derivative() -> bool:
  # jax ≤ 0.11 gives sign a zero derivative on complex operands too; jax 0.12 the
  # derivative of x/|x|, which handgrad's rule computes on every release (checked
  # against finite differences in tests/_src/rules/test_complex.py).
  return jax.__version_info__ >= (0, 12)


def _complex_to_real(x):
  # Bound directly: the lax wrapper warns about the discarded imaginary part.
  real = jnp.finfo(x.dtype).dtype
  return primitives.convert_element_type_p.bind(x, new_dtype=real, weak_type=False,
                                                sharding=None)


def table() -> list[RuleSpec]:
  S, C = RuleSpec, COMPLEX_DTYPES
  pos, unit = uniform(0.1, 3.0), uniform(-0.9, 0.9)
  specs = [
      # --- complex.py --------------------------------------------------------------
      S("real", lax.real, UNARY, dtypes=C),
      S("imag", lax.imag, UNARY, dtypes=C),
      S("complex", lax.complex, BINARY, note="real operands, complex output and cotangent"),
      S("conj", lax.conj, UNARY, dtypes=C),
      S("conj", lax.conj, UNARY, label="real operand", note="conj of a real x is x + 0i"),
      S("real", lambda x: lax.real(x) * lax.imag(x), UNARY, dtypes=C, label="Re·Im"),
      # --- complex abs and sign (arithmetic.py) ------------------------------------
      S("abs", lax.abs, UNARY, away_from_zero(), dtypes=C, label="complex"),
      S("abs", lambda x: lax.abs(x) * jnp.abs(lax.real(x)), (((5,),),),
        choice((0.0, 0.0, 1.5, -2.0)), dtypes=C, fd=False, label="complex zero",
        note="|x| has no derivative at 0; JAX's is 0 there (|x| replaced by 1)"),
      # --- elementwise arithmetic on complex operands -------------------------------
      S("add", lax.add, BINARY, dtypes=C, label="complex"),
      S("sub", lax.sub, BINARY, dtypes=C, label="complex"),
      S("neg", lax.neg, UNARY, dtypes=C, label="complex"),
      S("mul", lax.mul, BINARY, dtypes=C, label="complex"),
      S("div", lax.div, BINARY, (normal(), away_from_zero()), dtypes=C, label="complex"),
      S("square", lax.square, UNARY, dtypes=C, label="complex"),
      S("integer_pow", lambda x: lax.integer_pow(x, 3), UNARY, dtypes=C, label="complex y=3"),
      S("integer_pow", lambda x: lax.integer_pow(x, -2), UNARY, away_from_zero(), dtypes=C,
        label="complex y=-2"),
      S("pow", lax.pow, SAME, (uniform(0.5, 2.0), normal(0.5)), dtypes=C, label="complex"),
      S("select_n", lax.select_n, (((2, 3),) * 3, ((),) * 3), (booleans(), normal(), normal()),
        dtypes=C, label="complex"),
      S("convert_element_type", _complex_to_real, UNARY, dtypes=C, label="complex to real",
        note="z = Re x: dx = g + 0i"),
      S("convert_element_type",
        lambda x: lax.convert_element_type(x, jnp.complex128) * lax.complex(x, x), UNARY,
        normal(), dtypes=("float64",), label="real to complex",
        note="z = x + 0i: dx = Re g"),
      # --- transcendental functions on complex operands -----------------------------
      S("exp", lax.exp, UNARY, dtypes=C, label="complex"),
      S("exp2", lax.exp2, UNARY, dtypes=C, label="complex"),
      S("log", lax.log, UNARY, pos, dtypes=C, label="complex"),
      S("log1p", lax.log1p, UNARY, uniform(-0.5, 2.0), dtypes=C, label="complex"),
      S("expm1", lax.expm1, UNARY, dtypes=C, label="complex"),
      S("tanh", lax.tanh, UNARY, normal(0.5), dtypes=C, label="complex"),
      S("logistic", lax.logistic, UNARY, normal(0.7), dtypes=C, label="complex"),
      S("sqrt", lax.sqrt, UNARY, pos, dtypes=C, label="complex"),
      S("rsqrt", lax.rsqrt, UNARY, pos, dtypes=C, label="complex"),
      S("sin", lax.sin, UNARY, dtypes=C, label="complex"),
      S("cos", lax.cos, UNARY, dtypes=C, label="complex"),
      S("tan", lax.tan, UNARY, uniform(-0.6, 0.6), dtypes=C, label="complex"),
      S("asin", lax.asin, UNARY, unit, dtypes=C, label="complex"),
      S("acos", lax.acos, UNARY, unit, dtypes=C, label="complex"),
      S("atan", lax.atan, UNARY, unit, dtypes=C, label="complex"),
      S("sinh", lax.sinh, UNARY, dtypes=C, label="complex"),
      S("cosh", lax.cosh, UNARY, dtypes=C, label="complex"),
      S("asinh", lax.asinh, UNARY, unit, dtypes=C, label="complex"),
      S("acosh", lax.acosh, UNARY, uniform(1.1, 3.0), dtypes=C, label="complex"),
      S("atanh", lax.atanh, UNARY, unit, dtypes=C, label="complex"),
  ]
  if _complex_sign_has_a_derivative():
    specs.append(S("sign", lax.sign, UNARY, away_from_zero(), dtypes=C, label="complex"))
  return specs
