"""The seed's ``SafeOptimizer`` as an optax ``GradientTransformation``.

Per step, on the raw gradient ``g`` with global L2 norm ``n``:

1. If ``n`` is not finite (a NaN or inf anywhere, or an overflowing norm), or the update
   the inner optimizer makes of the clipped gradient is not finite, the step is
   skipped: the update is zero and the whole state (inner optimizer, learning rate,
   explosion count) is kept bit for bit, with ``last_skipped=True``.  Every skipped
   step is skipped, however many come in a row.  ``optax.apply_if_finite(inner,
   max_consecutive_errors=k)`` instead applies the (k+1)-th consecutive non-finite
   update and corrupts the parameters.
2. Otherwise, as the seed: ``n > explosion_factor · max_grad_norm`` counts an
   explosion (``explosion_count += 1``), any other step resets the count to 0; when
   the count reaches ``patience`` the learning rate is halved and the count reset.
   The step that triggers the halving already uses the halved rate (the seed halves
   before ``optimizer.step()``).
3. ``g`` is clipped like ``torch.nn.utils.clip_grad_norm_`` (scaled by
   ``min(max_grad_norm / (n + 1e-6), 1)``) and handed to the inner optimizer.

The state holds the current learning rate, so it survives checkpointing (it is a
pytree of arrays) and can be logged.  Everything is ``jnp.where`` on arrays: jit-safe,
no host callback, no Python branching on values.
"""

from __future__ import annotations

import math
import numbers
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import optax

from handgrad._src.train.clipping import EPS
from handgrad._src.train.trees import all_finite, global_norm


class SafeOptimizerState(NamedTuple):
  """State of :func:`safe_optimizer`; every field is an array (checkpointable).

  Attributes:
    inner_state: the inner optimizer's state.  With an optimizer factory it is an
      ``optax.inject_hyperparams`` state whose ``learning_rate`` hyperparameter is
      overwritten with :attr:`learning_rate` at every step.
    learning_rate: float32 scalar, the current learning rate.
    explosion_count: int32 scalar, consecutive explosions since the last reset.
    last_skipped: bool scalar, whether the last step was skipped (non-finite norm).
    last_norm: float32 scalar, the global norm of the last raw gradient.
    num_skipped: int32 scalar, how many steps were skipped in total.
  """
  inner_state: optax.OptState
  learning_rate: jax.Array
  explosion_count: jax.Array
  last_skipped: jax.Array
  last_norm: jax.Array
  num_skipped: jax.Array


def _set_learning_rate(inner_state, lr):
  hp = dict(inner_state.hyperparams)
  hp["learning_rate"] = jnp.asarray(lr, jnp.result_type(hp["learning_rate"]))
  return inner_state._replace(hyperparams=hp)


def _check_positive_finite(name: str, value) -> None:
  if (isinstance(value, bool) or not isinstance(value, numbers.Real)
      or not math.isfinite(value) or value <= 0):
    raise ValueError(f"safe_optimizer: {name} must be a finite positive number, got "
                     f"{value!r}")


