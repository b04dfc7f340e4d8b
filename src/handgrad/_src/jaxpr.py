"""The one place that touches JAX internals and walks jaxprs.

Everything else in handgrad reads equations, nested jaxprs, source lines and
per-release differences through the functions here, so a new JAX release is met in
this module alone.  Sections:

* atoms and equations: literals, dropped outputs, reading an equation's inputs,
  binding it, its source line and named scopes;
* what an equation is: a layer-level op, a region evaluated inline (``jit``,
  checkpoint), its nested jaxprs, whether it belongs to a backward pass;
* walking: an interpreter loop shared by the engine and the inspection tools, and the
  static questions they ask of a jaxpr (what depends on what, what is read);
* per-release shims, each with the JAX release that needs it.
"""

from __future__ import annotations

import contextlib
import os
from typing import Any, Callable, Iterator, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax._src import api_util as _api_util
from jax._src import source_info_util
from jax.extend import core as jex

from handgrad._src import layer_ops


# --- atoms and equations ---------------------------------------------------------------

def is_literal(v) -> bool:
  """Whether an equation input is a literal (a constant written into the jaxpr)."""
  return isinstance(v, jex.Literal)


def is_dropped(v) -> bool:
  """Whether an equation output is discarded (``_`` in the printed jaxpr)."""
  return isinstance(v, jex.DropVar)


def literal_value(v):
  """A literal as an array of its own dtype: literals may hold Python scalars, and
  rules always see arrays."""
  return np.asarray(v.val, dtype=v.aval.dtype)


def read(env: dict, v):
  """The value of atom ``v``: a literal's value, else ``env[v]``."""
  return literal_value(v) if is_literal(v) else env[v]


def read_inputs(env: dict, eqn) -> list:
  """The values of ``eqn``'s inputs."""
  return [read(env, v) for v in eqn.invars]


def write_outputs(env: dict, eqn, outs: Sequence[Any]) -> None:
  """Stores ``outs`` under ``eqn``'s outputs (dropped outputs are not stored)."""
  for v, x in zip(eqn.outvars, outs):
    if not is_dropped(v):
      env[v] = x


def is_float(aval) -> bool:
  """Whether an abstract value is floating point (real or complex): differentiable."""
  return jax.dtypes.issubdtype(aval.dtype, jnp.inexact)


def eqn_context(eqn):
  """The context in which JAX itself evaluates ``eqn``: its name stack and traceback,
  so that errors and profiles point at the user's code."""
  name_stack = source_info_util.current_name_stack() + eqn.source_info.name_stack
  return source_info_util.user_context(eqn.source_info.traceback, name_stack=name_stack)


def bind(eqn, invals: Sequence[Any]) -> list:
  """Evaluates one equation on ``invals``; always returns a list of outputs.

  Under ``jax_debug_nans``/``jax_debug_infs`` an eagerly bound ``jit`` equation that
  returns a NaN or inf raises JAX's internal ``InternalFloatingPointError``; the
  user-facing ``jax.jit`` catches it and re-runs the de-optimised function, equation by
  equation, so that the ``FloatingPointError`` names the primitive.  This does the same
  (:func:`_deoptimized`), so ``handgrad.grad`` raises what ``jax.grad`` raises.
  """
  params = eqn.primitive.get_bind_params(eqn.params)
  subfuns = ()
  if isinstance(params, tuple):  # (subfuns, params) from primitives with subfunctions
    subfuns, params = params
  with eqn_context(eqn), eqn.ctx.manager:
    try:
      out = eqn.primitive.bind(*subfuns, *invals, **params)
    except _InternalFloatingPointError as e:
      return _deoptimized(eqn, invals, e)
  return list(out) if eqn.primitive.multiple_results else [out]


def _deoptimized(eqn, invals: Sequence[Any], error: Exception) -> list:
  """Re-evaluates a ``jit`` equation whose compiled run gave a NaN or inf under
  ``jax_debug_nans``, one equation at a time: the first primitive that makes one raises
  ``FloatingPointError`` (eager binds check each result).  When none does (an XLA
  optimisation made the value, or a literal is one), JAX's own message for that case
  is raised, a ``FloatingPointError`` too (as ``jax.jit`` does, jax/_src/pjit.py)."""
  closed = eqn.params.get("jaxpr") if eqn.primitive.name == "jit" else None
  if closed is None:
    raise FloatingPointError(f"invalid value ({error.ty}) encountered in "
                             f"{eqn.primitive.name}") from None
  try:
    interpret(unwrap(closed), closed.consts, invals, lambda i, e, iv: bind(e, iv))
  except (FloatingPointError, ZeroDivisionError) as e2:
    raise e2 from None
  _api_util._raise_no_nan_in_deoptimized(error)


