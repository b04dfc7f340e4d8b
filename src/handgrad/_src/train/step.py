"""Jitted train and eval steps over an optax optimizer, with a choice of gradient backend.

A *loss function* has the signature ::

    loss_fn(params, batch, key) -> (loss, aux)

``loss`` a float32 ``[]`` (the mean over the batch), ``aux`` a dict of float ``[]``
metrics (``{"accuracy": ...}``, may be empty), ``key`` a typed PRNG key for dropout and
the like.  :func:`make_train_step` differentiates it with

* ``backend="hand"`` (the default): ``handgrad.value_and_grad``, the hand-written VJP
  rules;
* ``backend="jax"``: ``jax.value_and_grad``, JAX's own autodiff, the reference;

and everything else (accumulation, clipping, the optimizer, freezing) is the same
code, so the two backends can be compared step by step on the same run.  Nothing in
a step depends on the device: the same step runs on CPU, GPU and TPU.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax import lax

from handgrad._src import api
from handgrad._src.data.batching import batches as _batches
# The training code sits above the inspection tools: it may import them, never the
# other way round (tests/_src/test_layering.py).
from handgrad._src.inspect.monitor import EveryKSteps, gradient_stats, gradient_stats_every
from handgrad._src.inspect.nonfinite import find_nonfinite
from handgrad._src.rules.layers import softmax_cross_entropy
from handgrad._src.train import mixed_precision
from handgrad._src.train.state import Params, TrainState
from handgrad._src.train.transforms import FrozenSpec, combine, frozen_mask, partition
from handgrad._src.train.trees import global_norm

Array = jax.Array
Batch = Any
"""A pytree of arrays whose leaves share the leading batch axis, e.g.
``handgrad.data.Batch(x [B, 784], y [B], mask [B])``."""
LossFn = Callable[[Params, Batch, Array], tuple[Array, Mapping[str, Array]]]
EvalFn = Callable[[Params, Batch], Mapping[str, Array]]
Metrics = dict[str, Array]
TrainStep = Callable[[TrainState, Batch], tuple[TrainState, Metrics]]

BACKENDS = ("hand", "jax")


def backend_value_and_grad(fun: Callable, backend: str = "hand", *,
                           has_aux: bool = True) -> Callable:
  """``value_and_grad`` of ``fun`` (first argument) by the chosen gradient backend.

  ``"hand"`` is ``handgrad.value_and_grad``, ``"jax"`` is ``jax.value_and_grad``.  Unlike
  ``handgrad.value_and_grad`` (``has_aux=False`` by default, like ``jax``), this one
  defaults to ``has_aux=True``: a loss function of the training loop returns
  ``(loss, aux)``.  ``handgrad.train.value_and_grad`` is the same function under its
  older name.
  """
  if backend == "hand":
    return api.value_and_grad(fun, has_aux=has_aux)
  if backend == "jax":
    return jax.value_and_grad(fun, has_aux=has_aux)
  raise ValueError(f"unknown gradient backend {backend!r}; choose one of "
                   f"{', '.join(BACKENDS)}")


value_and_grad = backend_value_and_grad


def _check_positive_int(name: str, value) -> int:
  if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
    raise ValueError(f"{name} must be a positive int, got {value!r}")
  return int(value)


def _split_micro(batch: Batch, k: int) -> Batch:
  """Leaves ``[B, ...]`` -> ``[k, B/k, ...]``: micro-batch i is rows ``i·B/k … (i+1)·B/k``."""
  sizes = {int(np.shape(leaf)[0]) for leaf in jax.tree.leaves(batch) if np.ndim(leaf)}
  if len(sizes) != 1:
    raise ValueError(f"the batch leaves must share their leading (batch) axis, got "
                     f"sizes {sorted(sizes)}")
  (b,) = sizes
  if b % k:
    raise ValueError(f"cannot split a batch of {b} into {k} equal micro-batches: "
                     f"the batch size must be a multiple of accumulate={k}")
  return jax.tree.map(lambda a: jnp.reshape(a, (k, b // k) + tuple(np.shape(a)[1:])), batch)


# --- the named pieces of a step ------------------------------------------------------
#
# make_train_step composes: _scaled_loss (the user's loss, times the loss scale),
# _gradient_fn (one batch, or k micro-batches summed in a scan; frozen leaves as
# constants), _apply_update (the optimizer behind the finiteness guard, and the loss
# scale's adjustment), _keep_frozen and _step_metrics.

def _scaled_loss(loss_fn: LossFn, has_aux: bool) -> Callable:
  """``(params, batch, key, scale) -> (loss × scale, aux)``; ``scale=None``: no scaling."""
  def full_loss(params, batch, key, scale):
    out = loss_fn(params, batch, key)
    if has_aux:
      if not (isinstance(out, tuple) and len(out) == 2):
        raise TypeError("loss_fn must return (loss, aux_dict); pass has_aux=False for a "
                        "loss_fn that returns the loss only")
      loss, aux = out[0], dict(out[1])
    else:
      loss, aux = out, {}
    if scale is not None:  # loss scaling: differentiate loss × S
      loss = loss * scale.astype(loss.dtype)
    return loss, aux
  return full_loss


def _gradient_fn(full_loss: Callable, backend: str, frozen: FrozenSpec, k: int) -> Callable:
  """``(params, batch, key, scale) -> ((loss, aux), grads)``, frozen leaves' grads zero."""

  def grads_of(params, batch, key, scale):
    if frozen is None:
      return backend_value_and_grad(full_loss, backend)(params, batch, key, scale)
    mask = frozen_mask(params, frozen)
    trainable, fixed = partition(params, mask)
    if not jax.tree.leaves(trainable):
      raise ValueError("every parameter is frozen: there is nothing to train")

    def partial_loss(trainable, fixed, batch, key, scale):
      # The seed's requires_grad=False / .detach(): the frozen leaves are constants.
      return full_loss(combine(trainable, jax.tree.map(lax.stop_gradient, fixed)),
                       batch, key, scale)

    out, g = backend_value_and_grad(partial_loss, backend)(trainable, fixed, batch, key,
                                                           scale)
    return out, combine(g, jax.tree.map(jnp.zeros_like, fixed))

  if k == 1:
    return grads_of

  def accumulated(params, batch, key, scale):
    # In-step accumulation (one optimizer step per call, the micro-batches in a scan)
    # rather than optax.MultiSteps, which spreads one step over k calls and k states.
    micro = _split_micro(batch, k)
    first = jax.tree.map(lambda a: a[0], micro)
    (loss_s, aux_s), g_s = jax.eval_shape(grads_of, params, first, key, scale)
    zeros = lambda s: jnp.zeros(s.shape, s.dtype)  # noqa: E731
    init = (jax.tree.map(zeros, loss_s), jax.tree.map(zeros, aux_s),
            jax.tree.map(zeros, g_s))

    def body(carry, xs):
      i, mb = xs
      (loss, aux), g = grads_of(params, mb, jax.random.fold_in(key, i), scale)
      return jax.tree.map(jnp.add, carry, (loss, aux, g)), None

    (loss, aux, g), _ = lax.scan(body, init, (jnp.arange(k), micro))
    mean = lambda t: jax.tree.map(lambda a: a / k, t)  # noqa: E731
    return (mean(loss), mean(aux)), mean(g)

  return accumulated


