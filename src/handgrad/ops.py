"""Layer-level operations with hand-written backward passes (the seed's formulas).

Each runs as plain JAX anywhere and stays one node in a jaxpr, where ``handgrad.grad``
applies its registered rule instead of descending into it.
"""

from handgrad._src.layer_ops import layer_op
from handgrad._src.rules.cnn_layers import avg_pool
from handgrad._src.rules.cnn_layers import batch_norm
from handgrad._src.rules.cnn_layers import conv2d
from handgrad._src.rules.cnn_layers import embedding
from handgrad._src.rules.cnn_layers import flatten
from handgrad._src.rules.cnn_layers import max_pool
from handgrad._src.rules.layers import attention
from handgrad._src.rules.layers import dense
from handgrad._src.rules.layers import layer_norm
from handgrad._src.rules.layers import log_softmax
from handgrad._src.rules.layers import mse
from handgrad._src.rules.layers import relu
from handgrad._src.rules.layers import sigmoid
from handgrad._src.rules.layers import softmax
from handgrad._src.rules.layers import softmax_cross_entropy
from handgrad._src.rules.layers import tanh

__all__ = [
    "attention", "avg_pool", "batch_norm", "conv2d", "dense", "embedding", "flatten",
    "layer_norm", "layer_op", "log_softmax", "max_pool", "mse", "relu", "sigmoid",
    "softmax", "softmax_cross_entropy", "tanh",
]