def source_line(eqn, enclosing: Sequence[Any] = (), *, column: bool = True) -> str:
  """The innermost user frame of an equation, as ``file:line:column (function)`` (JAX's
  own form, in error messages), or ``file:line (function)`` with ``column=False``
  (inspection reports).

  A user frame is neither JAX's nor handgrad's own (its layers and ops,
  :data:`LIBRARY_DIRS`).  An equation inside a library's own ``jit``
  (``jnp.linalg.cholesky``'s, say) has no user frame of its own; then the innermost of
  ``enclosing`` (the equations it sits in, outermost first) that has one names the
  line.  A nested ``jit`` is traced once and cached (``jnp.where`` is one), so an inner
  equation's frame that lies outside the nested function (its call site) may be the
  first call ever traced: such a frame is replaced by the enclosing equation's own.
  ``""`` when no frame is the user's.
  """
  frames = user_frames(eqn, LIBRARY_DIRS)
  for container in reversed(list(enclosing)):
    outer = user_frames(container, LIBRARY_DIRS)
    if not frames or frames[0] in outer:
      frames = outer
  if not frames:
    return ""
  file, line, col, function = frames[0]
  return f"{file}:{line}:{col} ({function})" if column else f"{file}:{line} ({function})"


def scope_names(eqn) -> tuple[str, ...]:
  """The ``jax.named_scope`` names of an equation, outermost first.

  Transformation markers (``jvp(...)``, ``transpose(...)``) are not scopes and are
  left out.
  """
  stack = getattr(eqn.source_info.name_stack, "stack", ())
  return tuple(e.name for e in stack if isinstance(e, source_info_util.Scope))


# --- what an equation is -----------------------------------------------------------------

def layer_op(eqn) -> tuple[str, dict[str, Any]] | None:
  """``(rule name, static params)`` when ``eqn`` applies a layer-level operation
  (a ``jit`` named by :func:`handgrad._src.layer_ops.layer_op`), else ``None``."""
  if eqn.primitive.name != "jit":
    return None
  return layer_ops.lookup_instance(eqn.params["name"])


def layer_op_name(eqn) -> str | None:
  """The layer-level operation an equation applies (``"dense"``), or ``None``."""
  layer = layer_op(eqn)
  return None if layer is None else layer[0]


def rule_name(eqn) -> str:
  """The registry key of an equation's rule: its layer op's name, else its primitive's."""
  return layer_op_name(eqn) or eqn.primitive.name


def display_name(eqn) -> str:
  """A short name for pictures: the layer op, a ``jit``'s function name, a custom
  derivative's function name, else the primitive."""
  name = eqn.primitive.name
  if name == "jit":
    return layer_op_name(eqn) or eqn.params["name"]
  if name in ("custom_jvp_call", "custom_vjp_call"):
    closed = eqn.params.get("call_jaxpr")
    func = getattr(getattr(unwrap(closed), "debug_info", None), "func_name", None)
    return func or name
  return name


def custom_call_wraps(eqn, jit_name: str) -> bool:
  """Whether a ``custom_jvp``/``custom_vjp`` equation's primal function is one ``jit``
  named ``jit_name`` (``jax.nn.relu`` is a ``custom_jvp`` around ``jit(relu)``)."""
  closed = eqn.params.get("call_jaxpr")
  if closed is None:
    return False
  inner = unwrap(closed).eqns
  return (len(inner) == 1 and inner[0].primitive.name == "jit"
          and inner[0].params.get("name") == jit_name)


def is_checkpoint(eqn) -> bool:
  """Whether ``eqn`` is a ``jax.checkpoint`` region (see :data:`CHECKPOINT_NAMES`)."""
  return eqn.primitive.name in CHECKPOINT_NAMES


def inline_body(eqn) -> tuple[Any, list] | None:
  """``(jaxpr, consts)`` of a region evaluated equation by equation in place of
  ``eqn``: a plain ``jit`` (not a layer op) or a checkpoint region; else ``None``.
  The body's inputs are ``eqn``'s inputs."""
  if eqn.primitive.name == "jit" and layer_op(eqn) is None:
    closed = eqn.params["jaxpr"]
    return unwrap(closed), list(closed.consts)
  if is_checkpoint(eqn):
    return eqn.params["jaxpr"], []
  return None


def nested_jaxprs(eqn) -> list[Any]:
  """Every jaxpr an equation's params hold (``jit``'s body, ``cond``'s branches, a
  ``scan``'s or ``while``'s bodies, a custom derivative's primal function), as open
  jaxprs; ``[]`` for a primitive without one."""
  out = []
  for value in eqn.params.values():
    for x in (value if isinstance(value, (tuple, list)) else (value,)):
      if isinstance(x, (jex.Jaxpr, jex.ClosedJaxpr)):
        out.append(unwrap(x))
  return out


