"""Equations that hold jaxprs: what each kind records in the forward pass and how its
backward pass runs.

The engine (:mod:`handgrad._src.engine`) looks an equation up here before the rule
registry.  Each kind has a :class:`Handler`:

============================  ===================================  ================================
kind                          forward record                       backward
============================  ===================================  ================================
``jit`` (not a layer op)      the body's :class:`engine.Frame`     the body's hand backward pass
``custom_jvp_call``           nothing                              transpose the user's JVP by hand
``custom_vjp_call``           :class:`CustomVJPRecord`             the user's ``bwd``
checkpoint (``remat2``)       :class:`CheckpointRecord`            recompute the region, then back
``cond``                      nothing                              ``lax.switch`` over branch VJPs
``scan``                      :class:`ScanRecord`                  a reversed scan
``while``                     —                                    an error: not differentiable
``call_hi_primitive``         —                                    an error naming the JAX flag
============================  ===================================  ================================

A layer-level op is a ``jit`` too, but it is one node with its own rule: it never
reaches this table.  Other code adds kinds with :func:`register`.

No blame: a cotangent of ``None`` is a symbolic zero (the value received no blame)
everywhere in the engine, in what a rule receives and in what it returns.  A handler
turns ``None`` into zeros only where the code it calls needs arrays: the user's
``custom_vjp`` ``bwd`` and ``custom_jvp`` rule (JAX's contract), and the fixed
structure a ``lax.switch`` branch or a ``lax.scan`` body must return.  A
``custom_vjp(symbolic_zeros=True)`` backward gets JAX's ``SymbolicZero`` instead, as
JAX gives it.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable, Sequence

import jax
import numpy as np
from jax import lax

from handgrad._src import jaxpr as hj

#: ``forward(eqn, invals, in_active, remat) -> (outs, record)``.
Forward = Callable[[Any, list, list, Any], tuple[list, Any]]
#: ``backward(eqn, record, args, cts, in_active) -> cts_in`` (``None`` = no blame).
Backward = Callable[[Any, Any, list, list, list], list]


@dataclasses.dataclass(frozen=True)
class Handler:
  """How the engine differentiates one kind of nested equation.

  ``forward`` evaluates the equation and returns what its backward needs (without it
  the equation is bound as it is); ``backward`` returns its inputs' cotangents;
  ``unsupported`` (a message, or a function of the equation giving one) is raised
  when such an equation must be differentiated and no rule is registered for it.
  """
  forward: Forward | None = None
  backward: Backward | None = None
  unsupported: str | Callable[[Any], str] | None = None

  def message(self, eqn) -> str:
    return self.unsupported(eqn) if callable(self.unsupported) else str(self.unsupported)


_HANDLERS: dict[str, Handler] = {}


def register(name: str, *, forward: Forward | None = None, backward: Backward | None = None,
             unsupported: str | Callable[[Any], str] | None = None) -> Handler:
  """Registers how the engine differentiates equations of primitive ``name``."""
  if forward is None and backward is None and unsupported is None:
    raise TypeError(f"nested.register({name!r}) needs forward, backward or unsupported")
  handler = Handler(forward, backward, unsupported)
  _HANDLERS[name] = handler
  return handler


def handler(eqn) -> Handler | None:
  """The handler of ``eqn``, or ``None`` (a primitive, or a layer-level op)."""
  if hj.layer_op(eqn) is not None:
    return None
  return _HANDLERS.get(eqn.primitive.name)


def has_forward(eqn) -> bool:
  """Whether ``eqn``'s kind records a forward pass of its own (layer ops included:
  a checkpoint policy never saves such an equation's outputs)."""
  h = _HANDLERS.get(eqn.primitive.name)
  return h is not None and h.forward is not None


def _engine():
  # The handlers run the engine's interpreters on nested jaxprs; the engine imports
  # this module, so it is imported here, at call time.
  from handgrad._src import engine
  return engine


def zeros(aval):
  """Zeros of ``aval``, carrying its sharding and varying manual axes (see
  :func:`handgrad._src.jaxpr.zeros`)."""
  return hj.zeros(aval)


def instantiate(cts: Sequence[Any], avals: Sequence[Any]) -> list:
  """``cts`` with zeros in place of ``None``."""
  return [zeros(a) if ct is None else ct for ct, a in zip(cts, avals)]


