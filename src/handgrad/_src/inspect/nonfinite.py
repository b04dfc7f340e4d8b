"""Where a NaN or inf was born: the first equation, forward or backward, that made one.

``jax_debug_nans`` re-runs the de-optimised program and stops at the first primitive
that produced a NaN; ``checkify`` with ``float_checks`` names a primitive too.  Both
look at JAX's differentiated program: neither says which line of the user's code it
was, whether the forward or the backward pass, or why (experiments/nan_hunt.py).  The
hand engine runs every backward equation itself, next to the forward values, so
:func:`find_nonfinite` runs the step once, jitted, with one finiteness flag per
forward value and per backward cotangent (``isfinite(sum(x·0))``: one reduction each,
which cannot overflow; no host callback), and then follows the non-finite values back
from the loss or the gradients to where they started:

* a *forward* culprit is an equation whose inputs are all finite and one of whose
  outputs is not, on a chain of non-finite values that reaches the loss.  A
  non-finite value that never reaches it (a ``-inf`` mask inside ``jnp.where``,
  ``log(0)`` on the branch ``where`` discards) is not a culprit;
* a *backward* culprit (only looked for when the loss is finite) is an equation whose
  incoming cotangents are finite and one of whose outgoing ones is not, on a chain of
  non-finite cotangents that reaches a gradient.

Of the culprits the first in program order is reported (forward order, then backward
order): everything non-finite after it comes from it.  Only when one is found does a
second jitted run compute the summary statistics of that equation's inputs, which the
diagnosis reads.

Granularity: primitives, layer-level ops (``hg.dense``) and the equations inside plain
``jit`` and ``checkpoint`` regions; a ``custom_jvp``/``custom_vjp`` function, a
``cond`` and a ``scan`` count as one equation each (the hand engine runs their insides
under their own trace).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from handgrad._src import api, engine, layer_ops
from handgrad._src import jaxpr as jaxpr_util
from handgrad._src.inspect import trace as trace_mod

# Primitives that only move elements (each output element is one input element, and
# every input element appears): their output is finite exactly when their inputs are,
# so they can never be where a NaN is born, and their flags are read off their inputs'
# on the host instead of being computed.  The same holds for their cotangents.
# (broadcast_in_dim is forward-only: its backward is a sum, which can overflow.)
_MOVES = frozenset({"reshape", "transpose", "squeeze", "expand_dims", "rev", "copy",
                    "copy_p", "name"})
_MOVES_FORWARD = _MOVES | {"broadcast_in_dim"}

# Unary primitives whose derivative is infinite (or undefined) at some finite input.
_SINGULAR = {"log", "log1p", "sqrt", "rsqrt", "cbrt", "div", "pow", "integer_pow",
             "atan2", "acos", "asin", "atanh", "acosh", "tan", "lgamma", "digamma",
             "erf_inv", "logistic"}
_OVERFLOWING = {"exp", "exp2", "expm1", "pow", "integer_pow", "mul", "square", "sinh",
                "cosh", "dot_general", "reduce_sum", "add", "sub", "cumsum"}


# --- summary statistics ------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class ArrayStats:
  """Summary of one array: shape, dtype, min and max of its finite elements, and how
  many elements are zero, negative, infinite and NaN."""
  shape: tuple[int, ...]
  dtype: str
  min: float
  max: float
  zeros: int
  negatives: int
  infs: int
  nans: int

  def __str__(self) -> str:
    # min > max: no finite element (min and max start at ±float32 max, see _stats_arrays).
    span = (f"min={self.min:.4g} max={self.max:.4g}" if self.min <= self.max
            else "no finite element")
    body = f"{span} zeros={self.zeros} negatives={self.negatives}"
    if self.infs or self.nans:
      body += f" infs={self.infs} nans={self.nans}"
    shape = ",".join(map(str, self.shape))
    return f"{self.dtype}[{shape}] {body}"


def _stats_arrays(x) -> Any:
  x = jnp.asarray(x)
  if not jnp.issubdtype(x.dtype, jnp.number) or x.size == 0:
    z = jnp.zeros((), jnp.float32)
    return jnp.stack([z, z, z, z, z, z])
  if jnp.iscomplexobj(x):
    x = jnp.abs(x)
  xf = x.astype(jnp.promote_types(x.dtype, jnp.float32))
  finite = jnp.isfinite(xf)
  big = jnp.finfo(jnp.float32).max
  lo = jnp.min(jnp.where(finite, xf, big))
  hi = jnp.max(jnp.where(finite, xf, -big))
  count = lambda m: jnp.sum(m).astype(jnp.float32)  # noqa: E731
  return jnp.stack([lo.astype(jnp.float32), hi.astype(jnp.float32), count(xf == 0),
                    count(xf < 0), count(jnp.isinf(xf)), count(jnp.isnan(xf))])


def _to_stats(x_aval, arr) -> ArrayStats:
  lo, hi, zeros, neg, infs, nans = (float(v) for v in np.asarray(arr))
  return ArrayStats(tuple(x_aval.shape), str(x_aval.dtype), lo, hi, int(zeros), int(neg),
                    int(infs), int(nans))


def _all_finite(x) -> Any:
  if x is None:
    return jnp.asarray(True)
  x = jnp.asarray(x)
  if not jnp.issubdtype(x.dtype, jnp.inexact):
    return jnp.asarray(True)
  # x·0 is 0 for a finite x and NaN for ±inf or NaN, so the sum is 0 exactly when every
  # element is finite: unlike sum(x) it cannot overflow, and a float sum vectorises
  # better on CPU than all() over booleans.  (XLA keeps x·0: it does not assume
  # finite math.)
  return jnp.isfinite(jnp.sum(x * jnp.zeros((), x.dtype)))


# --- the report ------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class NonFiniteReport:
  """What :func:`find_nonfinite` found.  ``str(report)`` is a short paragraph.

  Fields (``None`` when everything was finite):

  * ``finite``: loss and every gradient finite;
  * ``phase``: ``"forward"``, ``"backward"`` or ``"input"`` (a non-finite argument);
  * ``primitive``: the culprit's primitive (``"sqrt"``), ``op`` the layer-level op
    (``"softmax_cross_entropy"``) when it is one;
  * ``line``: the user's source line (``file:line (function)``); ``layer``: its named
    scope path (``"layers/2"``, ``""`` outside any); ``eqn_path``: equation indices
    from the outer jaxpr inwards;
  * ``in_shapes``/``out_shapes``; ``inputs``: :class:`ArrayStats` of its operands;
    ``cotangents`` (backward only): of the cotangents arriving at its outputs;
  * ``diagnosis``: what went wrong and how to fix it, for the known patterns;
  * ``loss``: the function's value; ``nonfinite_grads``: the argument paths whose
    gradient is not finite; ``masked``: how many forward values were non-finite
    without reaching the loss (masks, the branch a ``where`` discards).
  """
  finite: bool
  loss: float
  nonfinite_grads: tuple[str, ...] = ()
  phase: str | None = None
  primitive: str | None = None
  op: str | None = None
  line: str = ""
  layer: str = ""
  eqn_path: tuple[int, ...] = ()
  in_shapes: tuple[tuple[int, ...], ...] = ()
  out_shapes: tuple[tuple[int, ...], ...] = ()
  inputs: tuple[ArrayStats, ...] = ()
  cotangents: tuple[ArrayStats, ...] = ()
  diagnosis: str = ""
  masked: int = 0

  @property
  def culprit(self) -> str | None:
    """``"sqrt"`` or ``"hg.softmax_cross_entropy"``, ``None`` when all is finite."""
    if self.finite or self.phase is None:
      return None
    return f"hg.{self.op}" if self.op else self.primitive

  def to_dict(self) -> dict:
    d = dataclasses.asdict(self)
    d["culprit"] = self.culprit
    return d

  def __str__(self) -> str:
    if self.finite:
      s = f"All finite: loss {self.loss:.6g} and every gradient."
      if self.masked:
        s += (f"  ({self.masked} forward value(s) held a NaN or inf that never reached "
              "the loss: masked, or on a discarded jnp.where branch.)")
      return s
    what = f"`{self.culprit}`"
    where = f" at {self.line}" if self.line else ""
    layer = f" in {self.layer}" if self.layer else ""
    if self.phase == "input":
      head = f"Non-finite input: {self.diagnosis}"
      return head
    ins = "; ".join(f"x{k}: {s}" for k, s in enumerate(self.inputs))
    if self.cotangents:
      ins += "; incoming cotangent " + "; ".join(str(s) for s in self.cotangents)
    grads = ""
    if self.nonfinite_grads:
      grads = " Non-finite gradients: " + ", ".join(self.nonfinite_grads[:6]) + (
          " ..." if len(self.nonfinite_grads) > 6 else "") + "."
    return (f"First non-finite value born in the {self.phase} pass of {what}{layer}{where} "
            f"(loss {self.loss:.6g}).{grads} Operands: {ins}.\nDiagnosis: {self.diagnosis}")


# --- the run ----------------------------------------------------------------------------------

@dataclasses.dataclass
class _Meta:
  """Static facts of the traced program, filled in while the jitted run traces."""
  graph: Any = None
  jaxpr: Any = None
  n_consts: int = 0
  n_inputs: int = 0
  value_ids: list = dataclasses.field(default_factory=list)  # order of the value flags
  events: list = dataclasses.field(default_factory=list)  # backward leaf paths in order
  ct_flag_ids: list = dataclasses.field(default_factory=list)  # order of "bwd_ct"
  grad_names: list = dataclasses.field(default_factory=list)
  in_avals: dict = dataclasses.field(default_factory=dict)  # leaf path -> operand avals
  literal_bad: dict = dataclasses.field(default_factory=dict)  # path -> non-finite literal


def _evaluate(graph, jaxpr, consts, args, vals, frame) -> None:
  """Stores every leaf's operands (``vals["in", path]``) and results (``vals[value
  id]``), evaluating ``jaxpr`` as :func:`trace.build_graph` walks it.

  The values come from the engine's forward ``frame`` where it kept them (the outer
  jaxpr and the differentiated plain ``jit`` regions), so the flags read the very
  arrays the backward pass uses; the rest (a ``jit`` on data only, a checkpoint
  region, whose values the engine does not keep) is evaluated again
  (``jaxpr.evaluate_leaves``).
  """

  def visit(p, eqn, invals, outs):
    vals["in", p] = invals
    for n, x in zip(graph.leaves[p].outs, outs):
      vals[n] = x

  jaxpr_util.evaluate_leaves(jaxpr, consts, args, visit, frame=frame)


def _trace_run(fun, args, argnums, has_aux, meta: _Meta, target, with_grads=False):
  """The body of the jitted run: returns flags (and, for ``target``, statistics;
  ``with_grads``: the value and gradients as ``value_and_grad`` returns them)."""
  traced, nums = api.traced_for_argnums(fun, args, {}, argnums, has_aux)
  loss = traced.out
  api._check_scalar(loss)
  jaxpr = traced.frame.jaxpr
  n_consts, n_in = len(jaxpr.constvars), len(jaxpr.invars)
  graph = trace_mod.build_graph(jaxpr, [True] * n_in, n_consts)
  meta.graph, meta.n_inputs, meta.jaxpr, meta.n_consts = graph, n_in, jaxpr, n_consts
  env = traced.frame.env
  consts = [env[v] for v in jaxpr.constvars]
  ins = [env[v] for v in jaxpr.invars]
  vals: dict = {}
  for n, x in enumerate([*consts, *ins]):
    vals[n] = x
  _evaluate(graph, jaxpr, consts, ins, vals, traced.frame)
  implied = {n for p, leaf in graph.leaves.items()
             if leaf.eqn.primitive.name in _MOVES_FORWARD for n in leaf.outs}
  meta.value_ids = sorted(k for k in vals if isinstance(k, int) and k not in implied)
  fwd_flags = jnp.stack([_all_finite(vals[n]) for n in meta.value_ids])
  for p, leaf in graph.leaves.items():
    meta.in_avals[p] = [v.aval for v in leaf.eqn.invars]
    bad = [k for k, value in jaxpr_util.literal_inputs(leaf.eqn)
           if np.issubdtype(value.dtype, np.inexact) and not np.all(np.isfinite(value))]
    if bad:
      meta.literal_bad[p] = bad

  bwd_in: list = []
  ct_flags: dict = {}  # value id -> flag of its total cotangent (accumulated ones only)
  captured: dict = {}

  def on_eqn(eqn, layer_name, cts_out, cts_in):
    p = engine.current_path()
    leaf = graph.leaves.get(p)
    if leaf is None or leaf.eqn is not eqn:
      return  # a nested region's own report, or an equation inside an opaque one
    meta.events.append(p)
    if eqn.primitive.name in _MOVES:
      bwd_in.append(jnp.ones((0,), bool))  # read off its outputs' cotangents
    else:
      bwd_in.append(jnp.stack([_all_finite(ct) for ct in cts_in]))
    # A total cotangent that is one consumer's contribution is finite exactly when that
    # contribution is (read from its flag on the host); only a sum of several (where an
    # addition may overflow) needs a flag of its own.
    for n, ct in zip(leaf.outs, cts_out):
      uses = len(graph.consumers[n]) + (n in graph.outputs)
      if ct is not None and uses > 1:
        ct_flags[n] = _all_finite(ct)
    if target == ("backward", p):
      captured["cts_out"] = list(cts_out)

  seed = lax.full((), 1, jnp.result_type(loss))
  with engine.observe(engine.Observer(on_eqn)):
    cts = traced.raw_vjp([seed])
  grads = [engine.zeros(a) if ct is None else ct for ct, a in zip(cts, traced.in_avals)]
  grad_flags = jnp.stack([_all_finite(g) for g in grads]) if grads else jnp.ones((0,), bool)
  meta.grad_names = _arg_paths(traced.in_tree, grads, nums)
  meta.ct_flag_ids = sorted(ct_flags)
  out = {"loss": loss, "fwd": fwd_flags, "grads": grad_flags, "bwd_in": bwd_in,
         "bwd_ct": (jnp.stack([ct_flags[n] for n in meta.ct_flag_ids]) if ct_flags
                    else jnp.ones((0,), bool))}
  if with_grads:
    g = jax.tree.unflatten(traced.in_tree, grads)
    out["value_and_grad"] = ((loss, traced.aux) if has_aux else loss,
                             g[0] if isinstance(argnums, int) else g)
  if target is not None:
    phase, p = target
    operands = vals["in", p]
    stats = [_stats_arrays(x) for x in operands]
    if phase == "backward":
      stats += [_stats_arrays(jnp.zeros(()) if ct is None else ct)
                for ct in captured.get("cts_out", [])]
    out["stats"] = stats
  return out


def _arg_paths(in_tree, flat, nums) -> list[str]:
  """Names of the differentiated arguments' leaves: parameter paths (``layers/0/W``)
  for one differentiated argument, prefixed by ``argK/`` for several."""
  from handgrad._src.nn.base import param_paths
  out = []
  for path, _ in param_paths(jax.tree.unflatten(in_tree, flat)):
    head, _, rest = path.partition("/")
    k = nums[int(head)] if head.isdigit() else head
    if len(nums) == 1 and rest:
      out.append(rest)
    else:
      out.append(f"arg{k}" + (f"/{rest}" if rest else ""))
  return out


def value_and_grad_with_flags(f: Callable, argnums: int | Sequence[int] = 0,
                              has_aux: bool = False) -> Callable:
  """``handgrad.value_and_grad(f)`` that also returns :func:`find_nonfinite`'s flags.

  ``fn(*args) -> (value, grads), flags``; jit-safe.  ``flags`` is a pytree of boolean
  arrays (one finiteness flag per forward value and per backward cotangent): a train
  step can compute them with its gradients in the same program and, when
  ``all_flags_finite(flags)`` is false, call :func:`find_nonfinite` on the host for the
  report.  Its cost over the plain step is what ``bench/nonfinite.py`` measures.
  """

  def fn(*args):
    out = _trace_run(f, args, argnums, has_aux, _Meta(), None, with_grads=True)
    vg = out.pop("value_and_grad")
    return vg, out

  return fn


def all_flags_finite(flags) -> Any:
  """Whether every flag of :func:`value_and_grad_with_flags` is set (loss, forward
  values that reach nowhere included: use the gradients' finiteness to decide a step)."""
  leaves = [jnp.all(x) for x in jax.tree.leaves(flags) if x.dtype == jnp.bool_]
  return jnp.all(jnp.stack(leaves)) if leaves else jnp.asarray(True)


def _run(f, args, argnums, has_aux, target):
  meta = _Meta()
  out = jax.jit(lambda *a: _trace_run(f, a, argnums, has_aux, meta, target))(*args)
  return jax.device_get(out), meta


def _first_forward_root(meta: _Meta, flags: dict) -> tuple | None:
  """The earliest leaf (program order) that turned finite inputs into a non-finite value
  on a chain of non-finite values reaching the loss; ``("input", id)`` for a non-finite
  argument."""
  g = meta.graph
  bad = {n for n, ok in flags.items() if not ok}
  roots, seen = [], set()
  stack = [n for n in g.outputs if n in bad]
  while stack:
    n = stack.pop()
    if n in seen:
      continue
    seen.add(n)
    p = g.producer[n]
    if p is None:
      roots.append(("input", n))
      continue
    leaf = g.leaves[p]
    bad_in = [m for m in leaf.ins if m is not None and m in bad]
    if bad_in:
      stack.extend(bad_in)
    else:
      roots.append(("forward", p))
  if not roots:
    return None
  inputs = [r for r in roots if r[0] == "input"]
  if inputs:
    return min(inputs, key=lambda r: r[1])
  return min(roots, key=lambda r: r[1])


def _first_backward_root(meta: _Meta, in_flags, ct_flags) -> int | None:
  """The first event (backward order) whose incoming cotangents were finite and whose
  outgoing ones were not, on a chain of non-finite cotangents reaching a gradient."""
  g = meta.graph
  contrib: dict = {}  # value id -> events that sent it a non-finite contribution
  explicit = dict(zip(meta.ct_flag_ids, ct_flags))

  def bad_total(n):
    return not explicit[n] if n in explicit else n in contrib

  # In backward order every consumer of a value comes before its producer, so the
  # flags of an element-moving equation can be read off its outputs' as we go.
  for e, p in enumerate(meta.events):
    leaf = g.leaves[p]
    if leaf.eqn.primitive.name in _MOVES:
      bad = any(bad_total(n) for n in leaf.outs)
      flags_in = [not bad] * len(leaf.ins)
    else:
      flags_in = in_flags[e]
    for k, n in enumerate(leaf.ins):
      if n is not None and not flags_in[k]:
        contrib.setdefault(n, []).append(e)

  sinks = [n for n in range(len(g.data)) if g.producer[n] is None and n in contrib]
  roots, seen = [], set()
  stack = list(sinks)
  while stack:
    n = stack.pop()
    for e in contrib.get(n, []):
      if e in seen:
        continue
      seen.add(e)
      bad_out = [m for m in g.leaves[meta.events[e]].outs if bad_total(m)]
      if bad_out:
        stack.extend(bad_out)
      else:
        roots.append(e)
  return min(roots) if roots else None


def find_nonfinite(f: Callable, *args: Any, argnums: int | Sequence[int] = 0,
                   has_aux: bool = False, loss_scale: Any = None) -> NonFiniteReport:
  """Runs ``f(*args)`` and its hand backward pass once, jitted, and reports the first
  equation that produced a NaN or inf (see the module docstring).

  Args:
    f: a function returning a real scalar (with ``has_aux``, a pair ``(loss, aux)``).
    *args: its arguments; ``argnums`` says which are differentiated.
    loss_scale: the loss scale of a float16 step (a number, or a
      ``handgrad.train.LossScaleState``): ``f``'s value is multiplied by it before the
      backward pass, as the train step does, and the report says whether the dynamic
      loss scaler would skip the step.

  Returns:
    A :class:`NonFiniteReport`; ``report.finite`` is ``True`` when the loss and every
    gradient are finite.
  """
  fun = f
  scale = None
  if loss_scale is not None:
    scale = float(np.asarray(getattr(loss_scale, "scale", loss_scale)))

    def fun(*a):
      out = f(*a)
      if has_aux:
        out, aux = out
        return out * jnp.asarray(scale, jnp.result_type(out)), aux
      return out * jnp.asarray(scale, jnp.result_type(out))

  out, meta = _run(fun, args, argnums, has_aux, None)
  loss = float(out["loss"])
  if scale is not None:
    loss = loss / scale
  flags = dict(zip(meta.value_ids, np.asarray(out["fwd"]).tolist()))
  for p in sorted(meta.graph.leaves):  # program order: inputs before outputs
    leaf = meta.graph.leaves[p]
    if leaf.eqn.primitive.name in _MOVES_FORWARD:
      ok = (all(flags.get(m, True) for m in leaf.ins if m is not None)
            and p not in meta.literal_bad)
      flags.update((n, ok) for n in leaf.outs)
  grad_ok = np.asarray(out["grads"]).tolist()
  bad_grads = tuple(n for n, ok in zip(meta.grad_names, grad_ok) if not ok)
  loss_finite = math.isfinite(float(out["loss"]))
  masked = sum(1 for n, ok in flags.items() if not ok)
  if loss_finite and not bad_grads:
    return NonFiniteReport(True, loss, masked=masked)

  root = _first_forward_root(meta, flags) if not loss_finite else None
  if root is None and not loss_finite:
    # Non-finite loss with no non-finite chain: a literal (a constant inf) made it.
    lit = sorted(meta.literal_bad)
    root = ("forward", lit[0]) if lit else None
  if root is not None and root[0] == "input":
    n = root[1]
    return NonFiniteReport(False, loss, bad_grads, phase="input", masked=masked,
                           diagnosis=_input_diagnosis(meta, n))
  if root is None:
    bwd_in = [np.asarray(x).tolist() for x in out["bwd_in"]]
    e = _first_backward_root(meta, bwd_in, np.asarray(out["bwd_ct"]).tolist())
    if e is None:
      return NonFiniteReport(False, loss, bad_grads, masked=masked,
                             diagnosis="no single equation found: the non-finite values "
                                       "arise inside an opaque region (scan, cond, "
                                       "custom_vjp) or a rule")
    root = ("backward", meta.events[e])
  phase, p = root
  stats_out, meta2 = _run(fun, args, argnums, has_aux, (phase, p))
  leaf = meta2.graph.leaves[p]
  avals = meta2.in_avals[p]
  stats = [_to_stats(a, s) for a, s in zip(avals, stats_out["stats"])]
  cts = []
  if phase == "backward":
    out_avals = [v.aval for v in leaf.eqn.outvars]
    cts = [_to_stats(a, s) for a, s in zip(out_avals, stats_out["stats"][len(avals):])]
  op = jaxpr_util.layer_op_name(leaf.eqn)
  report = dict(
      finite=False, loss=loss, nonfinite_grads=bad_grads, phase=phase,
      primitive=leaf.eqn.primitive.name, op=op,
      line=jaxpr_util.source_line_at(meta2.jaxpr, p),
      layer="/".join(leaf.scope), eqn_path=tuple(p),
      in_shapes=tuple(tuple(a.shape) for a in avals),
      out_shapes=tuple(tuple(v.aval.shape) for v in leaf.eqn.outvars),
      inputs=tuple(stats), cotangents=tuple(cts), masked=masked)
  report["diagnosis"] = _diagnose(meta2, leaf, phase, stats + cts, scale, bad_grads,
                                  literal=meta2.literal_bad.get(p, ()))
  return NonFiniteReport(**report)


# --- diagnosis ---------------------------------------------------------------------------------

def _input_diagnosis(meta: _Meta, n: int) -> str:
  k = n - meta.n_consts
  if 0 <= k < len(meta.grad_names):
    what = f"the differentiated argument `{meta.grad_names[k]}`"
  else:
    what = "a non-differentiated argument or a value the function closes over"
  return (f"{what} already holds a NaN or inf before any equation runs: check the data, "
          "the parameters and the previous update.")


def _producer_chain(graph, n, depth=10) -> list:
  """Leaves producing value ``n`` and its ancestors, nearest first (a few levels)."""
  out, frontier, seen = [], [n], set()
  for _ in range(depth):
    nxt = []
    for m in frontier:
      p = graph.producer[m] if m is not None else None
      if p is None or p in seen:
        continue
      seen.add(p)
      leaf = graph.leaves[p]
      out.append(leaf)
      nxt.extend(x for x in leaf.ins if x is not None)
    frontier = nxt
  return out


def _consumer_select(graph, leaf, depth=4):
  """The first ``select_n`` downstream of ``leaf`` (a few elementwise hops), with the
  index of the case it receives the value in."""
  frontier = [(n, leaf) for n in leaf.outs]
  for _ in range(depth):
    nxt = []
    for n, _ in frontier:
      for c in graph.consumers[n]:
        cl = graph.leaves[c]
        if cl.eqn.primitive.name == "select_n":
          cases = [k for k, m in enumerate(cl.ins) if m == n and k > 0]
          if cases:
            return cl, cases[0] - 1
        if len(cl.outs) == 1:
          nxt.append((cl.outs[0], cl))
    frontier = nxt
  return None


def _is_variance(graph, n) -> bool:
  names = [leaf.eqn.primitive.name for leaf in _producer_chain(graph, n)]
  return "reduce_sum" in names and "sub" in names and (
      "integer_pow" in names or "square" in names or "mul" in names)


def _is_softmax(graph, n) -> bool:
  chain = _producer_chain(graph, n, depth=3)
  names = [leaf.eqn.primitive.name for leaf in chain]
  ops = [jaxpr_util.layer_op_name(leaf.eqn) for leaf in chain]
  return "softmax" in ops or ("div" in names and "exp" in names)


_FP16_MAX = {"float16": 65504.0, "bfloat16": 3.39e38}


def _diagnose(meta: _Meta, leaf, phase: str, stats: list, scale, bad_grads,
              literal=()) -> str:
  """``literal``: the positions of the equation's non-finite literal operands."""
  eqn = leaf.eqn
  g_jaxpr = meta.jaxpr
  name = eqn.primitive.name
  g = meta.graph
  op = jaxpr_util.layer_op_name(eqn)
  operands = stats[:len(eqn.invars)]
  out_dtype = str(eqn.outvars[0].aval.dtype) if eqn.outvars else ""
  x = operands[0] if operands else None
  low_precision = out_dtype in _FP16_MAX or any(s.dtype in _FP16_MAX for s in stats)
  scaler = ""
  if scale is not None:
    scaler = (f" Under loss scaling ({scale:g}) the dynamic loss scaler skips this step: "
              "the gradients are not finite, so the guarded update leaves the parameters "
              f"and optimizer state bit-unchanged and the scale backs off to {scale / 2:g}.")

  if op is not None:
    inst = layer_ops.lookup_instance(eqn.params["name"])
    params = inst[1] if inst else {}
    if op == "softmax_cross_entropy" and len(operands) > 1:
      labels, logits = operands[1], operands[0]
      classes = eqn.invars[0].aval.shape[-1]
      if labels.min < 0 or labels.max >= classes:
        return (f"cross-entropy of an out-of-range label: labels span [{labels.min:g}, "
                f"{labels.max:g}] but there are {classes} classes, so the picked "
                "log-probability does not exist (the loss is NaN by design).  Check "
                "label ranges on the host (handgrad.train does) or fix the class count.")
      if logits.infs or logits.nans:
        return "the logits reaching the cross-entropy are already non-finite."
    if op == "layer_norm" and params.get("eps", 1e-5) == 0 and x is not None:
      return ("layer norm of a constant row with eps=0: the row's variance is 0, so "
              "1/sqrt(var + eps) is inf and (x − mean)·inf = 0·inf = NaN.  Use eps > 0 "
              "(1e-5 is the usual default).")
    if op in ("softmax", "log_softmax") and x is not None and (x.infs or x.nans):
      return f"{op} of logits that are already non-finite."

  if phase == "forward":
    if literal:
      which = ", ".join(str(k) for k in literal)
      return (f"a constant inf or NaN written in the program: operand {which} of `{op or name}` "
              "is a literal, not a computed value (a float('inf') or jnp.inf in the source, "
              "or a mask value such as -inf that reaches the loss).")
    if name == "log":
      if x.zeros and _is_softmax(g, leaf.ins[0]):
        return ("log of a softmax that underflowed: some probabilities are exactly 0 in "
                f"{x.dtype}, and log(0) = -inf.  Use log_softmax (jax.nn.log_softmax, "
                "handgrad.ops.log_softmax) or softmax_cross_entropy on the logits.")
      if x.negatives:
        return _negative(name, x)
      return (f"log of 0 is -inf ({x.zeros} zero operand(s)); add a small epsilon or clip "
              "the operand away from 0.")
    if name == "log1p":
      return (f"log1p of an operand at or below -1 is -inf or NaN (min {x.min:.4g}).")
    if name == "div" and len(operands) == 2:
      num, den = operands
      if den.zeros:
        var = _is_variance(g, leaf.ins[1])
        if var:
          return ("division by a zero variance: a normalisation (batch norm or layer "
                  "norm written by hand) of a constant row or feature with eps = 0 divides "
                  "by sqrt(var + eps) = 0, and (x − mean)/0 = 0/0 = NaN.  Use eps > 0.")
        both = " (0/0 = NaN)" if num.zeros else ""
        return f"division by zero{both}: {den.zeros} zero denominator element(s)."
    if name in ("rsqrt", "sqrt"):
      if x.negatives:
        return _negative(name, x)
      if name == "rsqrt" and x.zeros:
        if _is_variance(g, leaf.ins[0]):
          return ("rsqrt of a zero variance: a normalisation of a constant row with eps = 0 "
                  "gives 1/sqrt(0) = inf.  Use eps > 0.")
        return f"rsqrt of 0 is inf ({x.zeros} zero operand(s))."
    if name == "pow" and len(operands) == 2:
      base = operands[0]
      if base.negatives:
        return "pow of a negative base with a non-integer exponent is NaN."
      if base.zeros:
        return "pow of a zero base with a negative exponent is inf."
    if low_precision and (out_dtype in _FP16_MAX):
      lim = _FP16_MAX[out_dtype]
      biggest = max(max(abs(s.min), abs(s.max)) for s in operands) if operands else 0
      return (f"{out_dtype} overflow: `{op or name}` produced a value beyond ±{lim:g} from "
              f"finite operands (largest |operand| {biggest:.4g}).  Compute this in float32 "
              "(a mixed-precision policy keeps reductions and losses in float32)." + scaler)
    if name in ("exp", "exp2", "expm1"):
      limit = math.log(float(jnp.finfo(jnp.dtype(out_dtype)).max))
      return (f"{name} overflow: the largest operand {x.max:.4g} exceeds log(max "
              f"{out_dtype}) ≈ {limit:.4g}.  For a softmax or logsumexp, subtract the "
              "maximum first (jax.nn.logsumexp, jax.nn.softmax and handgrad.ops.softmax do).")
    if name in _OVERFLOWING:
      biggest = max(max(abs(s.min), abs(s.max)) for s in operands)
      return f"`{name}` overflowed to inf from finite operands (largest |operand| {biggest:.4g})."
    return f"`{name}` produced a NaN or inf from finite operands."

  # backward: the incoming cotangent was finite, the outgoing one is not.
  cts = stats[len(eqn.invars):]
  sel = _consumer_select(g, leaf) if name in _SINGULAR or op is not None else None
  singular = _singular_reason(eqn, operands)
  if sel is not None and singular:
    sel_leaf, case = sel
    # jnp.where(c, a, b) is select_n(c, b, a): case 0 is b (the false branch).
    branch = {0: "false (third) argument", 1: "true (second) argument"}.get(
        case, f"case {case}")
    return (f"the jnp.where trap: the output of `{name}` is the {branch} of the "
            f"jnp.where at {jaxpr_util.source_line_at(g_jaxpr, sel_leaf.path)}, "
            f"and where that branch is not selected its cotangent is 0; but {singular}, "
            "and 0 · inf = NaN flows back.  Fix with the double where: make the operand "
            "safe where the branch is discarded, e.g. `safe = jnp.where(cond, x, 1.0)`, "
            f"then `jnp.where(cond, {name}(safe), 0.0)`.")
  if (name in ("sqrt", "rsqrt", "pow", "integer_pow") and x is not None and x.zeros
      and _singular_at_zero(eqn, operands)):
    dist = _is_variance(g, leaf.ins[0]) or any(
        p.eqn.primitive.name == "reduce_sum" for p in _producer_chain(g, leaf.ins[0], 2))
    what = "a squared distance (a sum of squares) that reaches 0" if dist else "0"
    formula = {"sqrt": "d sqrt(u)/du = 1/(2 sqrt(u)) = inf",
               "rsqrt": "d rsqrt(u)/du = -1/(2 u^1.5) = -inf"}.get(
                   name, "d u^p/du = p·u^(p-1) = inf for p < 1")
    return (f"{name}'s derivative is infinite at 0 and the operand is {what} "
            f"({x.zeros} zero element(s)): {formula}.  Use {name}(u + eps), or a double "
            "where that returns 0 for u = 0 and feeds it a safe value there.")
  if singular:
    return f"the derivative of `{name}` is infinite here: {singular}."
  if low_precision:
    dt = next((s.dtype for s in stats if s.dtype in _FP16_MAX), out_dtype)
    lim = _FP16_MAX.get(dt, 0)
    biggest = max((max(abs(s.min), abs(s.max)) for s in cts), default=0.0)
    return (f"{dt} overflow in the backward pass: the cotangent through `{op or name}` "
            f"exceeds ±{lim:g} (incoming cotangent up to {biggest:.4g})." + scaler)
  return (f"the hand rule of `{op or name}` turned finite cotangents into a NaN or inf "
          "(an overflow in the rule's arithmetic, or a derivative that is infinite here).")


def _negative(name: str, x: ArrayStats) -> str:
  return (f"{name} of a negative number is NaN ({x.negatives} negative operand(s), "
          f"min {x.min:.4g}).")


def _singular_at_zero(eqn, operands: list) -> bool:
  """Whether the equation's derivative is infinite where its (first) operand is 0."""
  name = eqn.primitive.name
  if name in ("sqrt", "rsqrt", "log", "cbrt"):
    return True
  if name == "pow" and len(operands) == 2:
    return operands[1].min < 1  # d u^p/du = p·u^(p-1)
  if name == "integer_pow":
    return eqn.params.get("y", 1) < 1
  return False


def _singular_reason(eqn, operands: list) -> str:
  name = eqn.primitive.name
  if not operands:
    return ""
  x = operands[0]
  if name == "log" and x.zeros:
    return "log'(0) = 1/0 = inf"
  if name == "div" and len(operands) == 2 and operands[1].zeros:
    return "d(a/b)/db at b = 0 is inf"
  if name in ("sqrt", "rsqrt") and x.zeros:
    return f"{name}'(0) is infinite"
  if name in ("sqrt", "log", "rsqrt") and x.negatives:
    return f"{name} of a negative number is NaN"
  if name in ("pow", "integer_pow") and x.zeros and _singular_at_zero(eqn, operands):
    return "the derivative of a fractional or negative power at 0 is infinite"
  if name in ("acos", "asin", "atanh") and (abs(x.max) >= 1 or abs(x.min) >= 1):
    return f"{name}'(±1) is infinite"
  return ""
