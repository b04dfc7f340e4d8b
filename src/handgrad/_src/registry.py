"""The VJP registry: a plain dict from a name to a hand-written rule.

A *rule* is a Python function written in ``jax.numpy``/``lax``::

    rule(g, ans, *args, **params) -> tuple of cotangents, one per arg

* ``g``    cotangent of the output (a list of them, ``None`` where no blame arrived,
           for multi-output primitives), same shape and dtype as ``ans``.
* ``ans``  the primal output(s) of the equation.
* ``args`` the primal inputs of the equation, in order.
* ``params`` the equation's parameters (``axes=``, ``dimension_numbers=``, ...), or,
           for a layer-level operation, its static keyword arguments.  A rule names
           every parameter its primitive has (so a parameter a later JAX release adds
           fails loudly instead of being ignored) and handles it or raises.

It returns one cotangent per input: an array of exactly the input's shape and dtype,
or ``None``.  Keys are primitive names (``"dot_general"``, ``"exp"``, ...) and
layer-level operation names (``"dense"``, ``"softmax_cross_entropy"``, ...).  See
``handgrad/_src/rules/`` for the rules, each written next to its math.

"No blame" (a symbolic zero) is ``None`` for every kind of rule.  A rule runs only
when some output of its equation received blame and some input is being
differentiated.  ``g`` is one array when the equation has one output (a primitive
without multiple results, or a layer-level op returning one array).  Otherwise ``g``
is a list with ``None`` for each output that received no blame, for primitive and
layer-op rules alike (``rules/_common.zeros_where_missing`` instantiates them where a
rule's math needs arrays), so a rule can skip that term instead of multiplying zeros,
as JAX skips a symbolic zero.  Zeros are made only where JAX's contract needs arrays:
a user's ``custom_vjp`` backward (JAX's ``SymbolicZero`` when it asked for
``symbolic_zeros``), ``custom_jvp`` tangents, and loop and branch bodies (see
:mod:`handgrad._src.nested`).

Every kind of rule *returns* ``None`` for an input that gets no blame (an index, a
comparison's operand, a constant); the engine also discards what a rule returns for an
input that is not being differentiated.  For an input whose derivative is not defined
(JAX raises for it, e.g. ``polygamma`` in its order) a rule returns
``NotDifferentiable(reason)``: harmless while that input is not differentiated, a
``RuleError`` naming the rule and the argument when it is.

Complex numbers follow JAX's convention: the VJP is the transpose of the R-linear JVP
under the pairing ``⟨a, b⟩ = Re Σ a·b``, so for a holomorphic ``f`` the cotangent is
``ct · f'(x)`` with no conjugation, and ``jax.grad`` of a real loss of complex
parameters is ``∂L/∂Re z − i·∂L/∂Im z``.

Three registrars:

* :func:`defvjp` registers a full rule (or is its decorator);
* :func:`defvjp_unary` registers a one-argument rule as the expression of its
  cotangent, ``defvjp_unary("sin", lambda g, ans, x, accuracy=None: g * cos(x))``;
* :func:`defvjp_each` registers one expression per argument (autograd's
  ``defvjp(fun, *vjpmakers)`` shape), each summed back over the dimensions its
  argument was broadcast along.
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


class NotDifferentiable:
  """What a rule returns for an argument whose derivative is not defined; the engine
  raises a :class:`RuleError` if that argument is being differentiated."""

  def __init__(self, why: str):
    self.why = why

  def __repr__(self) -> str:
    return f"NotDifferentiable({self.why!r})"


def defvjp(name: str, rule: Rule | None = None) -> Rule | Callable[[Rule], Rule]:
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


def defvjp_unary(name: str, vjp: Callable[..., Any]) -> Rule:
  """Registers the rule of a one-argument primitive from its cotangent's expression.

  ``vjp(g, ans, x, **params) -> dx`` (an array of ``x``'s shape and dtype, or
  ``None``): ``defvjp_unary("exp", lambda g, ans, x, accuracy=None: g * ans)``.
  """
  def rule(g, ans, x, **params):
    return (vjp(g, ans, x, **params),)

  rule.__name__ = rule.__qualname__ = f"{name}_vjp"
  rule.__doc__ = f"VJP of '{name}' built by defvjp_unary from {vjp!r}."
  return defvjp(name, rule)


def defvjp_each(name: str, *vjps: Callable[..., Any] | None) -> Rule:
  """Registers a rule from one cotangent expression per argument.

  ``vjps[k](g, ans, *args, **params)`` gives argument ``k``'s cotangent at the
  output's shape (``None``, or ``None`` in place of the function, for no gradient);
  it is summed back over the dimensions ``args[k]`` was broadcast along and cast to
  its dtype (:func:`handgrad._src.rules._common.sum_to`), as binary primitives
  broadcast scalars and size-1 dimensions inside a jaxpr.  An expression is only
  evaluated when the engine asks for the rule, for every argument alike.
  """
  def rule(g, ans, *args, **params):
    from handgrad._src.rules._common import sum_to  # the rules package imports this module
    if len(args) != len(vjps):
      raise RuleError(f"VJP rule '{name}' has {len(vjps)} argument expressions, the "
                      f"equation {len(args)} arguments")
    out = []
    for vjp, x in zip(vjps, args):
      ct = None if vjp is None else vjp(g, ans, *args, **params)
      out.append(None if ct is None else sum_to(ct, x))
    return tuple(out)

  rule.__name__ = rule.__qualname__ = f"{name}_vjp"
  rule.__doc__ = f"VJP of '{name}' built by defvjp_each."
  return defvjp(name, rule)


def lookup(name: str) -> Rule | None:
  return _RULES.get(name)


def missing_rule_error(name: str, where: str) -> NotImplementedError:
  where = f" at {where}" if where else ""
  return NotImplementedError(
      f"handgrad has no VJP rule for '{name}'{where}.\n"
      f"Register one with handgrad.defvjp('{name}', rule), where\n"
      f"  rule(g, ans, *args, **params) -> tuple with one cotangent per arg\n"
      f"(each of the arg's shape and dtype, or None for no gradient).")
