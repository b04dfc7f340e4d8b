"""Embeddings: rows of a learned table looked up by integer ids.

The math is ``handgrad.ops.embedding`` (``rules/cnn_layers.py``): the backward pass
scatter-adds each position's cotangent into the row it read.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Float, Int

from handgrad._src.rules import cnn_layers as ops  # the layer-level ops handgrad.ops re-exports
from handgrad._src.nn.base import Array, Layer, Params, check_key, get_param, layer_scope
from handgrad._src.nn.core import DType


def _embedding_init(num_embeddings: int, features: int, *, key: Array,
                    dtype: DType = jnp.float32) -> Params:
  """``{"table": [num_embeddings, features]}``, normal with std 1/√features (flax's
  ``Embed`` default)."""
  check_key(key, "embedding")
  if int(num_embeddings) < 1 or int(features) < 1:
    raise ValueError(f"embedding.init: sizes must be positive, got {num_embeddings} x "
                     f"{features}")
  table = jax.random.normal(key, (int(num_embeddings), int(features)), dtype)
  return {"table": table * jnp.asarray(1 / math.sqrt(int(features)), dtype)}


def _embedding_apply(params: Params, ids: Int[Array, "*batch"], *, path: str = "embedding"
                     ) -> Float[Array, "*batch features"]:
  """ids: int [B…] -> [B…, features].  Negative ids count from the end; ids outside
  [−V, V) give NaN rows.  Backward: each row's gradient sums the cotangents of the
  positions that looked it up."""
  where = path or "<root>"
  with layer_scope(path):
    table = get_param(params, path, "table")
    if np.ndim(table) != 2:
      raise ValueError(f"{where}: parameter 'table' has shape {tuple(np.shape(table))}, "
                       "expected [num_embeddings, features]")
    if not jnp.issubdtype(jnp.result_type(ids), jnp.integer):
      raise TypeError(f"{where}: ids must be integers, got {jnp.result_type(ids)}")
    return ops.embedding(table, ids)


embedding = Layer.named("embedding", _embedding_init, _embedding_apply)
