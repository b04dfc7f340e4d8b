"""Hand-written reverse mode over jaxprs.

``forward`` evaluates a jaxpr equation by equation and keeps every value (the
residuals a rule may need); ``backward`` walks the equations in reverse, looks up each
equation's hand-written rule in the registry and accumulates cotangents ("blame passed
backwards").  Both run as ordinary JAX code, so under ``jax.jit`` they run once, at
trace time, and XLA compiles the result; residuals that no rule reads are dead code.

Conventions:

* A variable is *active* when it is a floating-point value that depends on a
  differentiated input.  Only equations with an active input are differentiated;
  ``stop_gradient`` cuts activity.
* No blame is ``None``, for every kind of rule.  A cotangent of ``None`` is a symbolic
  zero: the variable never received blame.  A rule is called only when some output
  of its equation received blame; for an equation with several outputs, ``g`` holds
  ``None`` for each output that received none (a primitive rule and a layer-level
  op's rule alike), and a rule returns ``None`` for an input it sends no blame to.
  The distinction (missing versus zero) is kept until the public API instantiates
  zeros; :mod:`handgrad._src.nested` turns ``None`` into zeros only where JAX's own
  contract needs arrays (a user's ``custom_vjp`` ``bwd``, loop and branch bodies).
* Equations that hold jaxprs (``jit``, ``custom_jvp_call``, ``custom_vjp_call``,
  checkpoint, ``cond``, ``scan``) are handled by :mod:`handgrad._src.nested`; a
  layer-level op (a named ``jit``) is one node with its own rule.
* Everything this module asks of a jaxpr goes through :mod:`handgrad._src.jaxpr`.
* No JAX autodiff runs here: no ``jax.vjp``/``jax.grad``/``jax.linearize`` and no JAX
  JVP or transpose rule.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Sequence

from jax import lax

from handgrad._src import jaxpr as hj
from handgrad._src import nested
from handgrad._src.nested import RematRecord
from handgrad._src.registry import RuleError, lookup, missing_rule_error

# Primitives whose output never carries blame back to its input.
_CUT = frozenset({"stop_gradient"})

is_float = hj.is_float
zeros = nested.zeros
bind = hj.bind


@dataclasses.dataclass
class Frame:
  """What the forward pass of one jaxpr leaves for its backward pass."""
  jaxpr: Any
  invars: list  # the Vars the arguments are bound to (consts excluded)
  env: dict  # Var -> value
  active: set  # active Vars
  outs: dict  # eqn index -> list of output values
  children: dict  # eqn index -> forward record of a nested equation (see nested.py)


# -------------------------------------------------------------------------------------
# Observers: optional callbacks the inspection tools attach to the backward pass.

@dataclasses.dataclass
class Observer:
  """Called for every differentiated equation in backward order.

  ``on_eqn(eqn, layer_name, cts_out, cts_in)``: ``layer_name`` is the layer-level op's
  name (``"dense"``) or ``None`` for a primitive or a nested jaxpr; ``cts_out`` holds
  the total cotangent of each of ``eqn.outvars`` and ``cts_in`` this equation's
  contribution to each of ``eqn.invars`` (``None`` = no blame).  A nested equation is
  reported after the equations inside it, except a ``scan``, whose body is not shown
  to observers (its values live inside the loop).  :func:`current_path` tells where
  the equation sits.  The observer may only read values (they are traced arrays under
  ``jit``).
  """
  on_eqn: Callable[..., None]


_OBSERVERS: list[Observer] = []

# The equations being differentiated (index, equation), outermost jaxpr first.
_STACK: list[tuple[int, Any]] = []


def current_path() -> tuple[int, ...]:
  """Where the equation being differentiated sits, for observers.

  ``(i,)`` is equation ``i`` of the jaxpr that ``backward`` was called on;
  ``(i, j)`` is equation ``j`` of the jaxpr nested in equation ``i`` (a ``jit``,
  ``checkpoint``, ``cond`` branch or the JVP of a ``custom_jvp`` function), and so on.
  The path is relative to the outermost ``backward`` call running.
  """
  return tuple(i for i, _ in _STACK)


def enclosing() -> list:
  """The equations enclosing the one being differentiated, outermost first."""
  return [eqn for _, eqn in _STACK[:-1]]


def _source_line(eqn) -> str:
  return hj.source_line(eqn, enclosing())


class observe:
  """Context manager: attach ``observer`` to every backward pass run inside it."""

  def __init__(self, observer: Observer):
    self.observer = observer

  def __enter__(self):
    _OBSERVERS.append(self.observer)
    return self.observer

  def __exit__(self, *exc):
    _OBSERVERS.remove(self.observer)


class suspended_observers:
  """No observer sees the equations inside a loop body: their values are the body's
  per-iteration tracers, which must not leave it.  The loop equation itself is still
  reported, with the loop's own cotangents."""

  def __enter__(self):
    self.saved = list(_OBSERVERS)
    _OBSERVERS.clear()

  def __exit__(self, *exc):
    _OBSERVERS[:] = self.saved


