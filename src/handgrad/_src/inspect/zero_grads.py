"""Missing versus zero gradients (the seed's ``debug_zero_gradients``) and dead ReLUs.

``jax.grad`` returns zeros both for a parameter that never reached the loss and for
one whose gradient is exactly zero.  PyTorch tells them apart with ``param.grad is
None``; the hand engine keeps the same distinction (a cotangent of ``None`` is a
symbolic zero, see :mod:`handgrad._src.engine`), so :func:`find_zero_gradients` can say
which parameters are *missing* (not in the computation graph: unused, cut by
``stop_gradient``, or frozen) and which are *zero* (in the graph, but all blame that
reached them cancelled or died, typically in dead ReLUs).
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from handgrad._src import jaxpr as hj
from handgrad._src.frozen import frozen_mask
from handgrad._src.api import TracedProgram
from handgrad._src.inspect._tree import in_path_order, is_inexact
from handgrad._src.types import Array, PyTree
from handgrad._src.nn.base import param_paths

MISSING = "missing"
ZERO = "zero"

# The seed's list of likely causes ("가능한 원인").
CAUSES = (
    "requires_grad=False: the parameter is frozen",
    "detached from the computation graph (stop_gradient, like .detach() or .data)",
    "dead ReLU (all of its inputs are negative)",
    "the softmax output matches the one-hot target exactly",
)

FROZEN = "frozen: excluded from differentiation (like requires_grad=False)"
UNUSED = "not used by the function: not in the computation graph"
DISCARDED = "used, but nothing computed from it reaches the loss"
DETACHED = ("cut from the graph: every path to the loss goes through stop_gradient or a "
            "non-differentiable operation (like .detach() or .data)")
SOFTMAX = "the softmax output matches the one-hot target exactly (the loss is saturated)"
VANISHED = ("the blame that reaches it is exactly zero (multiplied by zero, a saturated "
            "activation, or zero inputs)")


class ZeroGradReport(NamedTuple):
  """A parameter without a usable gradient.

  ``kind`` is ``"missing"`` (the engine produced no cotangent: ``param.grad is None``
  in PyTorch) or ``"zero"`` (a cotangent with ``max |g| < atol``); ``reasons`` lists
  the likely causes, the specific ones first.
  """
  path: str
  kind: str
  reasons: tuple[str, ...]


class DeadReLU(NamedTuple):
  """How much of one ReLU is inactive on a batch (scalars).

  A unit (an entry of the last axis) is dead when its pre-activation is ≤ 0 for every
  example (every index of the other axes): it passes no blame back at all, since
  relu'(x) = 0 for x ≤ 0 (``jax.nn.relu``'s convention at 0).
  """
  dead_fraction: Array  # float32: dead_units / units
  dead_units: Array  # int32
  units: Array  # int32


# --- dead ReLUs ----------------------------------------------------------------------

def relu_operand(eqn) -> int | None:
  """The index of the pre-activation if ``eqn`` is a ReLU, else ``None``.

  ReLUs are ``handgrad.ops.relu`` (a layer-level op), ``jax.nn.relu`` (a
  ``custom_jvp``) and ``max(x, 0)`` with a literal zero, which is what
  ``jnp.maximum(x, 0)`` and the NumPy-style ``jnp.maximum(0, x)`` trace to.
  """
  if hj.layer_op_name(eqn) == "relu":
    return 0
  if eqn.primitive.name == "custom_jvp_call":
    return 0 if hj.custom_call_wraps(eqn, "relu") else None
  if eqn.primitive.name == "max":
    literals = hj.literal_inputs(eqn)
    if len(literals) == 1:  # max(x, 0) or max(0, x), x not a literal
      (k, value), = literals
      if np.ndim(value) == 0 and value == 0:
        return 1 - k
  return None


def _relu_inputs(jaxpr, consts, args, found: list) -> None:
  """Evaluates ``jaxpr`` and appends ``(scope, pre-activation)`` for every ReLU."""

  def visit(eqn, invals, scope):
    operand = relu_operand(eqn)
    if operand is not None:
      found.append((scope, invals[operand]))

  hj.evaluate_inline(jaxpr, consts, args, visit)


def dead_relu_report(fn: Callable[..., Any], *args: Any) -> dict[str, DeadReLU]:
  """Per ReLU in ``fn(*args)``, the fraction of its units inactive on the whole batch.

  Finds ``handgrad.ops.relu``, ``jax.nn.relu`` and ``jnp.maximum(x, 0)`` applications
  (also inside nested ``jit`` and ``checkpoint`` regions; not inside ``lax.cond``
  branches or custom derivatives) and names them by their named scope: ``"layers/0/relu"``, then
  ``"layers/0/relu_1"`` for a second one in the same scope.  Jit-safe: the result
  is a dict of :class:`DeadReLU` scalars.

  Args:
    fn: any function, e.g. ``lambda p, x: mlp.apply(p, x)`` or a loss.
    *args: its arguments (pytrees), e.g. ``params, x``.
  """
  flat = jax.tree.leaves(args)
  closed = jax.make_jaxpr(lambda *a: fn(*a))(*args)
  found: list = []
  _relu_inputs(closed.jaxpr, closed.consts, flat, found)
  out: dict[str, DeadReLU] = {}
  for scope, x in found:
    base = "/".join((*scope, "relu"))
    name, k = base, 0
    while name in out:
      k += 1
      name = f"{base}_{k}"
    x = jnp.asarray(x)
    inactive = x <= 0
    dead = jnp.all(inactive.reshape(-1, x.shape[-1]), axis=0) if x.ndim else inactive[None]
    units = dead.shape[0]
    n_dead = jnp.sum(dead.astype(jnp.int32))
    out[name] = DeadReLU(n_dead.astype(jnp.float32) / units, n_dead,
                         jnp.asarray(units, jnp.int32))
  return out


# --- missing versus zero ------------------------------------------------------------

def _reaches_output(jaxpr, var, n_out: int) -> bool:
  """Whether any output among the first ``n_out`` depends on ``var`` at all."""
  return any(hj.reached_outputs(jaxpr, hj.depends_on(jaxpr, [var]))[:n_out])


def find_zero_gradients(loss_fn: Callable[..., Array], params: PyTree, *args: Any,
                        frozen: Any = None, atol: float = 1e-10) -> list[ZeroGradReport]:
  """The parameters of ``loss_fn(params, *args)`` whose gradient is missing or zero.

  Compiles and runs one computation (a hand backward pass and
  :func:`dead_relu_report`) and returns Python values, so call it outside ``jax.jit``.
  ``args`` and frozen parameters are closed over as constants.

  Args:
    loss_fn: ``loss_fn(params, *args) -> scalar``.
    params: the parameter pytree.
    *args: the data.
    frozen: parameters excluded from differentiation, as in ``handgrad.train``: a
      path prefix or a list of them (``"layers/0"``), a callable ``path -> bool``, or
      a pytree of bools shaped like ``params``.
    atol: a present gradient with ``max |g| < atol`` is "zero" (the seed's 1e-10).

  Returns:
    One :class:`ZeroGradReport` per affected floating-point parameter, in parameter
    order.  ``kind="missing"`` reasons: frozen, unused, used but discarded, or cut by
    ``stop_gradient``/non-differentiable operations.  ``kind="zero"`` reasons: the
    ReLUs that are completely dead on this batch, then the seed's generic causes.
  """
  named = param_paths(params)
  leaves, treedef = jax.tree.flatten(params)
  flags = jax.tree.leaves(frozen_mask(params, frozen))
  trainable = [i for i, (leaf, f) in enumerate(zip(leaves, flags))
               if not f and is_inexact(leaf)]

  def fun(train_leaves):
    full = list(leaves)
    for i, x in zip(trainable, train_leaves):
      full[i] = x
    return loss_fn(jax.tree.unflatten(treedef, full), *args)

  missing: dict[int, str] = {}  # trainable index -> reason; filled while tracing

  @jax.jit
  def analyse(train_leaves):
    # One compiled computation: which cotangents are missing is known at trace time,
    # the size of the present ones and the dead ReLUs are its outputs.
    traced = TracedProgram(fun, (train_leaves,), has_aux=False)
    loss = traced.out
    if jnp.shape(loss) != ():
      raise TypeError(f"find_zero_gradients needs a scalar loss, got shape "
                      f"{jnp.shape(loss)}")
    cts = traced.raw_vjp([lax.full((), 1, jnp.result_type(loss))])
    jaxpr, n_out = traced.frame.jaxpr, len(traced.out_flat)
    max_abs = {}
    for j, ct in enumerate(cts):
      if ct is None:
        var = traced.frame.invars[j]
        if not hj.is_read(jaxpr, var):
          missing[j] = UNUSED
        elif not _reaches_output(jaxpr, var, n_out):
          missing[j] = DISCARDED
        else:
          missing[j] = DETACHED
      else:
        max_abs[j] = jnp.max(jnp.abs(ct)) if ct.size else jnp.zeros((), ct.dtype)
    return max_abs, dead_relu_report(fun, train_leaves)

  max_abs, dead = jax.device_get(analyse([leaves[i] for i in trainable]))
  reports = []
  for i, (path, leaf) in enumerate(named):
    if not is_inexact(leaf):
      continue
    if flags[i]:
      reports.append(ZeroGradReport(path, MISSING, (FROZEN,)))
      continue
    j = trainable.index(i)
    if j in missing:
      reports.append(ZeroGradReport(path, MISSING, (missing[j],)))
    elif float(max_abs[j]) < atol:
      reports.append(ZeroGradReport(path, ZERO, ()))

  if any(r.kind == ZERO for r in reports):
    specific = tuple(f"ReLU '{name}' is dead on this batch (every unit inactive)"
                     for name, d in in_path_order(dead).items()
                     if float(d.dead_fraction) >= 1.0)
    generic = (("dead ReLU (all of its inputs are negative)",) if dead and not specific
               else ()) + (SOFTMAX, VANISHED)
    reports = [r._replace(reasons=specific + generic) if r.kind == ZERO else r
               for r in reports]
  return reports


def format_zero_gradients(reports: list[ZeroGradReport]) -> str:
  """The seed's printout of :func:`find_zero_gradients`'s result."""
  if not reports:
    return "All parameters have gradients"
  lines = ["=== parameters with zero gradients ==="]
  for r in reports:
    what = ("grad is None - not in the computation graph" if r.kind == MISSING
            else "grad is effectively zero")
    lines.append(f"  {r.path}: {what}")
    lines.extend(f"      - {reason}" for reason in r.reasons)
  lines.append("")
  lines.append("Possible causes:")
  lines.extend(f"  {k}. {c}" for k, c in enumerate(CAUSES, 1))
  return "\n".join(lines)
