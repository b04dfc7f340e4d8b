"""The train state: everything a run needs to continue, as one pytree.

``TrainState(step, params, opt_state, key)`` is a ``NamedTuple``, hence a pytree that
``jax.jit`` can donate, ``jax.tree`` can map over and orbax can save and restore
without registration.  The PRNG key is stored as raw ``uint32`` key data
(``jax.random.key_data``) so that the checkpoint holds plain arrays only; wrap it back
with :meth:`TrainState.rng` when a typed key is needed.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

Array = jax.Array
Params = Any
"""A parameter pytree (``handgrad.nn`` params: nested dicts and lists of arrays)."""
PyTree = Any


def key_data(key: Array | int) -> Array:
  """A typed key, a legacy ``uint32 [2]`` key or an int seed -> raw ``uint32`` key data."""
  if isinstance(key, (int, np.integer)) and not isinstance(key, bool):
    key = jax.random.key(int(key))
  dtype = getattr(key, "dtype", None)
  if dtype is None:
    raise TypeError(f"key must be a PRNG key or an int seed, got {type(key).__name__}")
  if jax.dtypes.issubdtype(dtype, jax.dtypes.prng_key):
    return jax.random.key_data(key)
  if np.dtype(dtype) == np.uint32 and np.ndim(key) >= 1:
    return jnp.asarray(key)
  raise TypeError(f"key must be a PRNG key (jax.random.key(0)) or an int seed, got an "
                  f"array of dtype {dtype} and shape {np.shape(key)}")


class TrainState(NamedTuple):
  """The state of a training run.

  Attributes:
    step: int32 ``[]``, the number of optimizer steps taken so far.
    params: the parameter pytree.
    opt_state: the optax optimizer state for ``params``.
    key: uint32 ``[2]`` raw PRNG key data (``jax.random.key_data``); :meth:`rng`
      returns it as a typed key.  The train step splits it once per step.
    loss_scale: the dynamic loss scale of float16 training
      (``handgrad.train.LossScaleState``), or ``None``.
  """
  step: Array
  params: Params
  opt_state: optax.OptState
  key: Array
  loss_scale: Any = None

  @classmethod
  def create(cls, params: Params, optimizer: optax.GradientTransformation, *,
             key: Array | int, loss_scale: Any = None) -> "TrainState":
    """A fresh state at step 0: ``opt_state = optimizer.init(params)``.

    ``key`` (a typed key, raw key data or an int seed) seeds the per-step keys that
    the loss receives (dropout).  ``params`` are copied, so donating the state to a
    jitted step never invalidates the caller's arrays.  ``loss_scale`` is a
    ``DynamicLossScale`` (its initial state is stored) or ``None``.
    """
    params = jax.tree.map(jnp.array, params)
    return cls(step=jnp.zeros((), jnp.int32), params=params,
               opt_state=optimizer.init(params), key=key_data(key),
               loss_scale=None if loss_scale is None else loss_scale.init())

  def rng(self) -> Array:
    """The state's key as a typed PRNG key."""
    return jax.random.wrap_key_data(self.key)


def create_train_state(params: Params, optimizer: optax.GradientTransformation, *,
                       key: Array | int, loss_scale: Any = None) -> TrainState:
  """Same as :meth:`TrainState.create`."""
  return TrainState.create(params, optimizer, key=key, loss_scale=loss_scale)