def _notify(eqn, layer_name, cts_out, cts_in):
  for obs in _OBSERVERS:
    obs.on_eqn(eqn, layer_name, cts_out, cts_in)


# -------------------------------------------------------------------------------------
# Forward interpreter.

def _in_active(eqn, active) -> list[bool]:
  return [not hj.is_literal(v) and v in active for v in eqn.invars]


def forward(jaxpr, consts, args, active_in, remat: RematRecord | None = None) -> tuple[list, Frame]:
  """Evaluates ``jaxpr`` and records what the backward pass needs.

  ``active_in[i]`` says whether ``args[i]`` is differentiated.  Inside a checkpoint
  region ``remat`` records (or, in the backward pass, replays) the values its policy
  saves, in evaluation order.
  """
  invars = hj.input_vars(jaxpr, len(consts))[1]
  active = {v for v, a in zip(invars, active_in) if a and is_float(v.aval)}
  frame = Frame(jaxpr, invars, {}, active, {}, {})

  def eval_eqn(i, eqn, invals):
    in_active = _in_active(eqn, active)
    differentiated = any(in_active) and eqn.primitive.name not in _CUT
    handler = nested.handler(eqn)
    if remat is not None and remat.saves(eqn):
      outs = remat.outputs(eqn, invals)
    elif differentiated and handler is not None and handler.forward is not None:
      outs, frame.children[i] = handler.forward(eqn, invals, in_active, remat)
    else:
      outs = bind(eqn, invals)
    frame.outs[i] = outs
    if differentiated:
      active.update(v for v in eqn.outvars if not hj.is_dropped(v) and is_float(v.aval))
    return outs

  outs = hj.interpret(jaxpr, consts, args, eval_eqn, env=frame.env)
  return outs, frame


def active_outputs(jaxpr, active_in) -> list[bool]:
  """Which outputs of ``jaxpr`` are active when ``active_in`` of its inputs are: the
  same propagation as :func:`forward`, without evaluating anything."""
  sources = [v for v, a in zip(hj.unwrap(jaxpr).invars, active_in) if a and is_float(v.aval)]
  reached = hj.depends_on(jaxpr, sources, cut=lambda e: e.primitive.name in _CUT,
                          follows=lambda v: is_float(v.aval))
  return hj.reached_outputs(jaxpr, reached)


# -------------------------------------------------------------------------------------
# Backward interpreter.

def _accumulate(ct_env, v, ct):
  if ct is None:
    return
  ct_env[v] = ct if v not in ct_env else lax.add(ct_env[v], ct)


def backward(frame: Frame, cts_out: Sequence[Any]) -> list:
  """Cotangents of ``frame.jaxpr``'s arguments given its outputs' (``None`` = zero)."""
  jaxpr, active = hj.unwrap(frame.jaxpr), frame.active
  ct_env: dict = {}
  for v, ct in zip(jaxpr.outvars, cts_out):
    if not hj.is_literal(v) and v in active:
      _accumulate(ct_env, v, ct)
  for i in range(len(jaxpr.eqns) - 1, -1, -1):
    eqn = jaxpr.eqns[i]
    in_active = _in_active(eqn, active)
    if not any(in_active) or eqn.primitive.name in _CUT:
      continue
    cts = [None if hj.is_dropped(v) else ct_env.pop(v, None) for v in eqn.outvars]
    if all(ct is None for ct in cts):
      continue
    _STACK.append((i, eqn))
    try:
      cts_in = _apply(frame, i, eqn, cts, in_active)
    finally:
      _STACK.pop()
    for v, ct, a in zip(eqn.invars, cts_in, in_active):
      if a:
        _accumulate(ct_env, v, ct)
  return [ct_env.get(v) if v in active else None for v in frame.invars]