# Backward-pass marker.  The hand backward pass runs under a "transpose" transform in
# the name stack, as JAX's own transposed equations do, so profiles and
# :func:`in_backward_pass` can tell its equations from the forward pass's.
_BACKWARD = "transpose"


def backward_pass():
  """Context manager under which traced equations belong to a backward pass."""
  return source_info_util.transform_name_stack(_BACKWARD)


def in_backward_pass(eqn) -> bool:
  """Whether ``eqn`` was traced by a backward pass (the hand engine's or JAX's)."""
  return _BACKWARD in str(eqn.source_info.name_stack)


# --- walking -----------------------------------------------------------------------------

def interpret(jaxpr, consts: Sequence[Any], args: Sequence[Any],
              eval_eqn: Callable[[int, Any, list], Sequence[Any]], *,
              env: dict | None = None, literal: Callable[[Any], Any] = literal_value) -> list:
  """The interpreter loop: binds inputs, calls ``eval_eqn(i, eqn, invals)`` for each
  equation in order and stores its outputs; returns the jaxpr's outputs.

  ``eval_eqn`` decides what an equation's value is (``bind`` it, descend into it, an
  id for a static analysis); ``literal`` maps a literal to a value (its array by
  default); ``env`` (Var -> value) may be given to keep the environment.
  """
  env = {} if env is None else env
  constvars, invars = input_vars(jaxpr, len(consts))
  env.update(zip(constvars, consts))
  env.update(zip(invars, args))

  def get(v):
    return literal(v) if is_literal(v) else env[v]

  for i, eqn in enumerate(unwrap(jaxpr).eqns):
    write_outputs(env, eqn, eval_eqn(i, eqn, [get(v) for v in eqn.invars]))
  return [get(v) for v in unwrap(jaxpr).outvars]


def evaluate_inline(jaxpr, consts: Sequence[Any], args: Sequence[Any],
                    visit: Callable[[Any, list, tuple[str, ...]], None],
                    scope: tuple[str, ...] = ()) -> list:
  """Evaluates ``jaxpr``, descending into inline regions (:func:`inline_body`), and
  calls ``visit(eqn, invals, scope)`` before every equation (regions included)."""

  def eval_eqn(i, eqn, invals):
    sc = scope + scope_names(eqn)
    visit(eqn, invals, sc)
    body = inline_body(eqn)
    if body is not None:
      return evaluate_inline(body[0], body[1], invals, visit, sc)
    return bind(eqn, invals)

  return interpret(jaxpr, consts, args, eval_eqn)


def equations(jaxpr, *, descend: Callable[[Any], Any] = inline_body) -> Iterator[Any]:
  """Every equation of ``jaxpr`` in order, and, after each equation for which
  ``descend(eqn)`` gives ``(body, consts)``, the equations of that body."""
  for eqn in unwrap(jaxpr).eqns:
    yield eqn
    body = descend(eqn)
    if body is not None:
      yield from equations(body[0], descend=descend)


def depends_on(jaxpr, sources: Sequence[Any], *,
               cut: Callable[[Any], bool] = lambda eqn: False,
               follows: Callable[[Any], bool] = lambda v: True) -> set:
  """The variables of ``jaxpr`` computed from any of ``sources`` (included).

  Equations for which ``cut(eqn)`` holds pass nothing on; an output joins only when
  ``follows(outvar)`` (say, only floating-point values carry gradients).
  """
  reached = set(sources)
  for eqn in unwrap(jaxpr).eqns:
    if cut(eqn):
      continue
    if any(not is_literal(v) and v in reached for v in eqn.invars):
      reached.update(v for v in eqn.outvars if not is_dropped(v) and follows(v))
  return reached


def reached_outputs(jaxpr, reached: set) -> list[bool]:
  """For each output of ``jaxpr``, whether it is in ``reached``."""
  return [not is_literal(v) and v in reached for v in unwrap(jaxpr).outvars]


def is_read(jaxpr, var) -> bool:
  """Whether ``var`` is an input of some equation of ``jaxpr`` or one of its outputs."""
  j = unwrap(jaxpr)
  return any(v is var for eqn in j.eqns for v in eqn.invars) or any(
      v is var for v in j.outvars)


def backward_reads(jaxpr) -> list[tuple[Any, int | None, Any]]:
  """What the backward-pass equations of a traced gradient read from its forward pass.

  ``[(var, argument index or None, producing forward equation or None)]`` in first-use
  order, each variable once: a jaxpr input (with its index) or the output of a forward
  equation.  Literals and values computed by the backward pass itself are left out.
  """
  j = unwrap(jaxpr)
  produced_by: dict = {}
  for e in j.eqns:
    if not in_backward_pass(e):
      for v in e.outvars:
        produced_by[v] = e
  arg_index = {v: i for i, v in enumerate(j.invars)}
  seen, out = set(), []
  for e in j.eqns:
    if not in_backward_pass(e):
      continue
    for v in e.invars:
      if is_literal(v) or v in seen or (v not in arg_index and v not in produced_by):
        continue
      seen.add(v)
      out.append((v, arg_index.get(v), produced_by.get(v)))
  return out


