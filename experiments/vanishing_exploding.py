"""Vanishing and exploding gradients, seen through the hand engine's backward trace.

1. Depth sweep: sigmoid, tanh and ReLU MLPs and ReLU residual MLPs of several depths on
   MNIST; for each, the norm of the blame reaching every layer (``trace_backward``, from
   output to input).  The seed's claim: sigmoid stacks lose gradient with depth
   (σ' ≤ ¼ at every layer), residual stacks do not (∂L/∂x = ∂L/∂y·(∂F/∂x + 1)).
2. Exploding: a badly initialised deep MLP trained with a large learning rate, plain,
   with clipping by global norm, and with the safe optimizer (clip, count explosions,
   halve the learning rate after ``patience`` in a row, skip non-finite steps).
3. Dead ReLUs: a layer whose bias pushes every pre-activation below zero; the dead-ReLU
   report and the missing-versus-zero gradient report.

    python experiments/vanishing_exploding.py --quick     # under a minute on CPU
"""

from __future__ import annotations

import argparse
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import optax

import handgrad as hg
import handgrad.inspect as hgi
import handgrad.nn  # noqa: F401
import handgrad.train  # noqa: F401


def family(name: str, depth: int, key):
  """(params, apply) for one family: an MLP of ``depth`` hidden layers of width 64."""
  if name == "residual":
    params = hg.nn.residual_mlp.init(784, 64, 10, depth, key=key, activation="relu")
    return params, lambda p, x: hg.nn.residual_mlp.apply(p, x, activation="relu")
  params = hg.nn.mlp.init([784] + [64] * depth + [10], key=key, activation=name)
  return params, lambda p, x: hg.nn.mlp.apply(p, x, activation=name)


def depth_sweep(x, y, depths, out: pathlib.Path) -> dict:
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  families = ["sigmoid", "tanh", "relu", "residual"]
  fig, axes = plt.subplots(1, len(families), figsize=(4 * len(families), 3.6), sharey=True)
  summary = {}
  for ax, name in zip(axes, families):
    for depth in depths:
      params, apply = family(name, depth, jax.random.key(depth))
      loss = lambda p, x, y: hg.ops.softmax_cross_entropy(apply(p, x), y)
      _, trace = jax.jit(lambda p, x, y: hgi.trace_backward(loss, p, x, y))(params, x, y)
      layers = [(n, float(o)) for n, o in zip(trace.names, trace.grad_out)
                if n.startswith(("layers/", "blocks/"))]
      norms = np.array([o for _, o in layers])[::-1]  # input → output order
      summary[(name, depth)] = norms
      ax.semilogy(np.arange(len(norms)), np.maximum(norms, 1e-30), marker=".", label=f"{depth} layers")
    ax.set_title(f"{name}{' MLP' if name != 'residual' else ' (ReLU blocks)'}")
    ax.set_xlabel("layer (input → output)")
    ax.grid(alpha=0.3)
  axes[0].set_ylabel("‖∂L/∂(layer output)‖")
  axes[-1].legend(fontsize=8)
  fig.suptitle("Blame reaching each layer (hand backward trace)")
  fig.tight_layout()
  png = out / "gradient_flow_by_depth.png"
  fig.savefig(png, dpi=120)
  plt.close(fig)
  print(f"\n== depth sweep (norm at first layer / norm at last layer) -> {png}")
  for (name, depth), norms in summary.items():
    print(f"  {name:9s} depth {depth:3d}: first/last = {norms[0] / norms[-1]:.2e}")
  return summary


def exploding(x, y, steps: int) -> None:
  print("\n== exploding gradients: 8-layer tanh MLP, weights ×3 too large, SGD lr 0.5")
  params, apply = family("tanh", 8, jax.random.key(7))
  params = jax.tree.map(lambda p: p * 3.0, params)
  loss = lambda p, x, y: hg.ops.softmax_cross_entropy(apply(p, x), y)
  grads = hg.grad(loss)(params, x, y)
  print(hgi.explain_exploding(hgi.rank_gradients(grads, max_norm=1.0, top_k=5)))
  runs = {
      "plain sgd": optax.sgd(0.5),
      "clip_by_global_norm(1) + sgd": optax.chain(optax.clip_by_global_norm(1.0), optax.sgd(0.5)),
      "safe optimizer (patience 3)": hgi.safe_optimizer(optax.sgd, learning_rate=0.5,
                                                        max_grad_norm=1.0, patience=3),
  }
  for name, opt in runs.items():
    state = hg.train.TrainState.create(params, opt, key=0)
    step = hg.train.make_train_step(lambda p, batch, key: loss(p, *batch), opt, has_aux=False)
    losses = []
    for _ in range(steps):
      state, metrics = step(state, (x, y))
      losses.append(float(metrics["loss"]))
    extra = ""
    if isinstance(state.opt_state, hgi.SafeOptimizerState):
      extra = (f", final lr {float(state.opt_state.learning_rate):.4f}, "
               f"explosions in a row {int(state.opt_state.explosion_count)}")
    finite = all(np.isfinite(np.asarray(leaf)).all() for leaf in jax.tree.leaves(state.params))
    print(f"  {name:30s} loss {losses[0]:.3f} → {losses[-1]:.3f}, params finite: {finite}{extra}")


def dead_relus(x, y) -> None:
  print("\n== dead ReLUs: layer 1's bias set to −100")
  params, apply = family("relu", 3, jax.random.key(3))
  params["layers"][1]["b"] = jnp.full_like(params["layers"][1]["b"], -100.0)
  loss = lambda p, x, y: hg.ops.softmax_cross_entropy(apply(p, x), y)
  for layer, report in hgi.dead_relu_report(lambda p, x: apply(p, x), params, x).items():
    print(f"  {layer}: {report.dead_units}/{report.units} units dead on the whole batch "
          f"({report.dead_fraction:.0%})")
  print(hgi.format_zero_gradients(hgi.find_zero_gradients(loss, params, x, y)))


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--quick", action="store_true", help="CPU-sized run, under a minute")
  parser.add_argument("--data-dir", default=None)
  parser.add_argument("--out", default="runs/vanishing_exploding")
  args = parser.parse_args(argv)
  out = pathlib.Path(args.out)
  out.mkdir(parents=True, exist_ok=True)
  train, _ = hg.data.load_mnist(args.data_dir)
  n = 256 if args.quick else 1024
  x, y = jnp.asarray(train.x[:n]), jnp.asarray(train.y[:n])
  depth_sweep(x, y, (4, 8, 16) if args.quick else (4, 8, 16, 32), out)
  exploding(x, y, steps=20 if args.quick else 200)
  dead_relus(x, y)


if __name__ == "__main__":
  main()
