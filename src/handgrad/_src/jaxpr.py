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
# Bodies of scatter and variadic reduce: which elementwise combine they compute.

_COMMUTATIVE = frozenset({"add", "mul", "max", "min", "and", "or", "xor"})


def pairwise_ops(jaxpr: Any) -> list[str] | None:
  """The combine of each output of a body that takes ``(a₁…aₙ, b₁…bₙ)``, or ``None``.

  Output ``i`` must be one equation ``op(aᵢ, bᵢ)`` on exactly those two inputs
  (either order for a commutative ``op``), as the bodies of ``scatter-add``
  (``add``), ``scatter-max`` (``max``) and ``lax.reduce`` of a tuple with
  ``(x[0] + y[0], max(x[1], y[1]))`` are.  Any other body (a constant, a conversion,
  a mix of operands, ``sin`` as in ``x.at[i].apply(jnp.sin)``) gives ``None``.
  """
  j = unwrap(jaxpr)
  n = len(j.outvars)
  if len(j.invars) != 2 * n or getattr(j, "constvars", ()):
    return None
  made = {id(v): eqn for eqn in j.eqns for v in eqn.outvars}
  if len(j.eqns) != n:
    return None
  names = []
  for i, out in enumerate(j.outvars):
    eqn = made.get(id(out))
    if eqn is None or len(eqn.invars) != 2 or len(eqn.outvars) != 1:
      return None
    a, b = j.invars[i], j.invars[n + i]
    ins = [id(v) for v in eqn.invars]
    name = eqn.primitive.name
    if ins == [id(a), id(b)] or (ins == [id(b), id(a)] and name in _COMMUTATIVE):
      names.append(name)
    else:
      return None
  return names