# --- per-release shims ---------------------------------------------------------------------

# What an eagerly bound jit raises under jax_debug_nans (jax/_src/api_util.py, every
# supported release); ``jax.jit`` turns it into a FloatingPointError, and so does bind.
_InternalFloatingPointError = _api_util.InternalFloatingPointError

def input_vars(jaxpr, num_consts: int) -> tuple[list, list]:
  """``(constvars, argvars)``: the variables ``num_consts`` consts and the arguments
  bind to, as JAX's own ``eval_jaxpr`` binds them.

  jax ≤ 0.11.0 keeps constants in ``constvars``.  Since jax 0.11.1 a jaxpr handed out
  with its consts on the side (the thunks of ``custom_jvp``/``custom_vjp``:
  ``jvp_jaxpr_fun``, ``fwd_jaxpr_thunk``) lists them as its leading ``invars``, and
  ``eval_jaxpr`` binds ``all_invars`` to ``consts + args``; so do we.
  """
  j = unwrap(jaxpr)
  all_invars = getattr(j, "all_invars", None)
  if all_invars is None:  # jax ≤ 0.11.0
    all_invars = [*j.constvars, *j.invars]
  if len(all_invars) < num_consts:
    raise ValueError(f"a jaxpr with {len(all_invars)} inputs cannot bind {num_consts} consts")
  return list(all_invars[:num_consts]), list(all_invars[num_consts:])


#: Names of the checkpoint primitive: ``remat2`` on every supported release (jax 0.10
#: to 0.12; printed as ``checkpoint``); ``checkpoint`` and ``remat`` are older names.
CHECKPOINT_NAMES = ("remat2", "checkpoint", "remat")


def scan_counts(params) -> tuple[int, int]:
  """``(num_consts, num_carry)`` of a scan equation.

  jax 0.10 has them as parameters; jax 0.11 describes the inputs by a flat tree
  ``ft_in`` of (consts, carry, xs) instead.
  """
  if "num_consts" in params:
    return params["num_consts"], params["num_carry"]
  consts, carry, _ = params["ft_in"].unpack()
  return len(consts), len(carry)


def saveable(decision) -> bool:
  """A checkpoint policy's answer as a bool.  Policies answer ``True``/``False`` or,
  on every supported release (jax 0.10 to 0.12), the markers ``Saveable``,
  ``Recompute`` or ``Offloadable`` (offloaded values are saved values here)."""
  if isinstance(decision, bool):
    return decision
  return type(decision).__name__ in ("SaveableType", "Offloadable")


def is_symbolic_zero(x) -> bool:
  """A cotangent that is a symbolic zero: ``None``, or JAX's ``Zero`` /
  ``SymbolicZero`` objects a ``custom_vjp`` backward may return (jax 0.10 to 0.12)."""
  return x is None or type(x).__name__ in ("Zero", "SymbolicZero")


def symbolic_zero(aval):
  """The symbolic zero JAX hands a ``custom_vjp(symbolic_zeros=True)`` backward for an
  output that received no blame: ``SymbolicZero`` of the cotangent type (jax 0.10 to
  0.12 name it ``to_ct_aval``; earlier ``to_tangent_aval``)."""
  from jax.custom_derivatives import SymbolicZero
  to_ct = getattr(aval, "to_ct_aval", None) or aval.to_tangent_aval
  return SymbolicZero(to_ct())


def bwd_cotangents(bwd_out):
  """The flat input cotangents returned by a ``custom_vjp`` equation's ``bwd``.

  jax ≤ 0.11.0 returns the list of cotangents; later releases (``defvjp_with_logs``)
  return ``(cotangents, logs)``, where ``logs`` is ``None`` or a dict.  The logs are
  dropped, as a plain ``jax.vjp`` call drops them.
  """
  if (isinstance(bwd_out, tuple) and len(bwd_out) == 2 and isinstance(bwd_out[0], list)
      and (bwd_out[1] is None or isinstance(bwd_out[1], dict))):
    return bwd_out[0]
  return bwd_out


