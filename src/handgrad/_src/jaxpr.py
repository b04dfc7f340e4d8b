"""The one place that touches JAX internals and walks jaxprs.

Everything else in handgrad reads equations, nested jaxprs, source lines and
per-release differences through the functions here, so a new JAX release is met in
this module alone.
"""

from __future__ import annotations

from typing import Any


def unwrap(jaxpr: Any):
  """The open jaxpr of a ``ClosedJaxpr`` (or the jaxpr itself)."""
  return getattr(jaxpr, "jaxpr", jaxpr)


def primitive_names(jaxpr: Any) -> list[str]:
  """The primitive names of ``jaxpr``'s equations, in order (nested jaxprs not entered).

  Rules whose primitive carries a body (``reduce_window``'s ``jaxpr``, ``scatter``'s
  ``update_jaxpr``, variadic ``reduce``'s ``computation``) read it with this to tell a
  sum, a max or a plain overwrite from anything else, and raise on anything else.
  """
  return [eqn.primitive.name for eqn in unwrap(jaxpr).eqns]


# -------------------------------------------------------------------------------------
# Primitives by release.

def has_primitive(name: str) -> bool:
  """Whether this JAX release has the primitive ``name`` (``log2`` and
  ``one_minus_square`` arrived in jax 0.11, ``polynomial`` in jax 0.12): rules for
  newer primitives are registered only where their primitive exists."""
  from jax.extend.core import primitives
  return getattr(primitives, f"{name}_p", None) is not None