def safe_optimizer(inner: Callable[..., optax.GradientTransformation]
                   | optax.GradientTransformation, *, learning_rate: float,
                   max_grad_norm: float = 1.0, patience: int = 5,
                   explosion_factor: float = 10.0) -> optax.GradientTransformation:
  """Clipping, explosion counting, learning-rate halving and non-finite skipping.

  Args:
    inner: either an optax optimizer *factory* taking ``learning_rate`` (``optax.sgd``,
      ``optax.adam``, ``functools.partial(optax.adamw, weight_decay=1e-4)``), wrapped
      with ``optax.inject_hyperparams`` so its learning rate lives in the state; or a
      ``GradientTransformation`` giving a *direction* (``optax.scale_by_adam()``,
      ``optax.identity()``), whose updates are multiplied by ``-learning_rate`` here.
      Do not pass a complete optimizer such as ``optax.adam(1e-3)`` as a
      transformation: its own rate would multiply this one.
    learning_rate: the initial learning rate (a float; halved on repeated explosions).
    max_grad_norm: clip the global gradient norm to this (the seed's 1.0).
    patience: consecutive explosions that halve the learning rate (the seed's 5).
    explosion_factor: an explosion is a norm above ``explosion_factor · max_grad_norm``
      (the seed's 10).

  Returns:
    An ``optax.GradientTransformation`` whose state is a :class:`SafeOptimizerState`.

  Raises:
    ValueError: ``learning_rate``, ``max_grad_norm`` or ``explosion_factor`` not a finite
      positive number, or ``patience`` not an int >= 1.
  """
  _check_positive_finite("learning_rate", learning_rate)
  _check_positive_finite("max_grad_norm", max_grad_norm)
  _check_positive_finite("explosion_factor", explosion_factor)
  if isinstance(patience, bool) or not isinstance(patience, numbers.Integral) or patience < 1:
    raise ValueError(f"safe_optimizer: patience must be an int >= 1, got {patience!r}")
  if isinstance(inner, optax.GradientTransformation):
    direction, opt = True, inner
  elif callable(inner):
    direction, opt = False, optax.inject_hyperparams(inner)(learning_rate=learning_rate)
  else:
    raise TypeError("safe_optimizer: inner must be an optax optimizer factory "
                    "(optax.adam) or a GradientTransformation, got "
                    f"{type(inner).__name__}")
  threshold = explosion_factor * max_grad_norm

  def init_fn(params):
    return SafeOptimizerState(
        inner_state=opt.init(params),
        learning_rate=jnp.asarray(learning_rate, jnp.float32),
        explosion_count=jnp.zeros((), jnp.int32),
        last_skipped=jnp.zeros((), jnp.bool_),
        last_norm=jnp.zeros((), jnp.float32),
        num_skipped=jnp.zeros((), jnp.int32))

  def update_fn(updates, state, params=None):
    norm = global_norm(updates).astype(jnp.float32)
    finite = jnp.isfinite(norm)
    # The seed's explosion bookkeeping, on finite steps only.
    exploded = norm > threshold
    count = jnp.where(exploded, state.explosion_count + 1, 0).astype(jnp.int32)
    halve = count >= patience
    lr = jnp.where(halve, state.learning_rate * 0.5, state.learning_rate)
    count = jnp.where(halve, 0, count).astype(jnp.int32)
    # clip_grad_norm_; a skipped step feeds zeros so the inner update stays finite.
    coef = jnp.minimum(max_grad_norm / (norm + EPS), 1.0)
    clipped = jax.tree.map(
        lambda g: jnp.where(finite, g * coef.astype(g.dtype), jnp.zeros_like(g)), updates)
    if direction:
      new_updates, new_inner = opt.update(clipped, state.inner_state, params)
      new_updates = jax.tree.map(lambda u: -lr.astype(u.dtype) * u, new_updates)
    else:
      inner_state = _set_learning_rate(state.inner_state, lr)
      new_updates, new_inner = opt.update(clipped, inner_state, params)

    # A finite gradient can still give a non-finite update (an inf Adam moment): such
    # an update is never applied either.
    finite = finite & all_finite(new_updates)

    def keep(new, old):
      return jnp.where(finite, new, old)

    new_updates = jax.tree.map(lambda u: jnp.where(finite, u, jnp.zeros_like(u)),
                               new_updates)
    new_state = SafeOptimizerState(
        inner_state=jax.tree.map(keep, new_inner, state.inner_state),
        learning_rate=keep(lr, state.learning_rate),
        explosion_count=keep(count, state.explosion_count),
        last_skipped=~finite,
        last_norm=norm,
        num_skipped=state.num_skipped + (~finite).astype(jnp.int32))
    return new_updates, new_state

  return optax.GradientTransformation(init_fn, update_fn)