def custom_vjp_residuals(params, invals: Sequence[Any], res_and_outs: Sequence[Any]
                         ) -> tuple[list, list]:
  """``(residuals, outputs)`` from a ``custom_vjp`` forward's flat results.

  ``out_trees()`` gives ``(out_tree, res_tree, input_fwds)`` (jax 0.10 to 0.12):
  residuals that are inputs passed straight through are not returned by the forward
  but forwarded, ``input_fwds[k]`` being their index into the equation's *whole*
  input list, closed-over constants (the first ``num_consts``) included.
  """
  trees = params["out_trees"]()
  res_tree = trees[1]
  input_fwds = trees[2] if len(trees) > 2 else [None] * res_tree.num_leaves
  n_res = res_tree.num_leaves - sum(f is not None for f in input_fwds)
  res_out, outs = list(res_and_outs[:n_res]), list(res_and_outs[n_res:])
  res_iter = iter(res_out)
  res = [next(res_iter) if f is None else invals[f] for f in input_fwds]
  return res, outs


def _release() -> tuple[int, int]:
  major, minor = jax.__version__.split(".")[:2]
  return int(major), int(minor)


#: jax 0.11.2 and 0.12 read only the lower triangle of ``cholesky``'s operand in its JVP
#: (the tangent is rebuilt as ``tril(Σ̇) + tril(Σ̇, −1)ᴴ``, imaginary diagonal dropped);
#: jax 0.10 uses the whole tangent.  The hand rule transposes whichever its release's
#: ``jax.grad`` differentiates.
CHOLESKY_READS_LOWER_TRIANGLE = tuple(
    int(p) for p in jax.__version__.split(".")[:3] if p.isdigit()) >= (0, 11, 2)


#: jaxlib 0.10's CPU LAPACK kernels (cholesky, eigh, qr, svd, lu, eig, triangular and
#: tridiagonal solves) split a batch of matrices over XLA:CPU's intra-op thread pool and
#: block that pool's thread until the pieces finish.  With several devices in one process
#: (``--xla_force_host_platform_device_count``) every device's program runs on the same
#: pool, so enough concurrent batched calls occupy every thread and wait for pieces that
#: no thread is left to run: the program never finishes (seen with jax.vjp's programs as
#: with handgrad's).  jaxlib 0.11 and later run the batch on the calling thread.  Nothing
#: in handgrad depends on this; the sharded tests use it to leave such programs out on
#: the releases that hang.
LAPACK_BATCHES_BLOCK_THE_THREAD_POOL = _release() < (0, 11)


# With ``jax_custom_vjp3`` / ``jax_custom_jvp3`` / ``jax_remat3`` set (False by default
# through jax 0.12), custom_vjp, custom_jvp and checkpoint arrive as one
# ``call_hi_primitive`` whose ``_prim`` object holds the rule; the engine does not
# differentiate those and names the flag to unset.
HI_PRIMITIVE = "call_hi_primitive"
_HI_FLAGS = {
    "CustomVJPTraced": "jax_custom_vjp3",
    "CustomJVPTraced": "jax_custom_jvp3",
    "RematTraced": "jax_remat3",
    "OptRemat": "jax_remat3",
    "CheckpointName": "jax_remat3",
    "CheckpointNameFwd": "jax_remat3",
}


def hi_primitive_message(eqn) -> str:
  """Why a ``call_hi_primitive`` equation is not differentiated, naming the flag."""
  kind = type(eqn.params.get("_prim")).__name__
  flag = _HI_FLAGS.get(kind)
  flags = (f"`{flag}`" if flag is not None
           else "`jax_custom_vjp3`, `jax_custom_jvp3` and `jax_remat3`")
  return (f"handgrad does not differentiate JAX's new-style {kind} equations "
          f"(call_hi_primitive); unset {flags} "
          f"(jax.config.update({(flag or 'jax_custom_vjp3')!r}, False))")


# --- body jaxprs of primitives ------------------------------------------------------------

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


# --- scatter and variadic reduce bodies: which elementwise combine they compute ----------

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


# --- primitives by release ---------------------------------------------------------------

def has_primitive(name: str) -> bool:
  """Whether this JAX release has the primitive ``name`` (``log2`` and
  ``one_minus_square`` arrived in jax 0.11, ``polynomial`` in jax 0.12): rules for
  newer primitives are registered only where their primitive exists."""
  from jax.extend.core import primitives
  return getattr(primitives, f"{name}_p", None) is not None


# --- user source lines for inspection reports --------------------------------------------
# The innermost frame outside JAX and
# outside the given library directories (handgrad's own layers and ops).

# handgrad's own directory: its layers and ops are not the user's source line.
LIBRARY_DIRS = (os.path.dirname(os.path.dirname(os.path.abspath(__file__))) + os.sep,)


def user_frames(eqn: Any, exclude: tuple[str, ...] = ()) -> list[tuple[str, int, int, str]]:
  """``(file, line, column, function)`` of the frames of ``eqn``'s traceback, innermost
  first, that are neither JAX's nor under one of the ``exclude`` directories."""
  try:
    frames = list(source_info_util.user_frames(eqn.source_info.traceback))
  except Exception:  # source info is best-effort; never hide the real error
    return []
  return [(f.file_name, f.start_line, f.start_column, f.function_name) for f in frames
          if not any(f.file_name.startswith(d) for d in exclude)]


