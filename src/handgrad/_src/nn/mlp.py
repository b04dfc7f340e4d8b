"""Multi-layer perceptrons: the seed's ``MLP`` and ``ResidualBlock``, and a residual MLP.

``mlp.init([784, 256, 128, 10], key=key)`` gives the seed's network: parameters
``layers/0/W`` [784, 256], ``layers/0/b`` [256], ..., ``layers/2/b`` [10]; ``apply``
puts the activation between layers and none after the last, so the output is logits.
"""

from __future__ import annotations

from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Float

from handgrad._src.nn.base import (Array, Layer, Params, check_key, check_shape,
                                   get_param, join_path, layer_scope)
from handgrad._src.nn.core import DType, Initializer, activation_fn, dense

Activation = str | Callable[[Array], Array]


def default_init(activation: Activation) -> str:
  """He for ReLU-like activations, Glorot for the saturating ones (sigmoid, tanh)."""
  return "xavier" if activation in ("sigmoid", "tanh") else "he"


# --- the seed's MLP ------------------------------------------------------------------

def _mlp_init(layer_dims: Sequence[int], *, key: Array, init: str | Initializer | None = None,
              activation: Activation = "relu", dtype: DType = jnp.float32) -> Params:
  """``{"layers": [dense params for d_i -> d_{i+1}]}``.

  ``init=None`` picks the initialiser for ``activation`` (He for relu/gelu, Glorot for
  sigmoid/tanh); ``init="normal"`` is the seed's ``0.01·randn``.  ``activation`` only
  steers that choice: pass the same one to ``apply`` (params hold arrays only).
  """
  check_key(key, "mlp")
  dims = [int(d) for d in layer_dims]
  if len(dims) < 2:
    raise ValueError(f"mlp.init needs at least an input and an output size, got {dims}")
  activation_fn(activation)  # validate early
  scheme = default_init(activation) if init is None else init
  keys = jax.random.split(key, len(dims) - 1)
  return {"layers": [dense.init(i, o, key=k, init=scheme, dtype=dtype)
                     for i, o, k in zip(dims[:-1], dims[1:], keys)]}


def _mlp_apply(params: Params, x: Float[Array, "*batch in"], *,
               activation: Activation = "relu", path: str = "") -> Float[Array, "*batch out"]:
  """x: [B…, d_0] -> [B…, d_L].  ``act(dense)`` for every layer but the last, which is
  linear (logits).  Layer i runs under the scope ``layers/i``, its activation included.
  """
  act = activation_fn(activation)
  with layer_scope(path):
    layers = get_param(params, path, "layers")
    for i, p in enumerate(layers):
      lp = join_path(path, f"layers/{i}")
      with layer_scope(lp):
        x = dense.apply(p, x, path=lp)
        if i < len(layers) - 1:
          x = act(x)
    return x


mlp = Layer.named("mlp", _mlp_init, _mlp_apply)


# --- the seed's ResidualBlock --------------------------------------------------------

def _residual_block_init(dim: int, *, key: Array, init: str | Initializer = "he",
                         dtype: DType = jnp.float32) -> Params:
  """``{"linear1": dense(dim, dim), "linear2": dense(dim, dim)}``."""
  check_key(key, "residual_block")
  k1, k2 = jax.random.split(key)
  return {"linear1": dense.init(dim, dim, key=k1, init=init, dtype=dtype),
          "linear2": dense.init(dim, dim, key=k2, init=init, dtype=dtype)}


def _residual_block_apply(params: Params, x: Float[Array, "*batch dim"], *,
                          activation: Activation = "relu", path: str = "residual_block"
                          ) -> Float[Array, "*batch dim"]:
  """``relu(linear2(relu(linear1(x))) + x)``.   x: [B…, dim] -> [B…, dim].

  The skip connection gives ∂y/∂x = act'·(∂F/∂x + 1): the "+1" carries blame past
  the block undiminished, which is why deep residual stacks do not vanish.
  ``activation`` replaces both ReLUs (for comparisons with saturating activations).
  """
  act = activation_fn(activation)
  with layer_scope(path):
    p1, p2 = get_param(params, path, "linear1"), get_param(params, path, "linear2")
    h = act(dense.apply(p1, x, path=join_path(path, "linear1")))
    W2 = get_param(p2, join_path(path, "linear2"), "W")
    feats = np.shape(x)[-1] if np.ndim(x) else None
    if feats is not None and np.ndim(W2) == 2:
      check_shape(join_path(path, "linear2"), "W", (W2.shape[0], feats), np.shape(W2),
                  context=f"so its output can be added to the residual input of "
                          f"{feats} features")
    out = dense.apply(p2, h, path=join_path(path, "linear2"))
    return act(out + x)


residual_block = Layer.named("residual_block", _residual_block_init, _residual_block_apply)


# --- residual MLP --------------------------------------------------------------------

def _residual_mlp_init(in_dim: int, hidden_dim: int, out_dim: int, num_blocks: int, *,
                       key: Array, init: str | Initializer | None = None,
                       activation: Activation = "relu",
                       dtype: DType = jnp.float32) -> Params:
  """``{"input": dense(in, hidden), "blocks": [residual_block(hidden)] * N,
  "output": dense(hidden, out)}``; ``init=None`` picks by ``activation`` as in ``mlp``."""
  check_key(key, "residual_mlp")
  if int(num_blocks) < 0:
    raise ValueError(f"residual_mlp.init: num_blocks must be >= 0, got {num_blocks}")
  activation_fn(activation)
  scheme = default_init(activation) if init is None else init
  k_in, k_out, k_blocks = jax.random.split(key, 3)
  block_keys = jax.random.split(k_blocks, max(int(num_blocks), 1))[:int(num_blocks)]
  return {
      "input": dense.init(in_dim, hidden_dim, key=k_in, init=scheme, dtype=dtype),
      "blocks": [residual_block.init(hidden_dim, key=k, init=scheme, dtype=dtype)
                 for k in block_keys],
      "output": dense.init(hidden_dim, out_dim, key=k_out, init=scheme, dtype=dtype),
  }


def _residual_mlp_apply(params: Params, x: Float[Array, "*batch in"], *,
                        activation: Activation = "relu", path: str = ""
                        ) -> Float[Array, "*batch out"]:
  """dense in -> N residual blocks -> dense out.   x: [B…, in] -> [B…, out] (logits).

  With N blocks the network has 2N + 2 dense layers; compare it with an ``mlp`` of
  the same depth to see what the skip connections do to the gradient flow.
  """
  with layer_scope(path):
    x = dense.apply(get_param(params, path, "input"), x, path=join_path(path, "input"))
    for i, bp in enumerate(get_param(params, path, "blocks")):
      x = residual_block.apply(bp, x, activation=activation,
                               path=join_path(path, f"blocks/{i}"))
    return dense.apply(get_param(params, path, "output"), x,
                       path=join_path(path, "output"))


residual_mlp = Layer.named("residual_mlp", _residual_mlp_init, _residual_mlp_apply)