def _active_only(cts, avals, mask) -> list:
  """The cotangents where ``mask`` is set, zeros for missing ones: the fixed structure
  a ``lax.switch`` branch or a ``lax.scan`` body must return."""
  return instantiate([ct for ct, m in zip(cts, mask) if m], [a for a, m in zip(avals, mask) if m])


def _spread(values, mask) -> list:
  """The inverse of :func:`_active_only`'s selection: ``values`` back at the set
  positions of ``mask``, ``None`` (no blame) elsewhere."""
  it = iter(values)
  return [next(it) if m else None for m in mask]


def _at(eqn) -> str:
  line = hj.source_line(eqn, _engine().enclosing())
  return f" (at {line})" if line else ""


# --- jit ---------------------------------------------------------------------------------

def _jit_forward(eqn, invals, in_active, remat):
  closed = eqn.params["jaxpr"]
  with hj.eqn_context(eqn):
    return _engine().forward(hj.unwrap(closed), closed.consts, invals, in_active, remat)


def _jit_backward(eqn, frame, args, cts, in_active):
  return _engine().backward(frame, cts)


# --- custom_jvp ----------------------------------------------------------------------------

def _custom_jvp_backward(eqn, record, args, cts, in_active):
  # The user's JVP rule is linear in the tangents; the VJP is its transpose, which is
  # exactly the hand reverse pass of ``t -> jvp(x, t)`` at any t (we use t = 0).
  engine = _engine()
  p = eqn.params
  nc = p["num_consts"]
  if any(in_active[:nc]):
    raise NotImplementedError(
        "differentiating a custom_jvp function with respect to a closed-over value "
        f"is not supported{_at(eqn)}")
  primals = args[nc:]
  # Rules written without symbolic_zeros expect every tangent as an array: JAX
  # instantiates zeros for them, and so do we.
  if p.get("symbolic_zeros", False):
    tangent_zero = [not a for a in in_active[nc:]]
  else:
    tangent_zero = [False] * len(primals)
  jvp_jaxpr, jvp_consts, out_zeros = p["jvp_jaxpr_fun"].call_wrapped(*tangent_zero)
  tangents = [zeros(v.aval) if hj.is_float(v.aval)
              else np.zeros(v.aval.shape, jax.dtypes.float0)
              for v, z in zip(eqn.invars[nc:], tangent_zero) if not z]
  _, frame = engine.forward(jvp_jaxpr, jvp_consts, [*primals, *tangents],
                            [False] * len(primals) + [True] * len(tangents))
  nz_cts = [ct for ct, z in zip(cts, out_zeros) if not z]
  t_cts = iter(engine.backward(frame, [None] * len(out_zeros) + nz_cts)[len(primals):])
  return [None] * nc + [None if z else next(t_cts) for z in tangent_zero]


# --- custom_vjp ----------------------------------------------------------------------------

@dataclasses.dataclass
class CustomVJPRecord:
  """What a ``custom_vjp`` equation's forward leaves: the residuals of the user's
  ``fwd``, forwarded inputs included, in the order its ``bwd`` takes them."""
  residuals: list


def _custom_vjp_forward(eqn, invals, in_active, remat):
  p = eqn.params
  nc = p["num_consts"]
  if any(in_active[:nc]):
    raise TypeError(
        "Detected differentiation of a custom_vjp function with respect to a closed-over "
        f"value; pass it to the custom_vjp function as an argument instead{_at(eqn)}")
  primals = invals[nc:]
  fwd_jaxpr, fwd_consts = p["fwd_jaxpr_thunk"].call_wrapped(*[bool(a) for a in in_active[nc:]])
  with hj.eqn_context(eqn):
    res_and_outs, _ = _engine().forward(fwd_jaxpr, fwd_consts, primals, [False] * len(primals))
  _, outs = hj.custom_vjp_residuals(p, invals, res_and_outs)
  # ``bwd`` gets literal residuals (Python scalars the forward returned) as JAX gives
  # them; the outputs stay arrays, as every rule expects.
  res, _ = hj.custom_vjp_residuals(p, invals, hj.raw_literal_outputs(fwd_jaxpr, res_and_outs))
  return outs, CustomVJPRecord(res)


