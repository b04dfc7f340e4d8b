"""Hand-written reverse mode over jaxprs.

``forward`` evaluates a jaxpr equation by equation and keeps every value (the
residuals a rule may need); ``backward`` walks the equations in reverse, looks up each
equation's hand-written rule in the registry and accumulates cotangents ("blame passed
backwards").  Both run as ordinary JAX code, so under ``jax.jit`` they run once, at
trace time, and XLA compiles the result; residuals that no rule reads are dead code.

Conventions:

* A variable is *active* when it is a floating-point value that depends on a
  differentiated input.  Only equations with an active input are differentiated;
  ``stop_gradient`` cuts activity.  A cotangent of ``None`` is a symbolic zero: the
  variable never received blame.  That distinction (missing versus zero) is kept until
  the public API instantiates zeros.
* Nested jaxprs are handled here, not in the registry: ``jit`` (descend, or apply the
  rule of a layer-level op), ``custom_jvp_call`` (transpose the user's JVP rule with the
  hand rules), ``custom_vjp_call`` (run the user's forward and backward),
  ``remat2``/``checkpoint`` (recompute in the backward pass), ``cond`` and ``scan``
  (a reversed scan that recomputes each iteration from its saved carry).
* No JAX autodiff runs here: no ``jax.vjp``/``jax.grad``/``jax.linearize`` and no JAX
  JVP or transpose rule.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax._src import source_info_util
from jax.extend import core as jex

from handgrad._src import layer_ops
from handgrad._src.registry import RuleError, lookup, missing_rule_error

# Primitives whose output never carries blame back to its input.
_CUT = frozenset({"stop_gradient"})
# Names the checkpoint primitive has had across JAX releases.
_REMAT_NAMES = ("remat2", "checkpoint", "remat")


def is_float(aval) -> bool:
  return jax.dtypes.issubdtype(aval.dtype, jnp.inexact)


def zeros(aval):
  return lax.full(aval.shape, 0, aval.dtype)


def where(eqn) -> str:
  """The user's source line for an equation, as ``file:line (function)``."""
  try:
    return source_info_util.summarize(eqn.source_info)
  except Exception:  # source info is best-effort; never hide the real error
    return ""


@dataclasses.dataclass
class Frame:
  """What the forward pass of one jaxpr leaves for its backward pass."""
  jaxpr: Any
  env: dict  # Var -> value
  active: set  # active Vars
  outs: dict  # eqn index -> list of output values
  children: dict  # eqn index -> record of a nested equation's forward


@dataclasses.dataclass
class RematRecord:
  """Forward record of a checkpoint region: its inputs and the values its policy saves."""
  policy: Any
  saved: list
  replay: bool = False


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


# Indices of the equations being differentiated, outermost jaxpr first.
_PATH: list[int] = []


def current_path() -> tuple[int, ...]:
  """Where the equation being differentiated sits, for observers.

  ``(i,)`` is equation ``i`` of the jaxpr that ``backward`` was called on;
  ``(i, j)`` is equation ``j`` of the jaxpr nested in equation ``i`` (a ``jit``,
  ``checkpoint``, ``cond`` branch or the JVP of a ``custom_jvp`` function), and so on.
  The path is relative to the outermost ``backward`` call running.
  """
  return tuple(_PATH)


class observe:
  """Context manager: attach ``observer`` to every backward pass run inside it."""

  def __init__(self, observer: Observer):
    self.observer = observer

  def __enter__(self):
    _OBSERVERS.append(self.observer)
    return self.observer

  def __exit__(self, *exc):
    _OBSERVERS.remove(self.observer)


class _suspended_observers:
  """No observer sees the equations inside a loop body: their values are the body's
  per-iteration tracers, which must not leave it.  The loop equation itself is still
  reported, with the loop's own cotangents."""

  def __enter__(self):
    self.saved = list(_OBSERVERS)
    _OBSERVERS.clear()

  def __exit__(self, *exc):
    _OBSERVERS[:] = self.saved


# -------------------------------------------------------------------------------------
# Forward interpreter.

def _read(env, v):
  if isinstance(v, jex.Literal):
    # Literals may hold Python scalars; rules see arrays with the literal's dtype.
    return np.asarray(v.val, dtype=v.aval.dtype)
  return env[v]


