"""Batch normalisation with its running statistics as explicit state.

``batch_norm`` normalises each feature over the batch (and spatial) axes.  Its running
mean and variance are not parameters (nothing differentiates them) but state that
training updates: ``apply`` takes ``state`` and returns ``(y, new_state)``::

    params = hg.nn.batch_norm.init(32, key=key)
    state = hg.nn.batch_norm_state(32)
    y, state = hg.nn.batch_norm.apply(params, x, state=state, train=True)
    y, _ = hg.nn.batch_norm.apply(params, x, state=state, train=False)   # evaluation

The hand rule of ``ops.batch_norm`` (``rules/cnn_layers.py``) is where its backward
math lives.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Float

from handgrad._src.rules import cnn_layers as ops  # the layer-level ops handgrad.ops re-exports
from handgrad._src.nn.base import (Array, Layer, Params, check_key, check_shape, get_param,
                                   layer_scope)
from handgrad._src.nn.core import DType


def batch_norm_state(features: int, dtype: DType = jnp.float32) -> Params:
  """``{"mean": [features] zeros, "var": [features] ones}``: the running statistics."""
  return {"mean": jnp.zeros((int(features),), dtype), "var": jnp.ones((int(features),), dtype)}


def _batch_norm_init(features: int, *, key: Array, dtype: DType = jnp.float32) -> Params:
  """``{"gamma": [features] ones, "beta": [features] zeros}`` (``key`` unused but
  required, like every ``init`` here)."""
  check_key(key, "batch_norm")
  if int(features) < 1:
    raise ValueError(f"batch_norm.init: features must be positive, got {features}")
  return {"gamma": jnp.ones((int(features),), dtype), "beta": jnp.zeros((int(features),), dtype)}


def _batch_norm_apply(params: Params, x: Float[Array, "batch *rest features"], *,
                      state: Params, train: bool, momentum: float = 0.9, eps: float = 1e-5,
                      path: str = "batch_norm"
                      ) -> tuple[Float[Array, "batch *rest features"], Params]:
  """x: [N, …, F] -> (y [N, …, F], new state).

  ``train=True`` normalises with the batch's mean and (biased) variance and moves the
  running statistics towards them (new = momentum·old + (1 − momentum)·batch);
  ``train=False`` normalises with the running statistics and returns them unchanged.
  ``train`` is a static Python bool.
  """
  where = path or "<root>"
  if not isinstance(train, (bool, np.bool_)):
    raise TypeError(f"{where}: train must be a Python bool, got {type(train).__name__}")
  with layer_scope(path):
    gamma, beta = get_param(params, path, "gamma"), get_param(params, path, "beta")
    mean, var = get_param(state, path, "mean"), get_param(state, path, "var")
    if np.ndim(x) < 2:
      raise ValueError(f"{where}: batch_norm needs an input [N, …, F], got shape "
                       f"{tuple(np.shape(x))}")
    feats = np.shape(x)[-1]
    ctx = f"to match an input with {feats} features"
    for name, value in (("gamma", gamma), ("beta", beta), ("mean", mean), ("var", var)):
      check_shape(path, name, (feats,), np.shape(value), context=ctx)
    y, new_mean, new_var = ops.batch_norm(x, gamma, beta, mean, var, train=bool(train),
                                          momentum=float(momentum), eps=float(eps))
    return y, {"mean": jax.lax.stop_gradient(new_mean), "var": jax.lax.stop_gradient(new_var)}


batch_norm = Layer.named("batch_norm", _batch_norm_init, _batch_norm_apply)
