"""Specs of the special functions (``handgrad/_src/rules/special.py``)."""

from __future__ import annotations

import jax
from jax import lax

from handgrad._src.specs import UNARY, RuleSpec, choice, normal, uniform


def _gamma_sample(a):
  return jax.random.gamma(jax.random.key(0), a)


def _log_gamma_sample(a):
  return jax.random.loggamma(jax.random.key(1), a)


# Few shape cases where the forward pass is expensive to compile (loops inside).
_FEW_PAIRS = (((2, 3), (2, 3)), ((2, 1), (1, 3)))
_ONE = (((2, 3),),)


def table() -> list[RuleSpec]:
  S = RuleSpec
  shape_param, pos = uniform(0.5, 3.0), uniform(0.2, 3.0)
  return [
      S("lgamma", lax.lgamma, UNARY, uniform(0.3, 4.0)),
      S("lgamma", lax.lgamma, UNARY, uniform(-2.9, -2.1), label="negative x"),
      S("digamma", lax.digamma, UNARY, uniform(0.3, 4.0)),
      S("polygamma", lambda x: lax.polygamma(lax.full_like(x, 1), x), UNARY,
        uniform(0.5, 3.0), label="m=1",
        note="differentiated in x only: JAX defines no derivative in m"),
      S("polygamma", lambda x: lax.polygamma(lax.full_like(x, 3), x), UNARY,
        uniform(0.5, 3.0), label="m=3"),
      # Two shape cases only: each compiles JAX's series and continued fractions.
      S("igamma", lax.igamma, _FEW_PAIRS, (shape_param, pos)),
      S("igammac", lax.igammac, _FEW_PAIRS, (shape_param, pos)),
      S("regularized_incomplete_beta", lambda x: lax.betainc(2.0, 3.5, x), UNARY,
        uniform(0.1, 0.9), note="differentiated in x only: JAX defines none in a, b"),
      S("bessel_i0e", lax.bessel_i0e, UNARY, normal(3.0)),
      S("bessel_i1e", lax.bessel_i1e, UNARY, normal(3.0)),
      S("bessel_i1e", lax.bessel_i1e, (((5,),),), choice((0.0, 1e-30, -1e-30, 2.0)),
        fd=False, label="tiny x", note="½ where |x| ≤ eps, JAX's convention"),
      S("random_gamma", _gamma_sample, _ONE, shape_param, fd=False,
        note="the implicit (reparameterisation) derivative of the sample: not the "
             "derivative of the rejection sampler at a fixed key, so no FD"),
      S("random_gamma", _log_gamma_sample, _ONE, shape_param, fd=False, label="log space"),
  ]