def _custom_vjp_backward(eqn, record, args, cts, in_active):
  nc = eqn.params["num_consts"]
  if eqn.params.get("symbolic_zeros", False):
    # The user asked for symbolic zeros: JAX passes them for outputs without blame.
    cts = [hj.symbolic_zero(v.aval) if ct is None else ct for ct, v in zip(cts, eqn.outvars)]
  else:
    cts = instantiate(cts, [v.aval for v in eqn.outvars])
  cts_in = hj.bwd_cotangents(eqn.params["bwd"].call_wrapped(*record.residuals, *cts))
  cts_in = [None if hj.is_symbolic_zero(ct) else ct for ct in cts_in]
  return _engine().check_cotangents(f"custom_vjp:{eqn.params.get('name', '?')}", eqn,
                                    [None] * nc + cts_in, in_active, cast=True)


# --- checkpoint ----------------------------------------------------------------------------

@dataclasses.dataclass
class RematRecord:
  """The values a checkpoint region's policy saves, in evaluation order; recorded in
  the forward pass and replayed (``replay=True``) when the region is recomputed."""
  policy: Any
  saved: list
  replay: bool = False

  def saves(self, eqn) -> bool:
    """Whether the policy saves ``eqn``'s outputs (nested kinds are entered, never
    saved whole)."""
    if self.policy is None or has_forward(eqn):
      return False
    return hj.saveable(self.policy(eqn.primitive, *[v.aval for v in eqn.invars], **eqn.params))

  def outputs(self, eqn, invals) -> list:
    """``eqn``'s outputs: the saved ones when replaying, else evaluated and saved."""
    if self.replay:
      return self.saved.pop(0)
    outs = hj.bind(eqn, invals)
    self.saved.append(outs)
    return outs


@dataclasses.dataclass
class CheckpointRecord:
  """What a checkpoint region's forward leaves: its inputs and the saved values."""
  invals: list
  remat: RematRecord


def _remat_forward(eqn, invals, in_active, remat):
  record = RematRecord(eqn.params.get("policy"), [])
  outs, _ = _engine().forward(eqn.params["jaxpr"], [], invals, in_active, record)
  return outs, CheckpointRecord(list(invals), record)


def _remat_backward(eqn, record, args, cts, in_active):
  # Recompute the region from its inputs and the values its policy saved.  The
  # optimisation barrier stops XLA from merging the recomputation with the forward
  # pass, which would keep every intermediate alive and undo the memory saving (as
  # jax.checkpoint does).  The incoming cotangents go through the same barrier, so the
  # recomputation depends on the backward pass having reached this region: otherwise a
  # region whose inputs are all parameters could be recomputed at the very start of
  # the program and stay live throughout.  Note: XLA:CPU expands optimisation barriers
  # before its CSE pass ("cse_barrier_expander"), which undoes rematerialisation for
  # jax.grad and handgrad alike; bench/remat.py disables that pass on CPU.
  engine = _engine()
  keep = [i for i, v in enumerate(eqn.invars) if not hj.is_literal(v)]
  barriered, saved, cts = lax.optimization_barrier(
      ([record.invals[i] for i in keep], record.remat.saved, list(cts)))
  invals = list(record.invals)
  for i, x in zip(keep, barriered):
    invals[i] = x
  replay = RematRecord(record.remat.policy, list(saved), replay=True)
  _, frame = engine.forward(eqn.params["jaxpr"], [], invals, in_active, replay)
  return engine.backward(frame, cts)


# --- cond ----------------------------------------------------------------------------------

def _cond_backward(eqn, record, args, cts, in_active):
  engine = _engine()
  index, operands = args[0], args[1:]
  act = in_active[1:]
  cts = instantiate(cts, [v.aval for v in eqn.outvars])

  def branch_vjp(closed):
    def run(ops, cts):
      _, frame = engine.forward(hj.unwrap(closed), closed.consts, ops, act)
      return _active_only(engine.backward(frame, cts), [v.aval for v in frame.invars], act)
    return run

  active_cts = lax.switch(index, [branch_vjp(b) for b in eqn.params["branches"]], operands, cts)
  return [None, *_spread(active_cts, act)]


# --- scan ----------------------------------------------------------------------------------