def _apply_update(optimizer, loss_scale, state: TrainState, loss, grads):
  """``(params, opt_state, loss_scale_state, applied)`` after one guarded update.

  The update is applied only when the loss, the gradients, the new parameters and the
  new optimizer state are all finite; otherwise params and optimizer state stay
  bit-unchanged (``applied`` false) and, with loss scaling, the scale backs off.
  """
  params, opt_state, applied = mixed_precision.guarded_update(
      optimizer, grads, state.opt_state, state.params, loss=loss)
  scale_state = state.loss_scale
  if loss_scale is not None:
    scale_state = loss_scale.adjust(scale_state, applied)
  return params, opt_state, scale_state, applied


def _keep_frozen(frozen: FrozenSpec, old: Params, new: Params) -> Params:
  """The frozen leaves' own buffers: exactly their bits (p + 0 would turn -0.0 into
  +0.0), whatever the optimizer did."""
  if frozen is None:
    return new
  mask = frozen_mask(old, frozen)
  return jax.tree.map(lambda m, n, o: o if m else n, mask, new, old)


def _step_metrics(loss, aux, grads, applied, scale_state, stats) -> Metrics:
  metrics = {"loss": loss, **aux}
  if scale_state is not None:
    metrics["loss_scale"] = scale_state.scale
  metrics["skipped"] = jnp.logical_not(applied)
  metrics["grad_norm"] = global_norm(grads)
  metrics = {name: jnp.asarray(v, jnp.float32) for name, v in metrics.items()}
  if stats is not None:
    metrics["grad_stats"] = stats
  return metrics