def _context(eqn):
  name_stack = source_info_util.current_name_stack() + eqn.source_info.name_stack
  return source_info_util.user_context(eqn.source_info.traceback, name_stack=name_stack)


def bind(eqn, invals):
  """Evaluates one equation on ``invals``; always returns a list of outputs."""
  params = eqn.primitive.get_bind_params(eqn.params)
  subfuns = ()
  if isinstance(params, tuple):  # older JAX: (subfuns, params)
    subfuns, params = params
  with _context(eqn), eqn.ctx.manager:
    out = eqn.primitive.bind(*subfuns, *invals, **params)
  return list(out) if eqn.primitive.multiple_results else [out]


def forward(jaxpr, consts, args, active_in, remat: RematRecord | None = None) -> tuple[list, Frame]:
  """Evaluates ``jaxpr`` and records what the backward pass needs.

  ``active_in[i]`` says whether ``args[i]`` is differentiated.  Inside a checkpoint
  region ``remat`` records (or, in the backward pass, replays) the values its policy
  saves, in evaluation order.
  """
  env: dict = {}
  active: set = set()
  for v, x in zip(jaxpr.constvars, consts):
    env[v] = x
  for v, x, a in zip(jaxpr.invars, args, active_in):
    env[v] = x
    if a and is_float(v.aval):
      active.add(v)
  frame = Frame(jaxpr, env, active, {}, {})
  for i, eqn in enumerate(jaxpr.eqns):
    invals = [_read(env, v) for v in eqn.invars]
    in_active = [not isinstance(v, jex.Literal) and v in active for v in eqn.invars]
    differentiated = any(in_active) and eqn.primitive.name not in _CUT
    if remat is not None and _remat_saves(remat, eqn):
      if remat.replay:
        outs = remat.saved.pop(0)
      else:
        outs = bind(eqn, invals)
        remat.saved.append(outs)
    elif differentiated and eqn.primitive.name in _NESTED_FORWARD:
      outs, frame.children[i] = _NESTED_FORWARD[eqn.primitive.name](eqn, invals, in_active, remat)
    else:
      outs = bind(eqn, invals)
    frame.outs[i] = outs
    for v, x in zip(eqn.outvars, outs):
      if isinstance(v, jex.DropVar):
        continue
      env[v] = x
      if differentiated and is_float(v.aval):
        active.add(v)
  return [_read(env, v) for v in jaxpr.outvars], frame


# -------------------------------------------------------------------------------------
# Backward interpreter.

def _accumulate(ct_env, v, ct):
  if ct is None:
    return
  ct_env[v] = ct if v not in ct_env else lax.add(ct_env[v], ct)


def backward(frame: Frame, cts_out: Sequence[Any]) -> list:
  """Cotangents of ``frame.jaxpr``'s inputs given its outputs' (``None`` = zero)."""
  jaxpr, active = frame.jaxpr, frame.active
  ct_env: dict = {}
  for v, ct in zip(jaxpr.outvars, cts_out):
    if not isinstance(v, jex.Literal) and v in active:
      _accumulate(ct_env, v, ct)
  for i in range(len(jaxpr.eqns) - 1, -1, -1):
    eqn = jaxpr.eqns[i]
    in_active = [not isinstance(v, jex.Literal) and v in active for v in eqn.invars]
    if not any(in_active) or eqn.primitive.name in _CUT:
      continue
    cts = [None if isinstance(v, jex.DropVar) else ct_env.pop(v, None) for v in eqn.outvars]
    if all(ct is None for ct in cts):
      continue
    _PATH.append(i)
    try:
      cts_in = _apply(frame, i, eqn, cts, in_active)
    finally:
      _PATH.pop()
    for v, ct, a in zip(eqn.invars, cts_in, in_active):
      if a:
        _accumulate(ct_env, v, ct)
  return [ct_env.get(v) if v in active else None for v in jaxpr.invars]


def _instantiate(cts, avals):
  return [zeros(a) if ct is None else ct for ct, a in zip(cts, avals)]


