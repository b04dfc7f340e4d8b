"""Core layers: ``dense`` with its initialisers, activations, ``dropout``, ``layer_norm``.

The math is ``handgrad.ops``: each dense or layer-norm call is one layer-level node
in the jaxpr, differentiated by its hand rule (``dW = xᵀ·dZ``, ``db = Σ dZ``,
``dx = dZ·Wᵀ`` for dense).
"""

from __future__ import annotations

import math
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Float

from handgrad._src.rules import layers as ops  # the layer-level ops handgrad.ops re-exports
from handgrad._src.nn.base import (Array, Layer, Params, check_features, check_key,
                                   check_shape, get_param, layer_scope)

DType = Any
# (key, shape, dtype) -> array, the signature of ``jax.nn.initializers``.
Initializer = Callable[[Array, tuple[int, ...], DType], Array]

INIT_SCHEMES = ("he", "xavier", "glorot", "normal")


# --- initialisers --------------------------------------------------------------------

def init_weight(key: Array, shape: tuple[int, int], scheme: str | Initializer = "he",
                dtype: DType = jnp.float32) -> Array:
  """A ``[fan_in, fan_out]`` weight matrix.

  * ``"he"``: normal with std √(2/fan_in) (He et al. 2015; PyTorch's
    ``kaiming_normal_``), which keeps the variance of ReLU activations constant with
    depth.  Not truncated.
  * ``"xavier"`` / ``"glorot"``: uniform on ±√(6/(fan_in + fan_out)) (Glorot &
    Bengio 2010; ``jax.nn.initializers.glorot_uniform``), variance 2/(fan_in + fan_out),
    suited to tanh and sigmoid.
  * ``"normal"``: the seed's ``0.01 · randn``: fine for one layer, but activations
    shrink by ~0.01·√fan_in per layer, so deep stacks start with vanishing gradients.
  * a callable ``init(key, shape, dtype)``, e.g. from ``jax.nn.initializers``.
  """
  fan_in, fan_out = shape
  return init_with_fans(key, shape, fan_in, fan_out, scheme, dtype)


def init_with_fans(key: Array, shape: tuple[int, ...], fan_in: int, fan_out: int,
                   scheme: str | Initializer = "he", dtype: DType = jnp.float32) -> Array:
  """A weight of any ``shape`` drawn by ``scheme`` (see :func:`init_weight`) with the
  given fans (a convolution kernel counts them over its receptive field)."""
  if callable(scheme):
    return jnp.asarray(scheme(key, tuple(shape), dtype), dtype)
  if scheme == "he":
    return jax.random.normal(key, shape, dtype) * jnp.asarray(math.sqrt(2.0 / fan_in), dtype)
  if scheme in ("xavier", "glorot"):
    limit = math.sqrt(6.0 / (fan_in + fan_out))
    return jax.random.uniform(key, shape, dtype, minval=-limit, maxval=limit)
  if scheme == "normal":
    return jax.random.normal(key, shape, dtype) * jnp.asarray(0.01, dtype)
  raise ValueError(f"unknown initialiser {scheme!r}; expected one of {INIT_SCHEMES} "
                   "or a callable (key, shape, dtype) -> array")


# --- dense ---------------------------------------------------------------------------

def _dense_init(in_dim: int, out_dim: int, *, key: Array, init: str | Initializer = "he",
                dtype: DType = jnp.float32) -> Params:
  """``{"W": [in_dim, out_dim], "b": [out_dim] zeros}`` of ``dtype``."""
  check_key(key, "dense")
  if int(in_dim) < 1 or int(out_dim) < 1:
    raise ValueError(f"dense.init: dimensions must be positive, got {in_dim} -> {out_dim}")
  W = init_weight(key, (int(in_dim), int(out_dim)), init, dtype)
  return {"W": W, "b": jnp.zeros((int(out_dim),), dtype)}


def _dense_apply(params: Params, x: Float[Array, "*batch in"], *, path: str = "dense"
                 ) -> Float[Array, "*batch out"]:
  """``x·W + b``.   x: [B…, in], W: [in, out], b: [out] -> [B…, out]."""
  with layer_scope(path):
    W, b = get_param(params, path, "W"), get_param(params, path, "b")
    if np.ndim(W) != 2:
      raise ValueError(f"{path or '<root>'}: parameter 'W' has shape {tuple(np.shape(W))}, "
                       "expected a matrix [in, out]")
    check_shape(path, "b", (W.shape[1],), np.shape(b),
                context=f"to match W of shape {tuple(W.shape)}")
    check_features(path, x, "W", W.shape, W.shape[0])
    return ops.dense(x, W, b)


dense = Layer.named("dense", _dense_init, _dense_apply)


# --- activations ---------------------------------------------------------------------

def relu(x: Float[Array, "*shape"]) -> Float[Array, "*shape"]:
  """max(x, 0) elementwise, any shape and float dtype; relu'(0) = 0 like ``jax.nn.relu``."""
  return ops.relu(x)