def _apply(frame: Frame, i: int, eqn, cts: list, in_active: list) -> list:
  """One equation's input cotangents: its nested handler's, or its rule's."""
  args = hj.read_inputs(frame.env, eqn)
  handler = nested.handler(eqn)
  if handler is not None and handler.backward is not None:
    with hj.eqn_context(eqn):
      cts_in = handler.backward(eqn, frame.children.get(i), args, cts, in_active)
    _notify(eqn, None, cts, cts_in)
    return cts_in
  layer = hj.layer_op(eqn)
  rule_name, params = layer if layer is not None else (eqn.primitive.name, eqn.params)
  rule = lookup(rule_name)
  if rule is None and handler is not None and handler.unsupported is not None:
    loc = _source_line(eqn)
    raise NotImplementedError(handler.message(eqn) + (f"; at {loc}" if loc else ""))
  if rule is None:
    raise missing_rule_error(rule_name, _source_line(eqn))
  # One output: the array (never None: the rule runs only when blame arrived).
  # Several (a multiple-results primitive, a layer op returning a tuple): the list,
  # None where no blame arrived.
  one = len(eqn.outvars) == 1 if layer is not None else not eqn.primitive.multiple_results
  g, ans = (cts[0], frame.outs[i][0]) if one else (list(cts), frame.outs[i])
  with hj.eqn_context(eqn):
    cts_in = rule(g, ans, *args, **params)
  cts_in = check_cotangents(rule_name, eqn, cts_in, in_active)
  _notify(eqn, rule_name if layer is not None else None, cts, cts_in)
  return cts_in


def check_cotangents(rule_name: str, eqn, cts_in, in_active, *, cast: bool = False) -> list:
  """Fails loudly when a rule returns the wrong number, shape or dtype of cotangents.

  With ``cast`` (a user's ``custom_vjp`` backward), a floating-point cotangent of the
  right shape but another dtype (float32 for a bfloat16 primal) is cast to the
  primal's dtype: JAX accepts such a cotangent too.
  """
  n = len(eqn.invars)
  loc = _source_line(eqn)
  loc = f" (at {loc})" if loc else ""
  if not isinstance(cts_in, (tuple, list)):
    raise RuleError(f"VJP rule '{rule_name}' must return a tuple with one cotangent per "
                    f"argument ({n}), got {type(cts_in).__name__}{loc}")
  if len(cts_in) != n:
    raise RuleError(f"VJP rule '{rule_name}' returned {len(cts_in)} cotangents for "
                    f"{n} arguments{loc}")
  out = []
  for k, (v, ct, a) in enumerate(zip(eqn.invars, cts_in, in_active)):
    if ct is None or not a:
      out.append(None)
      continue
    aval = v.aval
    shape, dtype = getattr(ct, "shape", None), getattr(ct, "dtype", None)
    if dtype is None:
      raise RuleError(f"VJP rule '{rule_name}' returned a {type(ct).__name__} for argument "
                      f"{k}; expected an array of shape {aval.shape} and dtype {aval.dtype}{loc}")
    if tuple(shape) != tuple(aval.shape):
      raise RuleError(f"VJP rule '{rule_name}' returned a cotangent of shape {tuple(shape)} "
                      f"for argument {k}, whose shape is {tuple(aval.shape)}{loc}")
    if dtype != aval.dtype:
      if cast and is_float(aval) and hj.is_float(ct):
        ct = lax.convert_element_type(ct, aval.dtype)
      else:
        raise RuleError(f"VJP rule '{rule_name}' returned a cotangent of dtype {dtype} for "
                        f"argument {k}, whose dtype is {aval.dtype}{loc}")
    out.append(hj.match_sharding(ct, aval))
  return out


# The custom_vjp bwd-result shim lives in jaxpr.py; tests/_src/test_transforms.py
# still imports it from here under its former name.
_bwd_cotangents = hj.bwd_cotangents