def _active_only(cts, avals, mask) -> list:
  """The cotangents where ``mask`` is set, zeros for missing ones: the fixed structure
  a ``lax.switch`` branch or a ``lax.scan`` body must return."""
  return _instantiate([ct for ct, m in zip(cts, mask) if m], [a for a, m in zip(avals, mask) if m])


def _spread(values, mask) -> list:
  """The inverse of :func:`_active_only`'s selection: ``values`` back at the set
  positions of ``mask``, ``None`` (no blame) elsewhere."""
  it = iter(values)
  return [next(it) if m else None for m in mask]


def _apply(frame: Frame, i: int, eqn, cts: list, in_active: list) -> list:
  name = eqn.primitive.name
  args = [_read(frame.env, v) for v in eqn.invars]
  layer = None
  if name == "jit":
    layer = layer_ops.lookup_instance(eqn.params["name"])
  if layer is None and name in _NESTED_BACKWARD:
    with _context(eqn):
      cts_in = _NESTED_BACKWARD[name](eqn, frame.children.get(i), args, cts, in_active)
    _notify(eqn, None, cts, cts_in)
    return cts_in
  if layer is not None:
    rule_name, params = layer
  else:
    rule_name, params = name, eqn.params
  rule = lookup(rule_name)
  if rule is None and rule_name == "while":
    loc = where(eqn)
    raise NotImplementedError(
        "reverse-mode differentiation of lax.while_loop is not supported (nor by "
        "jax.grad): its number of iterations is only known at run time.  Use lax.scan, "
        "or lax.fori_loop with static bounds (which becomes a scan)"
        f"{'; at ' + loc if loc else ''}")
  if rule is None:
    raise missing_rule_error(rule_name, where(eqn))
  ans = frame.outs[i]
  if layer is None:
    g = _instantiate(cts, [v.aval for v in eqn.outvars])
    if not eqn.primitive.multiple_results:
      g, ans = g[0], ans[0]
  else:
    # A layer-level op's rule gets None for an output that received no blame (such as
    # the attention weights, returned only for the backward pass), so it can skip that
    # term instead of multiplying zeros.
    g = list(cts)
    if len(eqn.outvars) == 1:
      g, ans = g[0], ans[0]
  with _context(eqn):
    cts_in = rule(g, ans, *args, **params)
  cts_in = check_cotangents(rule_name, eqn, cts_in, in_active)
  _notify(eqn, rule_name if layer is not None else None, cts, cts_in)
  return cts_in


def _notify(eqn, layer_name, cts_out, cts_in):
  for obs in _OBSERVERS:
    obs.on_eqn(eqn, layer_name, cts_out, cts_in)


def check_cotangents(rule_name: str, eqn, cts_in, in_active) -> list:
  """Fails loudly when a rule returns the wrong number, shape or dtype of cotangents."""
  n = len(eqn.invars)
  loc = where(eqn)
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
      raise RuleError(f"VJP rule '{rule_name}' returned a cotangent of dtype {dtype} for "
                      f"argument {k}, whose dtype is {aval.dtype}{loc}")
    out.append(ct)
  return out


# -------------------------------------------------------------------------------------
# Nested jaxprs.

def _jit_forward(eqn, invals, in_active, remat):
  if layer_ops.lookup_instance(eqn.params["name"]) is not None:
    return bind(eqn, invals), None  # a layer-level op: one node, its own rule
  closed = eqn.params["jaxpr"]
  with _context(eqn):
    return forward(closed.jaxpr, closed.consts, invals, in_active, remat)


def _jit_backward(eqn, child, args, cts, in_active):
  return backward(child, cts)


