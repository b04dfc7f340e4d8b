"""Pure-function layers with explicit parameter pytrees.

Every layer is a :class:`Layer` of two pure functions::

    params = hg.nn.mlp.init([784, 256, 128, 10], key=jax.random.key(0))
    logits = hg.nn.mlp.apply(params, x)          # x: [B, 784] -> [B, 10]
    grads = hg.grad(loss)(params, x, y)          # a pytree shaped like params

``params`` are plain dicts and lists of arrays; :func:`param_paths` names their
leaves (``"layers/0/W"``) and shape errors name the layer path and the parameter.
"""

from handgrad._src.nn.base import Layer
from handgrad._src.nn.base import Params
from handgrad._src.nn.base import check_shape
from handgrad._src.nn.base import count_params
from handgrad._src.nn.base import param_paths
from handgrad._src.nn.batch_norm import batch_norm
from handgrad._src.nn.batch_norm import batch_norm_state
from handgrad._src.nn.embedding import embedding
from handgrad._src.nn.cnn import cnn
from handgrad._src.nn.conv import avg_pool
from handgrad._src.nn.conv import conv2d
from handgrad._src.nn.conv import flatten
from handgrad._src.nn.conv import init_kernel
from handgrad._src.nn.conv import max_pool
from handgrad._src.nn.core import dense
from handgrad._src.nn.core import dropout
from handgrad._src.nn.core import gelu
from handgrad._src.nn.core import init_weight
from handgrad._src.nn.core import layer_norm
from handgrad._src.nn.core import relu
from handgrad._src.nn.core import sigmoid
from handgrad._src.nn.core import softmax
from handgrad._src.nn.core import tanh
from handgrad._src.nn.mlp import mlp
from handgrad._src.nn.mlp import residual_block
from handgrad._src.nn.mlp import residual_mlp
from handgrad._src.nn.transformer import feed_forward
from handgrad._src.nn.transformer import multi_head_attention
from handgrad._src.nn.transformer import transformer_block
from handgrad._src.nn.transformer import transformer_classifier

__all__ = [
    "Layer", "Params", "avg_pool", "batch_norm", "batch_norm_state", "check_shape", "cnn",
    "conv2d", "count_params", "dense", "dropout", "embedding", "feed_forward", "flatten", "gelu", "init_kernel", "init_weight",
    "layer_norm", "max_pool", "mlp", "multi_head_attention",
    "param_paths", "relu", "residual_block", "residual_mlp", "sigmoid", "softmax",
    "tanh", "transformer_block", "transformer_classifier",
]
