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
``growth_interval`` finite steps in a row S doubles, unless the doubled scale would not
be finite (jmp's rule: the scale only ever grows to a finite value, so it can always back
off again).  Clipping, when used, sees the unscaled gradients.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import optax

from handgrad._src.train.trees import all_finite, global_norm, select_tree


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


def _real(name: str, value) -> float:
  if isinstance(value, bool) or not isinstance(value, numbers.Real):
    raise ValueError(f"DynamicLossScale: {name} must be a number, got {value!r}")
  return float(value)


@dataclasses.dataclass(frozen=True)
class DynamicLossScale:
  """The seed's ``GradScaler``, as pure functions over a ``LossScaleState`` pytree.

  ``initial_scale`` 2¹⁵ (torch uses 2¹⁶); ×``growth_factor`` after ``growth_interval``
  finite steps (only when the product is finite); ×``backoff_factor`` on a non-finite
  step; never below ``min_scale``.

  Raises:
    ValueError: at construction, for a non-finite or non-positive ``initial_scale`` or
      ``min_scale``, ``min_scale > initial_scale``, ``growth_factor <= 1``,
      ``backoff_factor`` outside ``(0, 1)`` (torch's ``GradScaler`` asserts the same
      two), or ``growth_interval`` not a positive int.
  """
  initial_scale: float = 2.0 ** 15
  growth_interval: int = 2000
  growth_factor: float = 2.0
  backoff_factor: float = 0.5
  min_scale: float = 1.0

  def __post_init__(self):
    initial, minimum = _real("initial_scale", self.initial_scale), _real("min_scale",
                                                                         self.min_scale)
    growth, backoff = _real("growth_factor", self.growth_factor), _real("backoff_factor",
                                                                        self.backoff_factor)
    finite32 = lambda v: math.isfinite(v) and abs(v) <= float(jnp.finfo(jnp.float32).max)  # noqa: E731
    if not (finite32(initial) and initial > 0):
      raise ValueError(f"DynamicLossScale: initial_scale must be a finite positive float32, "
                       f"got {self.initial_scale!r}")
    if not (finite32(minimum) and minimum > 0):
      raise ValueError(f"DynamicLossScale: min_scale must be a finite positive number, got "
                       f"{self.min_scale!r}")
    if minimum > initial:
      raise ValueError(f"DynamicLossScale: min_scale {self.min_scale!r} is larger than "
                       f"initial_scale {self.initial_scale!r}")
    if not (math.isfinite(growth) and growth > 1):
      raise ValueError(f"DynamicLossScale: growth_factor must be a finite number > 1, got "
                       f"{self.growth_factor!r}")
    if not (0 < backoff < 1):
      raise ValueError(f"DynamicLossScale: backoff_factor must lie in (0, 1), got "
                       f"{self.backoff_factor!r}")
    interval = self.growth_interval
    if isinstance(interval, bool) or not isinstance(interval, numbers.Integral) or interval < 1:
      raise ValueError(f"DynamicLossScale: growth_interval must be a positive int, got "
                       f"{interval!r}")

  def init(self) -> LossScaleState:
    return LossScaleState(jnp.asarray(self.initial_scale, jnp.float32), jnp.zeros((), jnp.int32))

  def scale(self, state: LossScaleState, loss: jax.Array) -> jax.Array:
    return loss * state.scale.astype(loss.dtype)

  def unscale(self, state: LossScaleState, grads: Any) -> Any:
    inv = 1.0 / state.scale
    return jax.tree.map(lambda g: (g.astype(jnp.float32) * inv).astype(g.dtype), grads)

  def adjust(self, state: LossScaleState, grads_finite: jax.Array) -> LossScaleState:
    """The next state after a step whose gradients were (not) finite."""
    grown = state.good_steps + 1 >= self.growth_interval
    bigger = (state.scale * self.growth_factor).astype(jnp.float32)
    # jmp's rule: grow only to a finite scale (from inf, backoff would stay inf and
    # every later step would be skipped).
    finite_scale = jnp.where(grown & jnp.isfinite(bigger), bigger, state.scale)
    finite_steps = jnp.where(grown, 0, state.good_steps + 1)
    backoff = jnp.maximum(state.scale * self.backoff_factor, self.min_scale)
    return LossScaleState(
        jnp.where(grads_finite, finite_scale, backoff).astype(jnp.float32),
        jnp.where(grads_finite, finite_steps, 0).astype(jnp.int32))


def guarded_update(optimizer: optax.GradientTransformation, grads: Any, opt_state: Any,
                   params: Any, *, loss: jax.Array | None = None
                   ) -> tuple[Any, Any, jax.Array]:
  """Applies ``optimizer`` only when ``grads`` and the update made of them are finite.

  Returns ``(params, opt_state, finite)``: ``finite`` is true when the global norm of
  the gradients is finite (no NaN or inf, and no overflow of the sum of squares, which
  would also overflow an Adam second moment), the update is finite, and, with ``loss``
  given, the loss is finite; otherwise params and optimizer state are returned
  bit-unchanged.  The optimizer (clipping included) sees the grads as given, so pass
  unscaled gradients.
  """
  finite = jnp.isfinite(global_norm(grads))
  if loss is not None:
    finite = finite & all_finite(loss)
  updates, new_state = optimizer.update(grads, opt_state, params)
  finite = finite & all_finite(updates)
  new_params = optax.apply_updates(params, updates)
  return select_tree(finite, new_params, params), select_tree(finite, new_state, opt_state), finite