def _monitor_fn(monitor) -> Callable | None:
  if monitor is False or monitor is None:
    return None
  if monitor is True:
    return gradient_stats  # the per-parameter statistics of handgrad.inspect
  if callable(monitor):
    return monitor
  raise TypeError(f"monitor must be a bool or a function grads -> statistics, got "
                  f"{type(monitor).__name__}")


# How a step computes the monitor's statistics: never, on every call, or (the step
# number traced, so no host choice) under a lax.cond on the step number.
_NO_STATS, _STATS, _STATS_COND = "none", "always", "cond"


def _nonfinite_finder(full_loss: Callable, frozen: FrozenSpec, k: int,
                      loss_scale) -> Callable:
  """``find(state, batch) -> (report, micro_batch)``: the step of ``state`` on ``batch``
  re-run with ``handgrad.inspect.find_nonfinite`` (the hand engine, whatever the
  backend), with the very key and loss scale the step used.

  ``state`` is the state the step started from.  With ``accumulate=k`` the micro-batches
  are examined in order and the first one with a culprit is reported (``micro_batch``
  its index; ``None`` for ``k == 1``); when all are finite, the last report says so.
  """
  def find(state: TrainState, batch: Batch):
    _, sub = jax.random.split(jax.random.wrap_key_data(state.key))
    scale = None
    if loss_scale is not None and state.loss_scale is not None:
      scale = state.loss_scale.scale
    if frozen is None:
      fun, head = full_loss, (state.params,)
    else:
      trainable, fixed = partition(state.params, frozen_mask(state.params, frozen))

      def fun(trainable, fixed, batch, key, scale):
        return full_loss(combine(trainable, jax.tree.map(lax.stop_gradient, fixed)),
                         batch, key, scale)
      head = (trainable, fixed)
    micro = [(None, batch, sub)] if k == 1 else [
        (i, jax.tree.map(lambda a, i=i: a[i], _split_micro(batch, k)),
         jax.random.fold_in(sub, i)) for i in range(k)]
    report = index = None
    for index, mb, key in micro:
      # The loss scale goes to find_nonfinite (which multiplies the value by it, as the
      # step does, and says whether the scaler skips the step), not to the loss.
      report = find_nonfinite(fun, *head, mb, key, None, argnums=0, has_aux=True,
                              loss_scale=scale)
      if not report.finite:
        break
    return report, index

  return find