def _custom_jvp_backward(eqn, child, args, cts, in_active):
  # The user's JVP rule is linear in the tangents; the VJP is its transpose, which is
  # exactly the hand reverse pass of ``t -> jvp(x, t)`` at any t (we use t = 0).
  p = eqn.params
  nc = p["num_consts"]
  if any(in_active[:nc]):
    raise NotImplementedError(
        f"differentiating a custom_jvp function with respect to a closed-over value "
        f"is not supported{'; at ' + where(eqn) if where(eqn) else ''}")
  primals = args[nc:]
  # Rules written without symbolic_zeros expect every tangent as an array: JAX
  # instantiates zeros for them, and so do we.
  if p.get("symbolic_zeros", False):
    tangent_zero = [not a for a in in_active[nc:]]
  else:
    tangent_zero = [False] * len(primals)
  jvp_jaxpr, jvp_consts, out_zeros = p["jvp_jaxpr_fun"].call_wrapped(*tangent_zero)
  tangents = [zeros(v.aval) if is_float(v.aval) else np.zeros(v.aval.shape, jax.dtypes.float0)
              for v, z in zip(eqn.invars[nc:], tangent_zero) if not z]
  _, frame = forward(jvp_jaxpr, jvp_consts, [*primals, *tangents],
                     [False] * len(primals) + [True] * len(tangents))
  nz_cts = [ct for ct, z in zip(cts, out_zeros) if not z]
  t_cts = iter(backward(frame, [None] * len(out_zeros) + nz_cts)[len(primals):])
  return [None] * nc + [None if z else next(t_cts) for z in tangent_zero]


def _custom_vjp_forward(eqn, invals, in_active, remat):
  p = eqn.params
  nc = p["num_consts"]
  if any(in_active[:nc]):
    raise TypeError(
        "Detected differentiation of a custom_vjp function with respect to a closed-over "
        "value; pass it to the custom_vjp function as an argument instead"
        f"{' (at ' + where(eqn) + ')' if where(eqn) else ''}")
  primals = invals[nc:]
  fwd_jaxpr, fwd_consts = p["fwd_jaxpr_thunk"].call_wrapped(*[bool(a) for a in in_active[nc:]])
  with _context(eqn):
    res_and_outs, _ = forward(fwd_jaxpr, fwd_consts, primals, [False] * len(primals))
  trees = p["out_trees"]()
  res_tree = trees[1]
  input_fwds = trees[2] if len(trees) > 2 else [None] * res_tree.num_leaves
  n_res = res_tree.num_leaves - sum(f is not None for f in input_fwds)
  res_out, outs = res_and_outs[:n_res], res_and_outs[n_res:]
  res_iter = iter(res_out)
  res = [next(res_iter) if f is None else primals[f] for f in input_fwds]
  return outs, res


def _is_symbolic_zero(x) -> bool:
  return x is None or type(x).__name__ in ("Zero", "SymbolicZero")


def _bwd_cotangents(bwd_out):
  """The flat input cotangents returned by a custom_vjp equation's ``bwd``.

  JAX ≤ 0.11.0 returns the list of cotangents; later JAX returns ``(cotangents,
  logs)``, where ``logs`` is ``None`` or a dict (``defvjp_with_logs``).  The logs are
  dropped, as a plain ``jax.vjp`` call drops them.
  """
  if (isinstance(bwd_out, tuple) and len(bwd_out) == 2 and isinstance(bwd_out[0], list)
      and (bwd_out[1] is None or isinstance(bwd_out[1], dict))):
    return bwd_out[0]
  return bwd_out


def _custom_vjp_backward(eqn, res, args, cts, in_active):
  nc = eqn.params["num_consts"]
  cts = _instantiate(cts, [v.aval for v in eqn.outvars])
  cts_in = _bwd_cotangents(eqn.params["bwd"].call_wrapped(*res, *cts))
  cts_in = [None if _is_symbolic_zero(ct) else ct for ct in cts_in]
  return check_cotangents(f"custom_vjp:{eqn.params.get('name', '?')}", eqn,
                          [None] * nc + cts_in, in_active)


def _saveable(decision) -> bool:
  if isinstance(decision, bool):
    return decision
  # jax's policies may also answer with the Saveable / Recompute / Offloadable markers.
  return type(decision).__name__ in ("SaveableType", "Offloadable")


def _remat_saves(remat: RematRecord, eqn) -> bool:
  if remat.policy is None or eqn.primitive.name in _NESTED_FORWARD:
    return False
  return _saveable(remat.policy(eqn.primitive, *[v.aval for v in eqn.invars], **eqn.params))


def _remat_forward(eqn, invals, in_active, remat):
  record = RematRecord(eqn.params.get("policy"), [])
  outs, _ = forward(eqn.params["jaxpr"], [], invals, in_active, record)
  return outs, (invals, record)


