"""Mixed precision: a precision policy and dynamic loss scaling for float16.

The policy keeps parameters (and the optimizer) in float32, runs the model in a lower
precision, and returns float32 outputs, so the loss and its reduction stay accurate:

    policy = get_policy("bf16")           # params float32, compute bfloat16, output float32
    logits = policy.apply(model.apply)(params, x)

Under ``handgrad.grad`` the casts are ``convert_element_type`` equations; their hand rule
casts the cotangent back, so a bfloat16 layer's parameter gradient arrives in float32 and
every rule keeps cotangent dtype equal to primal dtype.

float16 has 5 exponent bits: small gradients underflow to zero.  Dynamic loss scaling
(the seed's ``GradScaler``) multiplies the loss by a large scale S before the backward
pass and divides the gradients by S after it.  When a step's gradients are not finite
the step is skipped (parameters and optimizer state bit-unchanged) and S is halved; after
``growth_interval`` finite steps in a row S doubles.  Clipping, when used, sees the
unscaled gradients.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import optax


def _cast_floats(tree: Any, dtype) -> Any:
  def cast(x):
    if hasattr(x, "dtype") and jnp.issubdtype(x.dtype, jnp.floating) and x.dtype != dtype:
      return x.astype(dtype)
    return x
  return jax.tree.map(cast, tree)


@dataclasses.dataclass(frozen=True)
class Policy:
  """Which dtype parameters are stored in, computed in, and returned in."""
  param_dtype: Any = jnp.float32
  compute_dtype: Any = jnp.float32
  output_dtype: Any = jnp.float32

  def cast_to_compute(self, tree: Any) -> Any:
    return _cast_floats(tree, self.compute_dtype)

  def cast_to_param(self, tree: Any) -> Any:
    return _cast_floats(tree, self.param_dtype)

  def cast_to_output(self, tree: Any) -> Any:
    return _cast_floats(tree, self.output_dtype)

  def apply(self, apply_fn: Callable[..., Any]) -> Callable[..., Any]:
    """``apply_fn(params, x, ...)`` run in the compute dtype, returning the output dtype."""
    def wrapped(params, x, *args, **kwargs):
      out = apply_fn(self.cast_to_compute(params), self.cast_to_compute(x), *args, **kwargs)
      return self.cast_to_output(out)
    return wrapped

  @property
  def needs_loss_scaling(self) -> bool:
    return jnp.dtype(self.compute_dtype) == jnp.float16


POLICIES = {
    "float32": Policy(),
    "fp32": Policy(),
    "bf16": Policy(compute_dtype=jnp.bfloat16),
    "bfloat16": Policy(compute_dtype=jnp.bfloat16),
    "fp16": Policy(compute_dtype=jnp.float16),
    "float16": Policy(compute_dtype=jnp.float16),
}


def get_policy(name: str) -> Policy:
  """``"float32"``, ``"bf16"`` or ``"fp16"`` (parameters and outputs stay float32)."""
  try:
    return POLICIES[name]
  except KeyError:
    raise ValueError(f"unknown precision {name!r}; choose from float32, bf16, fp16") from None


class LossScaleState(NamedTuple):
  """Dynamic loss scale: the current scale and the count of finite steps in a row."""
  scale: jax.Array  # float32 []
  good_steps: jax.Array  # int32 []


@dataclasses.dataclass(frozen=True)
class DynamicLossScale:
  """The seed's ``GradScaler``, as pure functions over a ``LossScaleState`` pytree.

  ``initial_scale`` 2¹⁵ (torch uses 2¹⁶); ×``growth_factor`` after ``growth_interval``
  finite steps; ×``backoff_factor`` on a non-finite step; never below ``min_scale``.
  """
  initial_scale: float = 2.0 ** 15
  growth_interval: int = 2000
  growth_factor: float = 2.0
  backoff_factor: float = 0.5
  min_scale: float = 1.0

  def init(self) -> LossScaleState:
    return LossScaleState(jnp.asarray(self.initial_scale, jnp.float32), jnp.zeros((), jnp.int32))

  def scale(self, state: LossScaleState, loss: jax.Array) -> jax.Array:
    return loss * state.scale.astype(loss.dtype)

  def unscale(self, state: LossScaleState, grads: Any) -> Any:
    inv = 1.0 / state.scale
    return jax.tree.map(lambda g: (g.astype(jnp.float32) * inv).astype(g.dtype), grads)

  def adjust(self, state: LossScaleState, grads_finite: jax.Array) -> LossScaleState:
    grown = state.good_steps + 1 >= self.growth_interval
    finite_scale = jnp.where(grown, state.scale * self.growth_factor, state.scale)
    finite_steps = jnp.where(grown, 0, state.good_steps + 1)
    backoff = jnp.maximum(state.scale * self.backoff_factor, self.min_scale)
    return LossScaleState(
        jnp.where(grads_finite, finite_scale, backoff).astype(jnp.float32),
        jnp.where(grads_finite, finite_steps, 0).astype(jnp.int32))


def all_finite(tree: Any) -> jax.Array:
  """True when every floating leaf of ``tree`` is finite (a jit-safe bool scalar)."""
  leaves = [jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)
            if jnp.issubdtype(jnp.result_type(x), jnp.inexact)]
  return jnp.stack(leaves).all() if leaves else jnp.asarray(True)


def select_tree(pred: jax.Array, on_true: Any, on_false: Any) -> Any:
  """Leafwise ``where(pred, a, b)``: bit-exact copies of either side."""
  return jax.tree.map(lambda a, b: jax.lax.select(pred, a, b), on_true, on_false)


def guarded_update(optimizer: optax.GradientTransformation, grads: Any, opt_state: Any,
                   params: Any) -> tuple[Any, Any, jax.Array]:
  """Applies ``optimizer`` only when ``grads`` are finite.

  Returns ``(params, opt_state, finite)``; on a non-finite step both are returned
  bit-unchanged.  The optimizer (clipping included) sees the grads as given, so pass
  unscaled gradients.
  """
  finite = all_finite(grads)
  safe_grads = jax.tree.map(lambda g: jnp.where(finite, g, jnp.zeros_like(g)), grads)
  updates, new_state = optimizer.update(safe_grads, opt_state, params)
  new_params = optax.apply_updates(params, updates)
  return select_tree(finite, new_params, params), select_tree(finite, new_state, opt_state), finite