def make_train_step(loss_fn: LossFn, optimizer: optax.GradientTransformation, *,
                    backend: str = "hand", accumulate: int = 1, frozen: FrozenSpec = None,
                    loss_scale: mixed_precision.DynamicLossScale | None = None,
                    monitor: bool | Callable = False, monitor_every: int = 1,
                    has_aux: bool = True,
                    donate: bool = True, jit: bool = True, mesh: Any = None,
                    sharding: str = "data") -> TrainStep:
  """Builds ``train_step(state, batch) -> (state, metrics)``, jitted and donating ``state``.

  One call is one optimizer step:

  1. the state's key is split; the loss gets a fresh key every step;
  2. gradients of ``loss_fn`` with respect to the trainable params, by ``backend``;
     with ``accumulate=k`` the batch ``[B, ...]`` is cut into k micro-batches of
     ``B/k`` rows, their gradients, losses and aux metrics are summed in a
     ``lax.scan`` and divided by k.  For a loss that is a mean over the batch this is
     the big batch's gradient (up to float32 rounding) with the activation memory of a
     micro-batch: the seed's ``loss / accumulation_steps; loss.backward()`` loop.
     Micro-batch i gets ``fold_in(key, i)``, so with dropout the masks differ from a
     big-batch step;
  3. ``optimizer.update`` (put clipping in the optimizer, see ``make_optimizer``) and
     ``optax.apply_updates``, behind a guard: a step whose loss, gradients, new
     parameters or new optimizer state are not all finite is *skipped*: params and
     optimizer state stay bit-unchanged (the step count and the key advance), and
     ``metrics["skipped"]`` is 1.  ``fit`` reports such steps and stops after a few in
     a row.

  Frozen leaves (the seed's ``requires_grad=False``) are closed over as constants
  wrapped in ``lax.stop_gradient``: no gradient is computed for them (their gradient is
  reported as zeros to the optimizer) and they keep their exact bits.  Pass the same
  ``frozen`` spec to ``make_optimizer`` (or wrap the optimizer with ``freeze``) so that the
  optimizer keeps no state for them; the step is correct without it.

  Args:
    loss_fn: ``loss_fn(params, batch, key) -> (loss, aux)``, see the module docstring;
      with ``has_aux=False`` it returns the loss only.
    optimizer: an optax ``GradientTransformation``; the state's ``opt_state`` must come
      from its ``init`` (``TrainState.create(params, optimizer, key=...)``).
    backend: ``"hand"`` (``handgrad.value_and_grad``) or ``"jax"``.
    accumulate: number of micro-batches k per step; the batch size must be a multiple.
    frozen: a frozen spec (``None``, path prefixes, a ``path -> bool`` predicate or a
      bool pytree), see ``handgrad.train.frozen_mask``.
    loss_scale: dynamic loss scaling for float16 (``handgrad.train.DynamicLossScale``;
      the state must carry its ``LossScaleState``, see ``TrainState.create``).  The
      loss is multiplied by the scale before the backward pass and the gradients are
      divided by it after; the optimizer (clipping included) sees unscaled gradients.
      A skipped step also backs the scale off.  Metrics gain ``"loss_scale"``.
    monitor: ``True`` also returns per-parameter gradient statistics (mean, std,
      max |g|, norm, finite fraction; ``handgrad.inspect.gradient_stats``) as
      ``metrics["grad_stats"]``, computed on the device inside the step; a function
      ``grads -> pytree`` computes those statistics instead.
    monitor_every: compute the statistics only on the steps whose number (counted
      from 1: the state's ``step`` after the update) is a multiple of this; the others
      return no ``"grad_stats"``.  With ``monitor_every > 1`` the returned step holds
      two compiled programs, the plain step and the monitored one, and chooses on the
      host: an unmonitored step runs exactly the program of ``monitor=False``, every
      step gives the parameters of ``monitor=False`` bit for bit, and the statistics
      cost one step in ``monitor_every`` (``bench/diagnostics.py``).  The
      state's step count is read from the device only when the state passed in is
      not the one the previous call returned (the first call, a resumed state).  When
      that count is traced (``jit=False`` and the step called under an outer
      ``jax.jit``/``lax.scan``), one program chooses with ``lax.cond`` instead and
      returns ``"grad_stats"`` on every step, NaN on the unmonitored ones.
    has_aux: whether ``loss_fn`` returns ``(loss, aux)``.
    donate: donate the input state's buffers to the output (``donate_argnums=0``); the
      state passed in must not be used afterwards.
    jit: return the ``jax.jit``-ed step (``False`` is for debugging).
    mesh: a ``jax.sharding.Mesh`` (``handgrad.train.make_mesh("data=8")``) to run the
      step on all its devices; ``None``: one device.  See ``handgrad.train.mesh``.
    sharding: with a mesh, ``"data"`` (batch split along ``data``, state replicated),
      ``"fsdp"`` (state split along ``data`` too) or ``"megatron"`` (transformer
      heads and hidden units split along ``model``).  The step places the state and
      each batch itself; ``step.place(state)`` places a state ahead of time.

  Returns:
    ``train_step(state, batch) -> (new_state, metrics)`` with ``metrics`` a dict of
    float32 ``[]``: ``"loss"``, every aux metric, ``"skipped"`` (1 for a skipped step)
    and ``"grad_norm"``, the global norm of the (accumulated) gradient before clipping;
    with ``monitor``, ``"grad_stats"`` on the monitored steps.  With ``monitor_every >
    1`` the step is an ``EveryKSteps`` whose ``plain`` and ``monitored`` attributes are
    the two jitted steps (for ``.lower(...)``); ``last_monitored`` says whether the
    latest call computed the statistics.
    The step has a ``find_nonfinite(state, batch) -> (NonFiniteReport, micro_batch)``
    attribute: the same step (``state`` the state it started from, the same key and
    loss scale) re-run with ``handgrad.inspect.find_nonfinite``, which ``fit(debug_nans=
    True)`` calls on a non-finite step; the step itself is unchanged by it.
    When ``loss_fn`` knows the width of the model's output (``classification_loss``),
    the step has a ``num_outputs(state, batch) -> int`` attribute, which ``fit`` uses to
    check the labels.
  """
  if backend not in BACKENDS:
    raise ValueError(f"unknown gradient backend {backend!r}; choose one of "
                     f"{', '.join(BACKENDS)}")
  k = _check_positive_int("accumulate", accumulate)
  stats_fn = _monitor_fn(monitor)
  every = _check_positive_int("monitor_every", monitor_every)
  if stats_fn is None and every != 1:
    raise ValueError(f"monitor_every={every} needs monitor=True (or a statistics "
                     f"function)")
  loss_and_grads = _gradient_fn(_scaled_loss(loss_fn, has_aux), backend, frozen, k)

  def step_with(stats_mode: str) -> Callable:
    """The step (not jitted) computing the statistics as ``stats_mode`` says."""
    def train_step(state: TrainState, batch: Batch) -> tuple[TrainState, Metrics]:
      return _train_step(state, batch, stats_mode)
    return train_step

  def _train_step(state: TrainState, batch: Batch, stats_mode: str):
    rng, sub = jax.random.split(jax.random.wrap_key_data(state.key))
    if loss_scale is None:
      (loss, aux), grads = loss_and_grads(state.params, batch, sub, None)
    else:
      if state.loss_scale is None:
        raise ValueError("make_train_step(loss_scale=...) needs a state created with "
                         "TrainState.create(..., loss_scale=...)")
      scale = state.loss_scale.scale
      (loss, aux), grads = loss_and_grads(state.params, batch, sub, scale)
      loss = loss / scale.astype(loss.dtype)
      grads = loss_scale.unscale(state.loss_scale, grads)
    params, opt_state, scale_state, applied = _apply_update(optimizer, loss_scale, state,
                                                            loss, grads)
    params = _keep_frozen(frozen, state.params, params)
    stats = None
    if stats_mode == _STATS:
      stats = stats_fn(grads)
    elif stats_mode == _STATS_COND:
      stats = gradient_stats_every(grads, state.step + 1, every, stats=stats_fn)
    metrics = _step_metrics(loss, aux, grads, applied, scale_state, stats)
    new_state = TrainState(step=state.step + 1, params=params, opt_state=opt_state,
                           key=jax.random.key_data(rng), loss_scale=scale_state)
    return new_state, metrics

  def compiled(stats_mode: str) -> Callable:
    train_step = step_with(stats_mode)
    if mesh is not None:
      from handgrad._src.train import mesh as mesh_lib
      return mesh_lib.on_mesh(train_step, mesh, sharding, donate=donate)
    return jax.jit(train_step, donate_argnums=(0,) if donate else ()) if jit else train_step

  if stats_fn is None or every == 1:
    step = compiled(_NO_STATS if stats_fn is None else _STATS)
  else:
    # The host chooses between the plain and the monitored program (measured better
    # than a lax.cond inside one program); a traced step count falls back to the cond.
    plain = compiled(_NO_STATS)
    step = EveryKSteps(plain, compiled(_STATS), every,
                       steps_done=lambda state: state.step,
                       traced=step_with(_STATS_COND))
    for name in ("mesh", "sharding", "place"):
      if hasattr(plain, name):
        setattr(step, name, getattr(plain, name))
  step.find_nonfinite = _nonfinite_finder(_scaled_loss(loss_fn, has_aux), frozen, k,
                                          loss_scale)
  num_outputs = getattr(loss_fn, "num_outputs", None)
  if num_outputs is not None:
    step.num_outputs = lambda state, batch: num_outputs(state.params, batch)
  return step