@dataclasses.dataclass
class ScanRecord:
  """What a scan's forward leaves: the carry entering every iteration, stacked along
  a new leading axis (one list entry per carry), and, for a body checkpointed with a
  policy, the values the policy saves in every iteration (stacked the same way)."""
  carries: list
  saved: list | None = None


@dataclasses.dataclass
class _SavingBody:
  """A scan body ``jax.checkpoint(f, policy=p)``: the checkpoint's own jaxpr, run with
  ``p`` per iteration (see :func:`_saving_body`)."""
  jaxpr: Any
  n_body_consts: int
  policy: Any


def _saving_body(body) -> _SavingBody | None:
  """The policy to honour for a scan body, or ``None`` for the default.

  By default the backward pass recomputes every iteration's forward from its saved
  carry (memory-lean: only carries are kept, as ``jax.grad`` with a checkpointed
  body).  A body that is one ``jax.checkpoint`` region with a ``policy`` keeps, per
  iteration, the values that policy saves, as ``jax.grad`` does with that body: with
  ``jax.checkpoint_policies.everything_saveable`` nothing is recomputed (jax.grad's
  time and memory); ``dots_saveable`` keeps the matrix products, and so on.  Measured
  on a tanh RNN training step (``bench/scan.py``, CPU, H=256, T=32 to 512): the
  default takes 1.09–1.27× jax.grad's time at 0.35–0.41× its temp memory (the same
  time and memory as jax.grad with a checkpointed body); ``everything_saveable`` takes
  0.95–1.05× jax.grad's time at 0.68–0.70× its memory.  A region
  without a policy (``jax.checkpoint``'s default: save nothing) saves nothing: the
  default, with the region's own jaxpr run in place (so that the region is not
  recomputed a second time inside the recomputed iteration).
  """
  open_body = hj.unwrap(body)
  if len(open_body.eqns) != 1:
    return None
  eqn = open_body.eqns[0]
  if not hj.is_checkpoint(eqn):
    return None
  constvars, invars = hj.input_vars(open_body, len(body.consts))
  if (list(eqn.invars) != [*constvars, *invars] or
      list(eqn.outvars) != list(open_body.outvars)):
    return None
  return _SavingBody(eqn.params["jaxpr"], len(body.consts), eqn.params["policy"])


def _run_body(body, saving: _SavingBody | None, consts, carry, x, active, remat):
  """``engine.forward`` of one iteration: the body itself, or the checkpoint region
  inside it with the policy's record ``remat``."""
  engine = _engine()
  if saving is None:
    return engine.forward(hj.unwrap(body), body.consts, [*consts, *carry, *x], active)
  return engine.forward(saving.jaxpr, [], [*body.consts, *consts, *carry, *x],
                        [False] * saving.n_body_consts + list(active), remat)


def _body_activity(body, consts_a, carry_a, xs_a, ncarry) -> list[bool]:
  """Activity of the scan body's inputs: consts, carries, xs.

  A carry is active when its initial value is, or when the body mixes an active value
  into it on some iteration: a fixed point over the body (``num_carry`` rounds at most).
  """
  engine = _engine()
  carry_a = list(carry_a)
  while True:
    out_a = engine.active_outputs(body, [*consts_a, *carry_a, *xs_a])
    grown = [a or b for a, b in zip(carry_a, out_a[:ncarry])]
    if grown == carry_a:
      return [*consts_a, *carry_a, *xs_a]
    carry_a = grown


def _scan_forward(eqn, invals, in_active, remat):
  # Evaluate the loop and keep the carry entering every iteration; the backward pass
  # recomputes each iteration's forward from it.  A body checkpointed with a policy
  # also keeps what the policy saves; it is recorded with the same activity as the
  # backward pass replays it, so that both visit the same equations in the same order.
  engine = _engine()
  p = eqn.params
  nc, ncarry = hj.scan_counts(p)
  body = p["jaxpr"]
  consts, init, xs = invals[:nc], invals[nc:nc + ncarry], invals[nc + ncarry:]
  saving = _saving_body(body)
  if saving is None:
    active = [False] * len(invals)
  else:
    active = _body_activity(hj.unwrap(body), in_active[:nc], in_active[nc:nc + ncarry],
                            in_active[nc + ncarry:], ncarry)

  def step(carry, x):
    record = RematRecord(saving.policy, []) if saving is not None else None
    outs, _ = _run_body(body, saving, consts, carry, x, active, record)
    return outs[:ncarry], (outs[ncarry:], carry, record.saved if record else [])

  with hj.eqn_context(eqn):
    final, (ys, carries, saved) = lax.scan(step, list(init), list(xs), length=p["length"],
                                           reverse=p["reverse"], unroll=p["unroll"])
  return [*final, *ys], ScanRecord(carries, saved if saving is not None else None)


