"""Specs of the ``call_hi_primitive`` rule (``rules/hi_primitives.py``): ``jnp.ldexp`` and
``jnp.frexp``, on the releases where they are new-style primitives (jax ≥ 0.12)."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np

from handgrad._src import jaxpr as hj
from handgrad._src.specs import RuleSpec, uniform

_SHAPES = (((3,),), ((),), ((2, 3),))


def table() -> list[RuleSpec]:
  if not hj.has_hi_ldexp():
    return []
  S = RuleSpec
  return [
      S(hj.HI_PRIMITIVE, lambda x: jnp.ldexp(x, 3), _SHAPES, label="ldexp",
        note="x·2ⁿ: the integer exponent passes no blame"),
      S(hj.HI_PRIMITIVE, lambda x: jnp.ldexp(x, np.array([-2, 0, 5])), (((3,),), ((2, 3),)),
        label="ldexp, exponent per element"),
      S(hj.HI_PRIMITIVE, lambda x: jnp.frexp(x)[0], _SHAPES, uniform(0.3, 3.0), fd=False,
        label="frexp mantissa",
        note="m = x·2⁻ᵉ, e piecewise constant: no FD across a power of two"),
      S(hj.HI_PRIMITIVE, lambda x: jnp.frexp(x)[0], _SHAPES, uniform(1.1, 1.9), label="frexp, one binade",
        note="inputs in [1.1, 1.9]: e = 1 throughout, so finite differences apply"),
  ]
