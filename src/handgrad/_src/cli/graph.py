"""``handgrad graph``: the computation graph of the seed's MLP loss, with backward norms."""

from __future__ import annotations

import argparse
import pathlib
import sys

from handgrad._src.render import FORMATS
from handgrad._src.render import RENDERERS
from handgrad._src.render import RenderError

DESCRIPTION = ("Draw the computation graph of the seed MLP's loss on a batch of MNIST "
               "digits, with the norm of the gradient flowing back along each edge.")


def add_parser(sub) -> None:
  p = sub.add_parser("graph", help="draw the seed MLP's computation graph (PNG or SVG)",
                     description=DESCRIPTION)
  p.add_argument("--out", default="runs/graph/mlp_graph",
                 help="output path without extension; writes OUT.dot and OUT.FORMAT "
                      "(default: runs/graph/mlp_graph)")
  p.add_argument("--format", choices=FORMATS, default="png",
                 help="picture format (default: png)")
  p.add_argument("--renderer", choices=RENDERERS, default="auto",
                 help="auto: Graphviz's dot when installed, else graphviz-pure (installed "
                      "with handgrad); default: auto")
  p.add_argument("--layers", default="784,256,128,10", help="MLP layer sizes")
  p.add_argument("--batch", type=int, default=32, help="MNIST digits in the example batch")
  p.add_argument("--expand", action="store_true",
                 help="draw each layer's primitive operations (dot_general, add, max, ...) "
                      "as their own nodes instead of one node per layer op (dense, relu, "
                      "softmax_cross_entropy)")
  p.add_argument("--no-backward", action="store_true",
                 help="skip the backward pass (no cotangent norms on edges)")
  p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
  import jax
  import jax.numpy as jnp

  from handgrad._src.data.mnist import load_mnist
  from handgrad._src.inspect.graph import make_graph
  from handgrad._src.nn.mlp import mlp
  from handgrad._src.rules.layers import softmax_cross_entropy

  try:
    dims = [int(d) for d in args.layers.split(",")]
  except ValueError:
    raise ValueError(f"--layers must be comma-separated integers, got {args.layers!r}") from None
  if len(dims) < 2 or dims[0] != 784 or dims[-1] != 10:
    raise ValueError(f"--layers must start at 784 and end at 10 for MNIST, got {dims}")
  if args.batch <= 0:
    raise ValueError(f"--batch must be positive, got {args.batch}")
  train, _ = load_mnist()
  x, y = jnp.asarray(train.x[:args.batch]), jnp.asarray(train.y[:args.batch])
  params = mlp.init(dims, key=jax.random.key(0))

  def loss(params, x, y):
    return softmax_cross_entropy(mlp.apply(params, x), y)

  graph = make_graph(loss, params, x, y, backward=not args.no_backward,
                     collapse=not args.expand)
  try:
    written = graph.save(pathlib.Path(args.out), format=args.format, renderer=args.renderer)
  except RenderError as e:
    print(f"handgrad graph: error: {e}", file=sys.stderr)
    return 1
  for path in written:
    print(f"wrote {path}")
  return 0