def make_eval_step(eval_fn: EvalFn, *, jit: bool = True,
                   mesh: Any = None) -> Callable[[Params, Batch], Metrics]:
  """``eval_step(params, batch) -> sums``, jitted; no gradients, nothing donated.

  ``eval_fn(params, batch)`` returns a dict of *sums* over the batch's real rows plus
  ``"count"``, the number of real rows (``Σ mask``), so that :func:`evaluate` can
  average over a dataset whose last batch is padded.  See
  :func:`classification_eval`.  With ``mesh``, the batch is replicated on its devices
  and the parameters stay where they are (e.g. sharded by the train step).
  """
  if mesh is not None:
    from handgrad._src.train import mesh as mesh_lib
    return mesh_lib.eval_on_mesh(eval_fn, mesh)
  return jax.jit(eval_fn) if jit else eval_fn


def evaluate(eval_step: Callable[[Params, Batch], Metrics], params: Params, dataset, *,
             batch_size: int) -> dict[str, float]:
  """Averages ``eval_step`` over ``dataset`` in its stored order.

  Batches of ``batch_size`` rows, the last one padded (``remainder="pad"``, one shape,
  one compilation); every sum is divided by the total ``"count"``.

  Returns:
    ``{name: Σ value / Σ count}`` for every metric, plus ``"count"`` (a float).
  """
  totals: dict[str, Any] = {}
  for batch in _batches(dataset, batch_size, key=None, shuffle=False, remainder="pad"):
    out = eval_step(params, batch)
    for name, v in out.items():
      totals[name] = totals[name] + v if name in totals else v
  totals = {name: float(v) for name, v in jax.device_get(totals).items()}
  count = totals.pop("count", None)
  if not count:
    raise ValueError("evaluate: the eval step returned no positive 'count' (is the "
                     "dataset empty?)")
  return {**{name: v / count for name, v in totals.items()}, "count": count}