def _scan_backward(eqn, record, args, cts, in_active):
  """The reverse of a scan is a scan in the other direction.

  Each backward iteration recomputes its forward iteration from the saved carry (as if
  the body were checkpointed: one extra forward of the body, and only the carries are
  kept, not every residual), runs the hand backward pass over the body, passes the
  carry cotangent on to the previous iteration and sums the constants' cotangents.
  For a body ``jax.checkpoint(f, policy=p)`` the values ``p`` saved in the forward
  iteration are replayed instead of recomputed (:func:`_saving_body`).
  """
  engine = _engine()
  p = eqn.params
  nc, ncarry = hj.scan_counts(p)
  body = p["jaxpr"]
  open_body = hj.unwrap(body)
  consts, xs = args[:nc], args[nc + ncarry:]
  body_active = _body_activity(open_body, in_active[:nc], in_active[nc:nc + ncarry],
                               in_active[nc + ncarry:], ncarry)
  consts_a, carry_a, xs_a = (body_active[:nc], body_active[nc:nc + ncarry],
                             body_active[nc + ncarry:])
  ct_carry, ct_ys = cts[:ncarry], cts[ncarry:]
  avals = [v.aval for v in hj.input_vars(body, len(body.consts))[1]]
  consts_avals, carry_avals, xs_avals = avals[:nc], avals[nc:nc + ncarry], avals[nc + ncarry:]
  # Only active carries and constants have cotangents in the loop state; ys cotangents
  # that never arrived are not stacked at all.
  ct_carry0 = _active_only(ct_carry, carry_avals, carry_a)
  ct_consts0 = _active_only([None] * nc, consts_avals, consts_a)
  present = [ct is not None for ct in ct_ys]
  ct_ys_given = [ct for ct in ct_ys if ct is not None]

  saving = _saving_body(body) if record.saved is not None else None

  def step(state, inp):
    ct_k, ct_c = state
    carry, x, ct_y, saved = inp
    replay = RematRecord(saving.policy, list(saved), replay=True) if saving else None
    _, frame = _run_body(body, saving, consts, carry, x, body_active, replay)
    cts_in = engine.backward(frame, [*_spread(ct_c, carry_a), *_spread(ct_y, present)])
    ct_k_in = [ct for ct, a in zip(cts_in[:nc], consts_a) if a]
    new_ct_k = [acc if ct is None else acc + ct for acc, ct in zip(ct_k, ct_k_in)]
    new_ct_c = _active_only(cts_in[nc:nc + ncarry], carry_avals, carry_a)
    return (new_ct_k, new_ct_c), _active_only(cts_in[nc + ncarry:], xs_avals, xs_a)

  # The loop state lists the constants' cotangents before the carry's, the order of
  # jax's own scan transpose: with the other order XLA:CPU's default scheduler ran the
  # same loop body 1.15× slower (bench/scan.py).
  with engine.suspended_observers():
    (ct_consts, ct_init), ct_xs = lax.scan(
        step, (ct_consts0, ct_carry0),
        (record.carries, list(xs), ct_ys_given, record.saved or []),
        length=p["length"], reverse=not p["reverse"], unroll=p["unroll"])
  ct_init = [ct if a else None for ct, a in
             zip(_spread(ct_init, carry_a), in_active[nc:nc + ncarry])]
  return [*_spread(ct_consts, consts_a), *ct_init, *_spread(ct_xs, xs_a)]


# --- the table -----------------------------------------------------------------------------

register("jit", forward=_jit_forward, backward=_jit_backward)
register("custom_jvp_call", backward=_custom_jvp_backward)
register("custom_vjp_call", forward=_custom_vjp_forward, backward=_custom_vjp_backward)
register("cond", backward=_cond_backward)
register("scan", forward=_scan_forward, backward=_scan_backward)
for _name in hj.CHECKPOINT_NAMES:
  register(_name, forward=_remat_forward, backward=_remat_backward)