# --- collectives and shard_map -----------------------------------------------------------

def collective(name: str):
  """The primitive named ``name`` among JAX's collectives (``psum``, ``pvary``,
  ``psum_invariant``, ``reduce_scatter``, ...), for the rules that bind a collective's
  transpose directly: the public wrappers (``lax.psum``, ``lax.psum_scatter``) re-read
  their arguments (axis-name trees, ``axis_index_groups`` checks, implicit ``pvary``),
  and a transpose must bind exactly the primitive with the params it names.

  jax 0.10 to 0.12 keep them in ``jax._src.lax.parallel``; ``pvary`` in ``jax._src.core``.
  """
  prim = _COLLECTIVES.get(name)
  if prim is None:
    from jax._src import core
    from jax._src.lax import parallel
    for module in (parallel, core):
      for value in vars(module).values():
        if isinstance(value, jex.Primitive) and value.name == name:
          prim = _COLLECTIVES[name] = value
          break
      if prim is not None:
        break
  if prim is None:
    raise NotImplementedError(f"this JAX release ({jax.__version__}) has no '{name}' primitive")
  return prim


_COLLECTIVES: dict[str, Any] = {}


def varying_axes(x) -> frozenset:
  """The manual mesh axes along which ``x`` varies inside a ``shard_map`` (its type's
  ``vma``; empty outside a shard_map or where the type system is off).

  jax 0.10 keeps them in ``aval.mat.varying``; earlier releases in ``aval.vma``.
  """
  return varying_axes_of_aval(jax.typeof(x))


def shard_map_params(params) -> dict[str, Any]:
  """A ``shard_map`` equation's params under one set of names: ``mesh``, ``body`` (an
  open jaxpr, closed-over values passed as inputs), ``in_specs``, ``out_specs``,
  ``check_vma``, ``axis_names`` (the axes this shard_map makes manual).

  jax 0.10 to 0.12 name them ``in_specs``/``out_specs``/``check_vma``/
  ``newly_manual_axes``; older releases ``in_names``/``out_names``/``check_rep``/
  ``auto`` (rejected here: they hold names as dicts, not specs).
  """
  missing = [k for k in ("mesh", "jaxpr", "in_specs", "out_specs", "check_vma",
                         "newly_manual_axes") if k not in params]
  if missing:
    raise NotImplementedError(
        f"shard_map equation without params {missing} (JAX {jax.__version__}): "
        "this JAX release's shard_map is not supported")
  known = {"mesh", "jaxpr", "in_specs", "out_specs", "check_vma", "newly_manual_axes"}
  unknown = sorted(set(params) - known)
  if unknown:
    raise NotImplementedError(f"shard_map param(s) {unknown} are not supported")
  body = params["jaxpr"]
  if getattr(body, "consts", ()):
    raise NotImplementedError("a shard_map body with closed-over constants is not supported")
  return dict(mesh=params["mesh"], body=unwrap(body), in_specs=tuple(params["in_specs"]),
              out_specs=tuple(params["out_specs"]), check_vma=bool(params["check_vma"]),
              axis_names=frozenset(params["newly_manual_axes"]))


def zeros(aval):
  """Zeros of ``aval``'s shape and dtype with its sharding and varying manual axes, as
  JAX's own symbolic zeros instantiate (``zeros_like_shaped_array``): under Explicit
  mesh axes a zero cotangent must carry its primal's sharding (``select`` and ``add``
  reject mixed shardings), and inside a ``shard_map`` it must vary along the axes its
  primal varies along."""
  scalar = np.zeros((), aval.dtype)
  sharding = getattr(aval, "sharding", None)
  out = jax.lax.broadcast(scalar, tuple(aval.shape), out_sharding=sharding)
  vma = tuple(sorted(varying_axes_of_aval(aval), key=str))
  if vma:
    out = collective("pvary").bind(out, axes=vma)
  return out


def varying_axes_of_aval(aval) -> frozenset:
  """:func:`varying_axes` of an abstract value."""
  mat = getattr(aval, "mat", None)
  if mat is not None:
    return frozenset(getattr(mat, "varying", ()))
  return frozenset(getattr(aval, "vma", ()))


def reshard_to(x, sharding, concrete_mesh=None):
  """``x`` moved to ``sharding`` by JAX's ``reshard`` primitive, under the sharding's
  abstract mesh (as ``jax.sharding.reshard`` binds it; jax 0.10 to 0.12 give the
  primitive ``dst_sharding`` and ``concrete_mesh``)."""
  from jax._src import mesh as mesh_lib
  from jax._src import pjit
  with mesh_lib.use_abstract_mesh(sharding.mesh):
    return pjit.reshard_p.bind(x, dst_sharding=sharding, concrete_mesh=concrete_mesh)