def sigmoid(x: Float[Array, "*shape"]) -> Float[Array, "*shape"]:
  """1 / (1 + e^(−x)) elementwise; its slope σ(1 − σ) is at most ¼."""
  return ops.sigmoid(x)


def tanh(x: Float[Array, "*shape"]) -> Float[Array, "*shape"]:
  """tanh(x) elementwise; its slope 1 − tanh² is at most 1 and vanishes when saturated."""
  return ops.tanh(x)


def gelu(x: Float[Array, "*shape"], approximate: bool = True) -> Float[Array, "*shape"]:
  """``jax.nn.gelu``: x·Φ(x), by default with the tanh approximation (as in GPT-2/BERT).

  Not a layer-level op: ``handgrad.grad`` differentiates it through the rules of its
  primitives (``tanh``, ``integer_pow``, ``mul``; ``erf`` when ``approximate=False``).
  """
  return jax.nn.gelu(x, approximate=approximate)


def softmax(x: Float[Array, "*shape"], axis: int = -1) -> Float[Array, "*shape"]:
  """softmax along ``axis`` (max subtracted first, so exp never overflows)."""
  return ops.softmax(x, axis=axis)


ACTIVATIONS: dict[str, Callable[[Array], Array]] = {
    "relu": relu, "sigmoid": sigmoid, "tanh": tanh, "gelu": gelu,
}


def activation_fn(activation: str | Callable[[Array], Array]) -> Callable[[Array], Array]:
  """Looks an activation up by name (``"relu"``, ``"sigmoid"``, ``"tanh"``, ``"gelu"``)."""
  if callable(activation):
    return activation
  try:
    return ACTIVATIONS[activation]
  except (KeyError, TypeError):
    raise ValueError(f"unknown activation {activation!r}; expected one of "
                     f"{tuple(ACTIVATIONS)} or a callable") from None


# --- dropout -------------------------------------------------------------------------

def dropout(x: Float[Array, "*shape"], rate: float, *, key: Array | None = None,
            deterministic: bool = False) -> Float[Array, "*shape"]:
  """Inverted dropout: zero each element with probability ``rate``, scale the rest.

  x: any shape and float dtype -> same shape and dtype.  Kept elements are multiplied
  by 1/(1 − rate), so E[dropout(x)] = x and evaluation (``deterministic=True``) is
  the identity with no rescaling.  The mask is a pure function of ``key``: the same
  key gives the same mask, and backprop sends blame only through kept elements.
  ``rate`` is a static Python float in [0, 1).
  """
  if isinstance(rate, (bool, np.bool_)) or not isinstance(rate, (int, float, np.number)):
    raise TypeError(f"dropout: rate must be a Python float in [0, 1), got "
                    f"{type(rate).__name__}")
  rate = float(rate)
  if not 0.0 <= rate < 1.0:
    raise ValueError(f"dropout: rate must be in [0, 1), got {rate}")
  if deterministic:
    return x
  if key is None:
    raise TypeError("dropout needs an explicit PRNG key (key=...) unless "
                    "deterministic=True")
  if rate == 0.0:
    return x
  keep = jax.random.bernoulli(key, 1.0 - rate, jnp.shape(x))
  scaled = x * jnp.asarray(1.0 / (1.0 - rate), jnp.result_type(x))
  return jnp.where(keep, scaled, jnp.zeros_like(scaled))


# --- layer norm ----------------------------------------------------------------------

def _layer_norm_init(dim: int, *, key: Array, dtype: DType = jnp.float32) -> Params:
  """``{"gamma": [dim] ones, "beta": [dim] zeros}``.  ``key`` is unused (deterministic
  initialisation) but required, like every ``init`` here."""
  check_key(key, "layer_norm")
  return {"gamma": jnp.ones((int(dim),), dtype), "beta": jnp.zeros((int(dim),), dtype)}


def _layer_norm_apply(params: Params, x: Float[Array, "*batch features"], *,
                      path: str = "layer_norm", eps: float = 1e-5
                      ) -> Float[Array, "*batch features"]:
  """(x − μ)/√(σ² + ε)·γ + β over the last axis.   x: [B…, F], γ, β: [F] -> [B…, F]."""
  with layer_scope(path):
    gamma, beta = get_param(params, path, "gamma"), get_param(params, path, "beta")
    feats = np.shape(x)[-1] if np.ndim(x) else None
    if feats is None:
      raise ValueError(f"{path or '<root>'}: layer_norm needs an input with a feature axis, "
                       "got a scalar")
    ctx = f"to match an input with {feats} features"
    check_shape(path, "gamma", (feats,), np.shape(gamma), context=ctx)
    check_shape(path, "beta", (feats,), np.shape(beta), context=ctx)
    return ops.layer_norm(x, gamma, beta, eps=float(eps))


layer_norm = Layer.named("layer_norm", _layer_norm_init, _layer_norm_apply)