def _remat_backward(eqn, child, args, cts, in_active):
  # Recompute the region from its inputs and the values its policy saved.  The
  # optimisation barrier stops XLA from merging the recomputation with the forward
  # pass, which would keep every intermediate alive and undo the memory saving (as
  # jax.checkpoint does).  The incoming cotangents go through the same barrier, so the
  # recomputation depends on the backward pass having reached this region: otherwise a
  # region whose inputs are all parameters could be recomputed at the very start of
  # the program and stay live throughout.  Note: XLA:CPU expands optimisation barriers
  # before its CSE pass ("cse_barrier_expander"), which undoes rematerialisation for
  # jax.grad and handgrad alike; bench/remat.py disables that pass on CPU.
  invals, record = child
  keep = [i for i, v in enumerate(eqn.invars) if not isinstance(v, jex.Literal)]
  barriered, saved, cts = lax.optimization_barrier(
      ([invals[i] for i in keep], record.saved, list(cts)))
  invals = list(invals)
  for i, x in zip(keep, barriered):
    invals[i] = x
  replay = RematRecord(record.policy, list(saved), replay=True)
  _, frame = forward(eqn.params["jaxpr"], [], invals, in_active, replay)
  return backward(frame, cts)


def _cond_backward(eqn, child, args, cts, in_active):
  index, operands = args[0], args[1:]
  act = in_active[1:]
  cts = _instantiate(cts, [v.aval for v in eqn.outvars])

  def branch_vjp(closed):
    def run(ops, cts):
      _, frame = forward(closed.jaxpr, closed.consts, ops, act)
      return _active_only(backward(frame, cts), [v.aval for v in closed.jaxpr.invars], act)
    return run

  active_cts = lax.switch(index, [branch_vjp(b) for b in eqn.params["branches"]], operands, cts)
  return [None, *_spread(active_cts, act)]


def _active_outputs(jaxpr, active_in) -> list[bool]:
  """Which outputs of ``jaxpr`` are active when ``active_in`` of its inputs are.

  The same propagation as :func:`forward`, without evaluating anything.
  """
  active = {v for v, a in zip(jaxpr.invars, active_in) if a and is_float(v.aval)}
  for eqn in jaxpr.eqns:
    if eqn.primitive.name in _CUT:
      continue
    if any(not isinstance(v, jex.Literal) and v in active for v in eqn.invars):
      active.update(v for v in eqn.outvars
                    if not isinstance(v, jex.DropVar) and is_float(v.aval))
  return [not isinstance(v, jex.Literal) and v in active for v in jaxpr.outvars]


def _scan_counts(params) -> tuple[int, int]:
  """``(num_consts, num_carry)`` of a scan equation.

  JAX ≤ 0.10 has them as parameters; JAX 0.11 describes the inputs by a flat tree
  ``ft_in`` of (consts, carry, xs) instead.
  """
  if "num_consts" in params:
    return params["num_consts"], params["num_carry"]
  consts, carry, _ = params["ft_in"].unpack()
  return len(consts), len(carry)


def _scan_body_activity(eqn, in_active) -> list[bool]:
  """Activity of the scan body's inputs: consts, carries, xs.

  A carry is active when its initial value is, or when the body mixes an active value
  into it on some iteration: a fixed point over the body (``num_carry`` rounds at most).
  """
  p = eqn.params
  nc, ncarry = _scan_counts(p)
  body = p["jaxpr"].jaxpr
  consts_a, carry_a, xs_a = in_active[:nc], list(in_active[nc:nc + ncarry]), in_active[nc + ncarry:]
  while True:
    out_a = _active_outputs(body, [*consts_a, *carry_a, *xs_a])
    grown = [a or b for a, b in zip(carry_a, out_a[:ncarry])]
    if grown == carry_a:
      return [*consts_a, *carry_a, *xs_a]
    carry_a = grown


