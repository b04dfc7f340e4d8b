"""Convolution and pooling layers (NHWC): ``conv2d`` with its initialisers,
``max_pool``, ``avg_pool``, ``flatten``.

The math is ``handgrad.ops``: each call is one layer-level node in the jaxpr,
differentiated by its hand rule (``rules/cnn_layers.py``): for ``conv2d`` the dense
layer's three formulas summed over windows, for max pooling the arg-max routing.
"""

from __future__ import annotations

import operator
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Float

from handgrad._src.rules import cnn_layers as ops  # the layer-level ops handgrad.ops re-exports
from handgrad._src.nn.base import (Array, Layer, Params, check_key, check_shape,
                                   get_param, layer_scope)
from handgrad._src.nn.core import DType, Initializer, init_with_fans

Padding = str | Sequence[tuple[int, int]]


def _pair(v, name: str, where: str) -> tuple[int, int]:
  try:
    t = (operator.index(v),) * 2 if np.ndim(v) == 0 else tuple(operator.index(i) for i in v)
  except TypeError:
    raise TypeError(f"{where}: {name} must be an int or a pair of ints, got {v!r}") from None
  if len(t) != 2 or min(t) < 1:
    raise ValueError(f"{where}: {name} must be positive (one int or two), got {v!r}")
  return t


def _padding(padding: Padding, where: str):
  if isinstance(padding, str):
    if padding.upper() not in ("SAME", "VALID"):
      raise ValueError(f"{where}: padding must be 'SAME', 'VALID' or ((lo, hi), (lo, hi)), "
                       f"got {padding!r}")
    return padding.upper()
  try:
    pads = tuple((int(lo), int(hi)) for lo, hi in padding)
  except (TypeError, ValueError):
    raise ValueError(f"{where}: padding must be 'SAME', 'VALID' or ((lo, hi), (lo, hi)), "
                     f"got {padding!r}") from None
  if len(pads) != 2:
    raise ValueError(f"{where}: padding needs one (lo, hi) pair per spatial axis, got {padding!r}")
  return pads


def _check_image(x, where: str, channels: int | None = None) -> None:
  shape = tuple(np.shape(x))
  if len(shape) != 4:
    raise ValueError(f"{where}: input must be NHWC images [N, H, W, C], got shape {shape}")
  if channels is not None and shape[-1] != channels:
    raise ValueError(f"{where}: input has {shape[-1]} channels but the kernel expects "
                     f"{channels} (input shape {shape})")


# --- initialisers --------------------------------------------------------------------

def init_kernel(key: Array, shape: tuple[int, int, int, int], scheme: str | Initializer = "he",
                dtype: DType = jnp.float32) -> Array:
  """A ``[kh, kw, C, O]`` kernel with the dense initialisers' schemes, counting fans over
  the receptive field: fan_in = kh·kw·C, fan_out = kh·kw·O.

  ``"he"``: normal, std √(2/fan_in); ``"xavier"``/``"glorot"``: uniform on
  ±√(6/(fan_in + fan_out)); ``"normal"``: the seed's 0.01·randn; or a callable
  ``init(key, shape, dtype)``.
  """
  kh, kw, c, o = shape
  return init_with_fans(key, shape, kh * kw * c, kh * kw * o, scheme, dtype)


# --- conv2d --------------------------------------------------------------------------

def _conv2d_init(in_channels: int, out_channels: int, kernel_size: int | Sequence[int] = 3,
                 *, key: Array, init: str | Initializer = "he",
                 dtype: DType = jnp.float32) -> Params:
  """``{"W": [kh, kw, in, out], "b": [out] zeros}``."""
  check_key(key, "conv2d")
  kh, kw = _pair(kernel_size, "kernel_size", "conv2d.init")
  if int(in_channels) < 1 or int(out_channels) < 1:
    raise ValueError(f"conv2d.init: channels must be positive, got {in_channels} -> "
                     f"{out_channels}")
  W = init_kernel(key, (kh, kw, int(in_channels), int(out_channels)), init, dtype)
  return {"W": W, "b": jnp.zeros((int(out_channels),), dtype)}


def _conv2d_apply(params: Params, x: Float[Array, "batch height width in"], *,
                  strides: int | Sequence[int] = 1, padding: Padding = "SAME",
                  path: str = "conv2d") -> Float[Array, "batch out_height out_width out"]:
  """x ⋆ W + b.   x: [N, H, W, C], W: [kh, kw, C, O], b: [O] -> [N, H', W', O]."""
  where = path or "<root>"
  with layer_scope(path):
    W, b = get_param(params, path, "W"), get_param(params, path, "b")
    if np.ndim(W) != 4:
      raise ValueError(f"{where}: parameter 'W' has shape {tuple(np.shape(W))}, expected a "
                       "kernel [kh, kw, in, out]")
    check_shape(path, "b", (W.shape[3],), np.shape(b),
                context=f"to match W of shape {tuple(W.shape)}")
    _check_image(x, where, W.shape[2])
    return ops.conv2d(x, W, b, strides=_pair(strides, "strides", where),
                      padding=_padding(padding, where))


conv2d = Layer.named("conv2d", _conv2d_init, _conv2d_apply)


# --- pooling and flatten -------------------------------------------------------------

def max_pool(x: Float[Array, "batch height width channels"], window: int | Sequence[int] = 2,
             strides: int | Sequence[int] | None = None, padding: Padding = "VALID"
             ) -> Float[Array, "batch out_height out_width channels"]:
  """Max over ``window`` [wh, ww] windows.   x: [N, H, W, C] -> [N, H', W', C].

  ``strides`` defaults to ``window``.  Backward: each window's blame goes to its
  arg-max (a tie to its first maximum, as ``jax.grad``).
  """
  _check_image(x, "max_pool")
  window = _pair(window, "window", "max_pool")
  strides = window if strides is None else _pair(strides, "strides", "max_pool")
  return ops.max_pool(x, window=window, strides=strides, padding=_padding(padding, "max_pool"))


def avg_pool(x: Float[Array, "batch height width channels"], window: int | Sequence[int] = 2,
             strides: int | Sequence[int] | None = None, padding: Padding = "VALID"
             ) -> Float[Array, "batch out_height out_width channels"]:
  """Mean over windows (padding counts as zeros).   x: [N, H, W, C] -> [N, H', W', C]."""
  _check_image(x, "avg_pool")
  window = _pair(window, "window", "avg_pool")
  strides = window if strides is None else _pair(strides, "strides", "avg_pool")
  return ops.avg_pool(x, window=window, strides=strides, padding=_padding(padding, "avg_pool"))


def flatten(x: Float[Array, "batch *rest"]) -> Float[Array, "batch flat"]:
  """[N, d1, …] -> [N, d1·…] (row-major)."""
  if np.ndim(x) < 1:
    raise ValueError("flatten: input needs a batch axis, got a scalar")
  return ops.flatten(x)