# --- classification ------------------------------------------------------------------

def classification_loss(apply_fn: Callable[[Params, Array], Array], *,
                        precision: str | mixed_precision.Policy = "float32") -> LossFn:
  """The seed's loss: mean softmax cross-entropy of ``apply_fn(params, batch.x)``.

  Uses ``handgrad.ops.softmax_cross_entropy`` (one node with the fused backward
  ``(softmax − onehot) / B``).  Returns ``loss_fn(params, batch, key) -> (loss,
  {"accuracy": ...})``; ``batch`` has ``x [B, ...]`` and int ``y [B]``.  Training
  batches must be full (``remainder="drop"``): ``batch.mask`` is not used.
  ``precision`` (``"float32"``, ``"bf16"``, ``"fp16"`` or a ``Policy``) runs the model in
  that dtype with float32 parameters and float32 logits.
  """
  policy = precision if isinstance(precision, mixed_precision.Policy) else \
      mixed_precision.get_policy(precision)
  apply_fn = policy.apply(apply_fn)

  def loss_fn(params, batch, key):
    del key
    logits = apply_fn(params, batch.x)
    loss = softmax_cross_entropy(logits, batch.y)
    accuracy = jnp.mean((jnp.argmax(logits, axis=-1) == batch.y).astype(jnp.float32))
    return loss, {"accuracy": accuracy}

  def num_outputs(params, batch) -> int:
    """The width of the logits (the labels must lie in ``[0, width)``)."""
    return int(jax.eval_shape(apply_fn, params, batch.x).shape[-1])

  loss_fn.num_outputs = num_outputs
  return loss_fn


def classification_eval(apply_fn: Callable[[Params, Array], Array], *,
                        precision: str | mixed_precision.Policy = "float32") -> EvalFn:
  """``eval_fn(params, batch) -> {"loss": Σ mask·CE, "accuracy": Σ mask·correct,
  "count": Σ mask}`` for :func:`make_eval_step` and :func:`evaluate`."""
  policy = precision if isinstance(precision, mixed_precision.Policy) else \
      mixed_precision.get_policy(precision)
  apply_fn = policy.apply(apply_fn)

  def eval_fn(params, batch):
    logits = apply_fn(params, batch.x)
    log_probs = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    nll = -jnp.take_along_axis(log_probs, batch.y[..., None].astype(jnp.int32),
                               axis=-1)[..., 0]
    correct = (jnp.argmax(logits, axis=-1) == batch.y).astype(jnp.float32)
    mask = batch.mask.astype(jnp.float32)
    return {"loss": jnp.sum(mask * nll), "accuracy": jnp.sum(mask * correct),
            "count": jnp.sum(mask)}

  return eval_fn