def _explicit(sharding) -> bool:
  mesh = getattr(sharding, "mesh", None)
  types = getattr(mesh, "axis_types", ()) or ()
  return any(getattr(t, "name", str(t)) == "Explicit" for t in types)


def match_sharding(ct, aval):
  """``ct`` with ``aval``'s sharding: under Explicit mesh axes (sharding in types) a
  cotangent has its primal's sharding, as every JAX transpose gives it.  A rule that
  builds a cotangent without one (a broadcast or a zeros array carrying no sharding)
  gets it resharded here; a cotangent already sharded like its primal is returned
  as it is, and so is everything outside Explicit axes (Auto axes, shard_map bodies)."""
  want = getattr(aval, "sharding", None)
  if want is None or not _explicit(want):
    return ct
  have = getattr(jax.typeof(ct), "sharding", None)
  if have is not None and tuple(have.spec) == tuple(want.spec) and have.mesh == want.mesh:
    return ct
  return reshard_to(ct, want)


def sharding_of(x):
  """The sharding a cotangent of ``x`` is built with (``out_sharding=``): ``x``'s own
  when it lives on a mesh; replicated on the current mesh for a value without one
  inside a mesh context (as JAX's transposes place it); ``None`` without a mesh."""
  sharding = getattr(jax.typeof(x), "sharding", None)
  mesh = getattr(sharding, "mesh", None)
  if mesh is not None and not mesh.empty:
    return sharding
  mesh = jax.sharding.get_abstract_mesh()
  if mesh.empty:
    return None
  return jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(*[None] * np.ndim(x)))


# --- trace state -------------------------------------------------------------------------
# Whether a call runs at the top level (concrete values, no enclosing
# jit/vmap/grad trace), where a compiled program may be cached and reused.

def at_top_level() -> bool:
  """True when no JAX transformation is tracing (eager execution)."""
  from jax._src import core
  return core.trace_state_clean()


# --- inspection walks --------------------------------------------------------------------
# Walks of the inspection tools (handgrad.inspect): equations by path, every leaf
# equation's values, checkpoint names hidden in opaque regions.

def equations_on_path(jaxpr: Any, path: Sequence[int]) -> list:
  """The equations from the outer jaxpr inwards down ``path`` (equation indices, one per
  inline region entered, as ``engine.current_path()`` gives them)."""
  eqns, cur = [], unwrap(jaxpr)
  for i in path:
    eqn = cur.eqns[i]
    eqns.append(eqn)
    body = inline_body(eqn)
    cur = unwrap(body[0]) if body is not None else None
  return eqns


def source_line_at(jaxpr: Any, path: Sequence[int]) -> str:
  """``file:line (function)`` (:func:`source_line` without the column) of the equation
  at ``path``, its enclosing regions' lines as the fallback."""
  eqns = equations_on_path(jaxpr, path)
  return source_line(eqns[-1], eqns[:-1], column=False)


def evaluate_leaves(jaxpr: Any, consts: Sequence[Any], args: Sequence[Any],
                    visit: Callable[[tuple, Any, list, list], None], *,
                    frame: Any = None, path: tuple = ()) -> list:
  """Evaluates ``jaxpr``, descending into inline regions (:func:`inline_body`), and
  calls ``visit(path, eqn, invals, outs)`` for every other (leaf) equation.

  ``frame`` is the engine's forward record of ``jaxpr`` (``engine.Frame``): a leaf's
  outputs are read from it where the forward pass kept them (``frame.outs``), and an
  inline ``jit`` region's consts and values from its child frame, so the values are the
  very arrays a backward pass uses; the rest is evaluated again.
  """

  def eval_eqn(i, eqn, invals):
    p = path + (i,)
    body = inline_body(eqn)
    if body is not None:
      inner, inner_consts = body
      child = frame.children.get(i) if frame is not None else None
      if getattr(child, "jaxpr", None) is inner:
        inner_consts = [child.env[v] for v in unwrap(inner).constvars]
      else:
        child = None
      with eqn_context(eqn):
        return evaluate_leaves(inner, inner_consts, invals, visit, frame=child, path=p)
    if frame is not None and i in frame.outs:
      outs = list(frame.outs[i])
    else:
      outs = bind(eqn, invals)
    visit(p, eqn, invals, outs)
    return outs

  return interpret(jaxpr, consts, args, eval_eqn)