register("while", unsupported=(
    "reverse-mode differentiation of lax.while_loop is not supported (nor by "
    "jax.grad): its number of iterations is only known at run time.  Use lax.scan, "
    "or lax.fori_loop with static bounds (which becomes a scan)"))
register(hj.HI_PRIMITIVE, unsupported=hj.hi_primitive_message)


# --- shard_map -------------------------------------------------------------------------------

def _mentioned(spec) -> set:
  names = set()
  for entry in spec:
    for name in (entry if isinstance(entry, tuple) else (entry,)):
      if name is not None:
        names.add(name)
  return names


def _unmentioned(mesh, spec, axis_names) -> tuple:
  """The manual axes ``spec`` does not split along, in mesh order."""
  manual = axis_names or frozenset(mesh.axis_names)
  used = _mentioned(spec)
  return tuple(a for a in mesh.axis_names if a in manual and a not in used)


def _ct_spec(spec):
  """The spec of a cotangent of a value with ``spec`` (unreduced ↔ reduced swap on
  jax ≥ 0.10; a plain spec is its own)."""
  to_ct = getattr(spec, "to_ct_spec", None)
  return to_ct() if to_ct is not None else spec


def _shard_map_backward(eqn, record, args, cts, in_active):
  """The backward of a ``shard_map`` is a ``shard_map`` of the body's hand backward
  pass, on the same mesh and manual axes.

  Its inputs are the forward's inputs (specs ``in_specs``) and the cotangents that
  arrived (their outputs' specs); its outputs are the active inputs' cotangents, with
  their inputs' specs.  Each shard runs the hand forward pass of its body again and
  then the hand backward pass over it, as if the body were a ``jax.checkpoint``
  region: no residual crosses the shard_map boundary (a residual would need a spec of
  its own), so a shard_map costs one extra forward evaluation of its body and keeps no
  intermediate alive between the passes.  ``jax.pmap`` traces to a ``shard_map``
  (jax ≥ 0.10) and takes the same path.

  With ``check_vma=False`` (``pmap``) the types do not say which values are
  replicated, and JAX's convention is: an output replicated along the axes its spec
  does not name is one copy of it, so its cotangent is divided by their size; an
  input replicated along unnamed axes gets the sum of its copies' cotangents
  (``psum`` over them).  With ``check_vma=True`` the body's ``pvary``/``psum_invariant``
  equations do that themselves.
  """
  engine = _engine()
  sm = hj.shard_map_params(eqn.params)
  body, mesh, axis_names = sm["body"], sm["mesh"], sm["axis_names"]
  check_vma = sm["check_vma"]
  present = [ct is not None for ct in cts]
  given = []
  for ct, spec in zip(cts, sm["out_specs"]):
    if ct is None:
      continue
    if not check_vma:
      copies = math.prod(mesh.shape[a] for a in _unmentioned(mesh, _ct_spec(spec), axis_names))
      if copies != 1:
        ct = lax.div(ct, lax.convert_element_type(copies, ct.dtype))
    given.append(ct)
  body_avals = [v.aval for v in body.invars]
  n = len(args)

  def backward_body(*xs):
    _, frame = engine.forward(body, [], list(xs[:n]), in_active)
    cts_in = engine.backward(frame, _spread(xs[n:], present))
    if not check_vma:
      collective = hj.collective("psum")
      for k, (ct, spec) in enumerate(zip(cts_in, sm["in_specs"])):
        axes = _unmentioned(mesh, _ct_spec(spec), axis_names)
        if ct is not None and axes:
          cts_in[k] = collective.bind(ct, axes=axes, axis_index_groups=None)
    return tuple(_active_only(cts_in, body_avals, in_active))

  in_specs = (*sm["in_specs"], *[_ct_spec(s) for s, p in zip(sm["out_specs"], present) if p])
  out_specs = tuple(_ct_spec(s) for s, a in zip(sm["in_specs"], in_active) if a)
  with hj.backward_pass():
    active_cts = jax.shard_map(backward_body, mesh=mesh, in_specs=in_specs,
                               out_specs=out_specs, axis_names=axis_names,
                               check_vma=check_vma)(*args, *given)
  return _spread(active_cts, in_active)


register("shard_map", backward=_shard_map_backward)