def _scan_forward(eqn, invals, in_active, remat):
  # Evaluate the loop and keep the carry entering every iteration (stacked along a
  # new leading axis); the backward pass recomputes each iteration's forward from it.
  p = eqn.params
  nc, ncarry = _scan_counts(p)
  body = p["jaxpr"]
  consts, init, xs = invals[:nc], invals[nc:nc + ncarry], invals[nc + ncarry:]
  inactive = [False] * len(body.jaxpr.invars)

  def step(carry, x):
    outs, _ = forward(body.jaxpr, body.consts, [*consts, *carry, *x], inactive)
    return outs[:ncarry], (outs[ncarry:], carry)

  with _context(eqn):
    final, (ys, carries) = lax.scan(step, list(init), list(xs), length=p["length"],
                                    reverse=p["reverse"], unroll=p["unroll"])
  return [*final, *ys], carries


def _scan_backward(eqn, carries, args, cts, in_active):
  """The reverse of a scan is a scan in the other direction.

  Each backward iteration recomputes its forward iteration from the saved carry (as if
  the body were checkpointed: one extra forward of the body, and only the carries are
  kept, not every residual), runs the hand backward pass over the body, passes the
  carry cotangent on to the previous iteration and sums the constants' cotangents.
  """
  p = eqn.params
  nc, ncarry = _scan_counts(p)
  body = p["jaxpr"]
  invars = body.jaxpr.invars
  consts, xs = args[:nc], args[nc + ncarry:]
  body_active = _scan_body_activity(eqn, in_active)
  consts_a, carry_a, xs_a = (body_active[:nc], body_active[nc:nc + ncarry],
                             body_active[nc + ncarry:])
  ct_carry, ct_ys = cts[:ncarry], cts[ncarry:]
  avals = [v.aval for v in invars]
  consts_avals, carry_avals, xs_avals = avals[:nc], avals[nc:nc + ncarry], avals[nc + ncarry:]
  # Only active carries and constants have cotangents in the loop state; ys cotangents
  # that never arrived are not stacked at all.
  ct_carry0 = _active_only(ct_carry, carry_avals, carry_a)
  ct_consts0 = _active_only([None] * nc, consts_avals, consts_a)
  present = [ct is not None for ct in ct_ys]
  ct_ys_given = [ct for ct in ct_ys if ct is not None]

  def step(state, inp):
    ct_k, ct_c = state
    carry, x, ct_y = inp
    _, frame = forward(body.jaxpr, body.consts, [*consts, *carry, *x], body_active)
    cts_in = backward(frame, [*_spread(ct_c, carry_a), *_spread(ct_y, present)])
    ct_k_in = [ct for ct, a in zip(cts_in[:nc], consts_a) if a]
    new_ct_k = [acc if ct is None else acc + ct for acc, ct in zip(ct_k, ct_k_in)]
    new_ct_c = _active_only(cts_in[nc:nc + ncarry], carry_avals, carry_a)
    return (new_ct_k, new_ct_c), _active_only(cts_in[nc + ncarry:], xs_avals, xs_a)

  # The loop state lists the constants' cotangents before the carry's, the order of
  # jax's own scan transpose: with the other order XLA:CPU's default scheduler ran the
  # same loop body 1.15× slower (bench/scan.py).
  with _suspended_observers():
    (ct_consts, ct_init), ct_xs = lax.scan(
        step, (ct_consts0, ct_carry0), (carries, list(xs), ct_ys_given),
        length=p["length"], reverse=not p["reverse"], unroll=p["unroll"])
  ct_init = [ct if a else None for ct, a in
             zip(_spread(ct_init, carry_a), in_active[nc:nc + ncarry])]
  return [*_spread(ct_consts, consts_a), *ct_init, *_spread(ct_xs, xs_a)]


_NESTED_FORWARD: dict[str, Callable] = {
    "jit": _jit_forward,
    "custom_vjp_call": _custom_vjp_forward,
    "scan": _scan_forward,
    **{name: _remat_forward for name in _REMAT_NAMES},
}
_NESTED_BACKWARD: dict[str, Callable] = {
    "jit": _jit_backward,
    "custom_jvp_call": _custom_jvp_backward,
    "custom_vjp_call": _custom_vjp_backward,
    "cond": _cond_backward,
    "scan": _scan_backward,
    **{name: _remat_backward for name in _REMAT_NAMES},
}