def names_in_regions(jaxpr: Any, kinds: Sequence[str]) -> dict[str, str]:
  """``{name: kind}`` of the ``checkpoint_name`` values (``name`` equations) that sit
  inside a nested jaxpr of an equation whose primitive is one of ``kinds`` (the
  outermost such region names the kind)."""
  found: dict[str, str] = {}

  def walk(jx, region):
    for eqn in unwrap(jx).eqns:
      if eqn.primitive.name == "name" and region:
        found[eqn.params["name"]] = region
      inner = region or (eqn.primitive.name if eqn.primitive.name in kinds else None)
      for nested in nested_jaxprs(eqn):
        walk(nested, inner)

  walk(jaxpr, None)
  return found


# --- custom_vjp: residuals written into the forward jaxpr -------------------------------

def raw_literal_outputs(jaxpr: Any, outs: Sequence[Any]) -> list:
  """``outs`` (``jaxpr``'s evaluated outputs) with each output that is a literal
  replaced by the literal's own value, as ``jax.core.eval_jaxpr`` returns it.

  A ``custom_vjp`` forward may return Python scalars among its residuals (equinox's
  ``filter_custom_vjp`` returns its ``perturbed`` flags, Python bools, and tests them
  with ``isinstance(flag, bool)`` in ``bwd``); tracing writes them into the forward
  jaxpr as literals, and JAX hands ``bwd`` the literal's value unchanged.
  """
  return [v.val if is_literal(v) else o for v, o in zip(unwrap(jaxpr).outvars, outs)]


# --- top-level dataflow: the computation-graph picture -----------------------------------
# What ``handgrad.inspect.make_graph`` draws: a jaxpr's top-level equations (nested
# jaxprs not entered), each with what it reads and writes, and their positions.

class TopLevelEquation(NamedTuple):
  """One top-level equation of a jaxpr, as a computation-graph picture reads it."""
  index: int  # its position among the jaxpr's equations
  eqn: Any
  scope: str  # its named-scope path, "layers/0" ("" outside every jax.named_scope)
  name: str  # display_name(eqn): "dense", a jit's function name, a primitive
  is_layer_op: bool
  reads: tuple[tuple[int, Any], ...]  # (input position, variable); literals left out
  writes: tuple[Any, ...]  # its output variables


def top_level_equations(jaxpr: Any) -> list[TopLevelEquation]:
  """The top-level equations of ``jaxpr`` in order, as :class:`TopLevelEquation`."""
  return [TopLevelEquation(i, eqn, "/".join(scope_names(eqn)), display_name(eqn),
                           layer_op(eqn) is not None,
                           tuple((k, v) for k, v in enumerate(eqn.invars) if not is_literal(v)),
                           tuple(eqn.outvars))
          for i, eqn in enumerate(unwrap(jaxpr).eqns)]


def equation_positions(jaxpr: Any) -> dict[int, int]:
  """``{id(eqn): position}`` of ``jaxpr``'s top-level equations: which equation of the
  jaxpr an observer of the engine (``engine.observe``) is shown."""
  return {id(eqn): i for i, eqn in enumerate(unwrap(jaxpr).eqns)}


# --- literal inputs of an equation (inspection reports) ----------------------------------

def literal_inputs(eqn) -> list[tuple[int, Any]]:
  """``(input position, value)`` of each of ``eqn``'s inputs that is a literal, its
  value an array of the literal's dtype (``max(x, 0.0)`` gives ``[(1, array(0.))]``)."""
  return [(k, literal_value(v)) for k, v in enumerate(eqn.invars) if is_literal(v)]


# --- hand rules for new-style primitives (call_hi_primitive) ------------------------------
# jax ≥ 0.12 writes jnp.ldexp and jnp.frexp as ``call_hi_primitive`` equations whose
# ``_prim`` is an ``Ldexp`` / ``Frexp`` object; their hand rules dispatch on that kind.

def hi_primitive_kind(prim: Any) -> str:
  """The kind of a ``call_hi_primitive``'s ``_prim`` object: its class name (``Ldexp``)."""
  return type(prim).__name__


def has_hi_ldexp() -> bool:
  """Whether this release's jnp.ldexp and jnp.frexp are ``call_hi_primitive``s (jax 0.12)."""
  from jax._src.numpy import ufuncs
  return hasattr(ufuncs, "Ldexp") and hasattr(ufuncs, "Frexp")


# --- sharding constraints on cotangents --------------------------------------------------
# The sharding_constraint primitive re-applied to a cotangent (its params as the
# equation holds them: sharding, layout, context_mesh, unconstrained_dims on jax 0.10
# to 0.12), as JAX's transpose of with_sharding_constraint does.

def constrain(x, params: dict):
  """``x`` under the same ``sharding_constraint`` as an equation with ``params``."""
  from jax._src import pjit
  known = {"sharding", "layout", "context_mesh", "unconstrained_dims"}
  unknown = sorted(set(params) - known)
  if unknown:
    raise NotImplementedError(f"sharding_constraint param(s) {unknown} are not supported")
  return pjit.sharding_constraint_p.bind(x, **params)
