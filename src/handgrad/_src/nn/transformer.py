"""Attention, feed-forward, a pre-norm transformer block and a small classifier.

Static settings live in ``apply``'s keyword arguments, never in ``params``:
``num_heads`` (how ``dim`` is split into heads), ``causal``, ``activation`` and
``remat``.  Pass ``apply`` the same ``num_heads`` that ``init`` got.

Shapes: ``B…`` batch dims, ``T`` tokens, ``dim`` model width, ``H`` heads,
``D = dim / H`` head size.
"""

from __future__ import annotations

import operator

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Float

from handgrad._src.rules import layers as ops  # the layer-level ops handgrad.ops re-exports
from handgrad._src.nn.base import (Array, Layer, Params, check_key, check_shape,
                                   get_param, join_path, layer_scope)
from handgrad._src.nn.core import DType, Initializer, activation_fn, dense, layer_norm
from handgrad._src.nn.mlp import Activation


def _heads(num_heads, where: str) -> int:
  try:
    h = operator.index(num_heads)
  except TypeError:
    raise TypeError(f"{where}: num_heads must be a static Python int, got "
                    f"{type(num_heads).__name__}") from None
  if h < 1:
    raise ValueError(f"{where}: num_heads must be >= 1, got {h}")
  return h


# --- multi-head attention ------------------------------------------------------------

def _mha_init(dim: int, num_heads: int, *, key: Array, init: str | Initializer = "xavier",
              dtype: DType = jnp.float32) -> Params:
  """``{"q", "k", "v", "o"}``, each dense params of shape ``[dim, dim]`` / ``[dim]``.

  ``num_heads`` only validates that it divides ``dim``; give it to ``apply`` too.
  """
  check_key(key, "multi_head_attention")
  h = _heads(num_heads, "multi_head_attention.init")
  if int(dim) % h:
    raise ValueError(f"multi_head_attention.init: dim {dim} is not divisible by "
                     f"num_heads {h}")
  ks = jax.random.split(key, 4)
  return {name: dense.init(dim, dim, key=k, init=init, dtype=dtype)
          for name, k in zip("qkvo", ks)}


