"""Sharding casts: the cotangent goes back to the operand's sharding.

``reshard`` moves a value to ``dst_sharding`` (under Explicit mesh axes the sharding
is part of the type); its transpose moves the cotangent back to the operand's own
sharding, read from the operand's type (``jax.typeof(x).sharding``), as JAX's
transpose does (``jax/_src/pjit.py``).  ``sharding_constraint``
(``jax.lax.with_sharding_constraint``) asks XLA to place a value; its transpose asks
the same of the cotangent.  The value is unchanged: only where it lives.
"""

from __future__ import annotations

import jax

from handgrad._src import jaxpr as hj
from handgrad._src.registry import defvjp


# z = x stored with dst_sharding:  dx = dz stored with x's sharding
@defvjp("reshard")
def _reshard_vjp(g, ans, x, *, dst_sharding, concrete_mesh):
  return (hj.reshard_to(g, jax.typeof(x).sharding, concrete_mesh),)


# z = x constrained to ``sharding``:  dx = dz under the same constraint (JAX's
# transpose re-binds the primitive with the equation's params on the cotangent).
@defvjp("sharding_constraint")
def _sharding_constraint_vjp(g, ans, x, **params):
  return (hj.constrain(g, params),)
