"""The VJP registry: a plain dict from a name to a hand-written rule.

A *rule* is a Python function written in ``jax.numpy``/``lax``::

    rule(g, ans, *args, **params) -> tuple of cotangents, one per arg

* ``g``    cotangent of the output (a tuple of them for multi-output primitives),
           same shape and dtype as ``ans``.  For a multi-output *layer-level* op, an
           output that received no blame gets ``None`` instead of zeros.
* ``ans``  the primal output(s) of the equation.
* ``args`` the primal inputs of the equation, in order.
* ``params`` the equation's parameters (``axes=``, ``dimension_numbers=``, ...), or,
           for a layer-level operation, its static keyword arguments.

It returns one cotangent per input: an array of exactly the input's shape and dtype,
or ``None`` for "no gradient flows here" (a symbolic zero).  Keys are primitive names
(``"dot_general"``, ``"exp"``, ...) and layer-level operation names (``"dense"``,
``"softmax_cross_entropy"``, ...).  See ``handgrad/_src/rules/`` for the rules, each
written next to its math.
"""

from __future__ import annotations

import types
from typing import Any, Callable, Sequence

Rule = Callable[..., Sequence[Any]]

_RULES: dict[str, Rule] = {}

#: Read-only view of every registered rule: name -> rule.
registry: types.MappingProxyType[str, Rule] = types.MappingProxyType(_RULES)


class RuleError(ValueError):
  """A rule returned the wrong number, shape or dtype of cotangents."""


def defvjp(name: str, rule: Rule | None = None):
  """Registers ``rule`` as the VJP of the primitive or layer op ``name``.

  Usable directly, ``defvjp("exp", lambda g, ans, x: (g * ans,))``, or as a
  decorator, ``@defvjp("dense")``.  Registering a name again replaces its rule
  (that is how a user overrides a built-in one).
  """
  if not isinstance(name, str) or not name:
    raise TypeError(f"defvjp needs a non-empty rule name, got {name!r}")

  def register(fn: Rule) -> Rule:
    if not callable(fn):
      raise TypeError(f"defvjp({name!r}, ...) needs a callable rule, got {fn!r}")
    _RULES[name] = fn
    return fn

  return register if rule is None else register(rule)


def lookup(name: str) -> Rule | None:
  return _RULES.get(name)


def missing_rule_error(name: str, where: str) -> NotImplementedError:
  where = f" at {where}" if where else ""
  return NotImplementedError(
      f"handgrad has no VJP rule for '{name}'{where}.\n"
      f"Register one with handgrad.defvjp('{name}', rule), where\n"
      f"  rule(g, ans, *args, **params) -> tuple with one cotangent per arg\n"
      f"(each of the arg's shape and dtype, or None for no gradient).")