def _mha_apply(params: Params, x: Float[Array, "*batch tokens dim"], *, num_heads: int,
               causal: bool = False, path: str = "attn") -> Float[Array, "*batch tokens dim"]:
  """Self-attention.   x: [B…, T, dim] -> [B…, T, dim].

  q, k, v = x·W_{q,k,v} + b, split into ``num_heads`` heads of size D in the
  [B…, T, H, D] layout of ``ops.attention`` (one hand-differentiated node:
  softmax(q·kᵀ/√D)·v), heads concatenated back and projected by ``o``.
  """
  where = path or "<root>"
  h = _heads(num_heads, where)
  with layer_scope(path):
    if np.ndim(x) < 2:
      raise ValueError(f"{where}: attention needs an input [B…, T, dim], got shape "
                       f"{tuple(np.shape(x))}")
    proj = {}
    for name in "qkv":
      proj[name] = dense.apply(get_param(params, path, name), x, path=join_path(path, name))
    width = proj["q"].shape[-1]
    for name in "kv":
      if proj[name].shape[-1] != width:
        raise ValueError(f"{where}: {name} projects to {proj[name].shape[-1]} features "
                         f"but q projects to {width}")
    if width % h:
      raise ValueError(f"{where}: {width} features do not split into num_heads={h} heads")

    def split(t):  # [B…, T, H·D] -> [B…, T, H, D]
      return t.reshape(t.shape[:-1] + (h, width // h))

    out = ops.attention(split(proj["q"]), split(proj["k"]), split(proj["v"]),
                        causal=bool(causal))
    out = out.reshape(out.shape[:-2] + (width,))
    return dense.apply(get_param(params, path, "o"), out, path=join_path(path, "o"))


multi_head_attention = Layer.named("multi_head_attention", _mha_init, _mha_apply)


# --- feed-forward --------------------------------------------------------------------

def _ffn_init(dim: int, hidden: int, *, key: Array, init: str | Initializer = "he",
              dtype: DType = jnp.float32) -> Params:
  """``{"fc1": dense(dim, hidden), "fc2": dense(hidden, dim)}``."""
  check_key(key, "feed_forward")
  k1, k2 = jax.random.split(key)
  return {"fc1": dense.init(dim, hidden, key=k1, init=init, dtype=dtype),
          "fc2": dense.init(hidden, dim, key=k2, init=init, dtype=dtype)}


def _ffn_apply(params: Params, x: Float[Array, "*batch dim"], *,
               activation: Activation = "gelu", path: str = "ffn") -> Float[Array, "*batch dim"]:
  """fc2(act(fc1(x))).   x: [B…, dim] -> [B…, dim]; ``activation`` "gelu" or "relu"."""
  act = activation_fn(activation)
  with layer_scope(path):
    h = act(dense.apply(get_param(params, path, "fc1"), x, path=join_path(path, "fc1")))
    return dense.apply(get_param(params, path, "fc2"), h, path=join_path(path, "fc2"))


feed_forward = Layer.named("feed_forward", _ffn_init, _ffn_apply)


# --- pre-norm transformer block ------------------------------------------------------

def _block_init(dim: int, num_heads: int, hidden: int | None = None, *, key: Array,
                dtype: DType = jnp.float32) -> Params:
  """``{"ln1", "attn", "ln2", "ffn"}``; ``hidden`` defaults to 4·dim."""
  check_key(key, "transformer_block")
  hidden = 4 * int(dim) if hidden is None else int(hidden)
  k_ln1, k_attn, k_ln2, k_ffn = jax.random.split(key, 4)
  return {"ln1": layer_norm.init(dim, key=k_ln1, dtype=dtype),
          "attn": multi_head_attention.init(dim, num_heads, key=k_attn, dtype=dtype),
          "ln2": layer_norm.init(dim, key=k_ln2, dtype=dtype),
          "ffn": feed_forward.init(dim, hidden, key=k_ffn, dtype=dtype)}


def _block_apply(params: Params, x: Float[Array, "*batch tokens dim"], *, num_heads: int,
                 causal: bool = False, activation: Activation = "gelu", remat: bool = False,
                 path: str = "block") -> Float[Array, "*batch tokens dim"]:
  """Pre-norm block:  x + attn(ln1(x)), then x + ffn(ln2(x)).   x: [B…, T, dim].

  ``remat=True`` wraps each residual branch in ``jax.checkpoint``, like the seed's
  checkpointed block (``x = x + checkpoint(attn)(x)``, ``x = x + checkpoint(ffn)(x)``):
  the branch's activations are not kept for the backward pass but recomputed there
  from its input.  Outputs and gradients are the same as with ``remat=False``.
  """
  with layer_scope(path):
    sub = {name: get_param(params, path, name) for name in ("ln1", "attn", "ln2", "ffn")}

    def attn_branch(p, x):
      h = layer_norm.apply(p["ln1"], x, path=join_path(path, "ln1"))
      return multi_head_attention.apply(p["attn"], h, num_heads=num_heads, causal=causal,
                                        path=join_path(path, "attn"))

    def ffn_branch(p, x):
      h = layer_norm.apply(p["ln2"], x, path=join_path(path, "ln2"))
      return feed_forward.apply(p["ffn"], h, activation=activation,
                                path=join_path(path, "ffn"))

    if remat:
      attn_branch, ffn_branch = jax.checkpoint(attn_branch), jax.checkpoint(ffn_branch)
    x = x + attn_branch({"ln1": sub["ln1"], "attn": sub["attn"]}, x)
    x = x + ffn_branch({"ln2": sub["ln2"], "ffn": sub["ffn"]}, x)
    return x


transformer_block = Layer.named("transformer_block", _block_init, _block_apply)


# --- transformer classifier ----------------------------------------------------------

def _classifier_init(*, key: Array, in_features: int = 28, seq_len: int = 28,
                     dim: int = 64, num_heads: int = 4, num_blocks: int = 2,
                     num_classes: int = 10, hidden: int | None = None,
                     dtype: DType = jnp.float32) -> Params:
  """A small vision-transformer-style classifier for MNIST rows.

  ``{"embed": dense(in_features, dim), "pos": [seq_len, dim],
  "blocks": [transformer_block] * num_blocks, "ln_f": layer_norm(dim),
  "head": dense(dim, num_classes)}``.  Position embeddings start as 0.02·randn
  (GPT-2's scale).  ``hidden`` (the feed-forward width) defaults to 4·dim.
  """
  check_key(key, "transformer_classifier")
  k_embed, k_pos, k_ln, k_head, k_blocks = jax.random.split(key, 5)
  block_keys = jax.random.split(k_blocks, max(int(num_blocks), 1))[:int(num_blocks)]
  return {
      "embed": dense.init(in_features, dim, key=k_embed, init="xavier", dtype=dtype),
      "pos": jax.random.normal(k_pos, (int(seq_len), int(dim)), dtype) * jnp.asarray(0.02, dtype),
      "blocks": [transformer_block.init(dim, num_heads, hidden, key=k, dtype=dtype)
                 for k in block_keys],
      "ln_f": layer_norm.init(dim, key=k_ln, dtype=dtype),
      "head": dense.init(dim, num_classes, key=k_head, init="xavier", dtype=dtype),
  }


def _classifier_apply(params: Params, x: Float[Array, "..."], *, num_heads: int = 4,
                      causal: bool = False, activation: Activation = "gelu",
                      remat: bool = False, path: str = "") -> Float[Array, "... classes"]:
  """Logits for images read as sequences of rows.

  x: [B…, seq_len·in_features] (a flattened MNIST image, [B, 784]) or
  [B…, seq_len, in_features] -> logits [B…, num_classes].  Rows become tokens:
  embed (dense) + learned position embedding -> blocks -> final layer norm ->
  mean over tokens -> dense head.  ``num_heads`` must match ``init``'s.
  """
  where = path or "<root>"
  with layer_scope(path):
    embed = get_param(params, path, "embed")
    pos = get_param(params, path, "pos")
    W = get_param(embed, join_path(path, "embed"), "W")
    if np.ndim(pos) != 2 or np.ndim(W) != 2:
      raise ValueError(f"{where}: parameter 'pos' must be [seq_len, dim] and embed/W "
                       f"[in_features, dim], got {tuple(np.shape(pos))} and "
                       f"{tuple(np.shape(W))}")
    seq_len, dim = pos.shape
    in_features = W.shape[0]
    check_shape(path, "pos", (seq_len, W.shape[1]), pos.shape,
                context=f"to match embed/W of shape {tuple(W.shape)}")
    shape = tuple(np.shape(x))
    if len(shape) >= 3 and shape[-2:] == (seq_len, in_features):
      tokens = x
    elif len(shape) >= 1 and shape[-1] == seq_len * in_features:
      tokens = jnp.reshape(x, shape[:-1] + (seq_len, in_features))
    else:
      raise ValueError(
          f"{where}: input has shape {shape}, expected [B, {seq_len * in_features}] or "
          f"[B, {seq_len}, {in_features}] (pos has shape {tuple(pos.shape)}, embed/W has "
          f"shape {tuple(W.shape)})")
    h = dense.apply(embed, tokens, path=join_path(path, "embed"))
    with layer_scope(join_path(path, "pos")):
      h = h + pos
    for i, bp in enumerate(get_param(params, path, "blocks")):
      h = transformer_block.apply(bp, h, num_heads=num_heads, causal=causal,
                                  activation=activation, remat=remat,
                                  path=join_path(path, f"blocks/{i}"))
    h = layer_norm.apply(get_param(params, path, "ln_f"), h, path=join_path(path, "ln_f"))
    with layer_scope(join_path(path, "pool")):
      pooled = jnp.mean(h, axis=-2)
    return dense.apply(get_param(params, path, "head"), pooled,
                       path=join_path(path, "head"))


transformer_classifier = Layer.named("transformer_classifier", _classifier_init, _classifier_apply)
