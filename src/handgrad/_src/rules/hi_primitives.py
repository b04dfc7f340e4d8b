"""Rules of JAX's new-style primitives, ``call_hi_primitive`` equations (jax ≥ 0.12):
``jnp.ldexp`` and ``jnp.frexp``.

Such an equation carries its operation as a ``_prim`` object; the rule dispatches on its
kind and raises, naming the JAX flag to unset, on every other kind (the new-style
custom_vjp, custom_jvp and checkpoint that ``jax_custom_vjp3`` / ``jax_custom_jvp3`` /
``jax_remat3`` produce).
"""

from __future__ import annotations

import types

import jax.numpy as jnp

from handgrad._src import jaxpr as hj
from handgrad._src.registry import defvjp


# z = ldexp(x, n) = x·2ⁿ (n integer):  dx = ldexp(g, n), n gets none (JAX's Ldexp.jvp).
def _ldexp_vjp(g, ans, x, n):
  return jnp.ldexp(g[0], n), None


# (m, e) = frexp(x), x = m·2ᵉ with e piecewise constant:  dx = ldexp(g_m, −e)
# (JAX's Frexp.jvp); the integer exponent e passes no blame.
def _frexp_vjp(g, ans, x):
  return (jnp.ldexp(g[0], -ans[1]),)


_KINDS = {"Ldexp": _ldexp_vjp, "Frexp": _frexp_vjp}


def _hi_primitive_vjp(g, ans, *args, _prim, **params):
  rule = _KINDS.get(hj.hi_primitive_kind(_prim))
  if rule is None:
    raise NotImplementedError(
        hj.hi_primitive_message(types.SimpleNamespace(params={"_prim": _prim})))
  return rule(g, ans, *args)


if hj.has_hi_ldexp():
  defvjp(hj.HI_PRIMITIVE, _hi_primitive_vjp)
