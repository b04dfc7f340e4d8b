"""A small MNIST CNN: two conv + ReLU + max-pool blocks and a dense head.

``cnn.init(key=key)`` gives ``{"blocks": [conv2d params] * 2, "head": dense params}``:
3×3 convolutions to 16 and 32 channels (SAME padding), each followed by ReLU and 2×2
max pooling, so a 28×28×1 image becomes 7×7×32 = 1,568 features for the head's 10
logits (20,490 parameters).  Every gradient is by hand: ``conv2d``, ``relu``,
``max_pool``, ``flatten`` and ``dense`` are layer-level ops.
"""

from __future__ import annotations

import math
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Float

from handgrad._src.nn.base import Array, Layer, Params, check_key, get_param, join_path, layer_scope
from handgrad._src.nn.conv import conv2d, flatten, max_pool
from handgrad._src.nn.core import DType, Initializer, dense, relu

MNIST_IMAGE = (28, 28, 1)


def _cnn_init(*, key: Array, channels: Sequence[int] = (16, 32), kernel_size: int = 3,
              num_classes: int = 10, image_shape: Sequence[int] = MNIST_IMAGE,
              init: str | Initializer = "he", dtype: DType = jnp.float32) -> Params:
  """Conv blocks ``image C -> channels[0] -> channels[1] …`` and a dense head.

  The head's input size follows from ``image_shape`` (H, W, C): each block halves H and
  W (rounding down).
  """
  check_key(key, "cnn")
  h, w, c = (int(d) for d in image_shape)
  keys = jax.random.split(key, len(channels) + 1)
  blocks = []
  for k, out in zip(keys, channels):
    blocks.append(conv2d.init(c, out, kernel_size, key=k, init=init, dtype=dtype))
    c, h, w = int(out), h // 2, w // 2
  if h < 1 or w < 1:
    raise ValueError(f"cnn.init: {len(channels)} pooling blocks leave nothing of an image "
                     f"of shape {tuple(image_shape)}")
  return {"blocks": blocks,
          "head": dense.init(h * w * c, num_classes, key=keys[-1], init=init, dtype=dtype)}


def _cnn_apply(params: Params, x: Float[Array, "batch *image"], *,
               image_shape: Sequence[int] = MNIST_IMAGE, path: str = ""
               ) -> Float[Array, "batch classes"]:
  """x: [N, H·W·C] flat images (MNIST's [N, 784]) or [N, H, W, C] -> logits [N, classes]."""
  with layer_scope(path):
    if np.ndim(x) == 2:
      if np.shape(x)[1] != math.prod(image_shape):
        raise ValueError(f"{path or '<root>'}: flat input has {np.shape(x)[1]} features, "
                         f"but image_shape {tuple(image_shape)} needs "
                         f"{math.prod(image_shape)}")
      x = jnp.reshape(x, (np.shape(x)[0], *image_shape))
    for i, p in enumerate(get_param(params, path, "blocks")):
      bp = join_path(path, f"blocks/{i}")
      with layer_scope(bp):
        x = max_pool(relu(conv2d.apply(p, x, path=bp)))
    head = join_path(path, "head")
    return dense.apply(get_param(params, path, "head"), flatten(x), path=head)


cnn = Layer.named("cnn", _cnn_init, _cnn_apply)
