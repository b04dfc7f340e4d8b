"""Double backprop by hand: the seed's x³ example, then the top of the MNIST MLP's Hessian
spectrum while it trains.

The seed computes y = x³ with create_graph=True and differentiates twice: dy/dx = 3x²,
d²y/dx² = 6x.  Here the same comes from differentiating handgrad's hand backward pass:
forward over hand reverse (``handgrad.hessian``, ``handgrad.hvp``) and hand reverse over
hand reverse (``handgrad.hvp_reverse``).  Then Lanczos on Hessian-vector products gives
the largest eigenvalues of the seed MLP's loss Hessian (235k parameters; the Hessian is
never formed), every few steps of training: the curvature rises early in training and
then settles (the "edge of stability" picture, in miniature).

    python experiments/hessian.py --quick      # under a minute on a 2-core CPU
    python experiments/hessian.py              # longer run; full MNIST with --data-dir
"""

from __future__ import annotations

import argparse
import pathlib
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

import handgrad as hg
import handgrad.data
import handgrad.nn
import handgrad.train


def seed_cube_example() -> None:
  x = jnp.array([-2.0, -1.0, 0.5, 1.0, 3.0])
  f = lambda x: jnp.sum(x ** 3)
  first = hg.grad(f)(x)
  second = hg.grad(lambda x: jnp.sum(hg.grad(f)(x)))(x)
  print("y = x³ at x =", np.asarray(x))
  print("  dy/dx   = 3x² =", np.asarray(3 * x ** 2), " hand:", np.asarray(first))
  print("  d²y/dx² = 6x  =", np.asarray(6 * x), " hand reverse over reverse:", np.asarray(second))
  print("  diag(hessian), forward over hand reverse:", np.asarray(jnp.diag(hg.hessian(f)(x))))
  assert np.allclose(first, 3 * x ** 2) and np.allclose(second, 6 * x)


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--quick", action="store_true", help="CPU-sized run, under a minute")
  parser.add_argument("--data-dir", default=None, help="full MNIST IDX directory")
  parser.add_argument("--out", default="runs/hessian")
  parser.add_argument("--steps", type=int, default=None)
  parser.add_argument("--every", type=int, default=None, help="steps between spectra")
  parser.add_argument("--lanczos", type=int, default=None, help="Lanczos iterations")
  parser.add_argument("--top", type=int, default=3)
  args = parser.parse_args(argv)
  steps = args.steps or (150 if args.quick else 2000)
  every = args.every or (25 if args.quick else 100)
  lanczos = args.lanczos or (12 if args.quick else 30)
  out = pathlib.Path(args.out)
  out.mkdir(parents=True, exist_ok=True)

  seed_cube_example()

  train, _ = hg.data.load_mnist(args.data_dir)
  key = jax.random.key(0)
  params = hg.nn.mlp.init([784, 256, 128, 10], key=key)
  probe = jnp.asarray(train.x[:512]), jnp.asarray(train.y[:512])  # fixed batch for spectra
  loss_fn = lambda p, x, y: hg.ops.softmax_cross_entropy(hg.nn.mlp.apply(p, x), y)
  opt = optax.sgd(0.1)
  state = hg.train.TrainState.create(params, opt, key=0)
  train_step = hg.train.make_train_step(lambda p, batch, key: loss_fn(p, *batch), opt,
                                        has_aux=False)

  history = []
  batches = hg.data.batches(train, 64, key=jax.random.key(1))
  t0 = time.perf_counter()
  for i in range(steps + 1):
    if i % every == 0:
      spectrum = hg.top_hessian_eigenvalues(lambda p: loss_fn(p, *probe), state.params, k=args.top,
                                             iterations=lanczos, seed=i)
      history.append((i, spectrum.eigenvalues))
      print(f"step {i:5d}  top Hessian eigenvalues {np.array2string(spectrum.eigenvalues, precision=3)}"
            f"  (2/lr = {2 / 0.1:.0f})", flush=True)
    if i == steps:
      break
    try:
      b = next(batches)
    except StopIteration:
      batches = hg.data.batches(train, 64, key=jax.random.key(i))
      b = next(batches)
    state, _ = train_step(state, (jnp.asarray(b.x), jnp.asarray(b.y)))
  print(f"{steps} steps in {time.perf_counter() - t0:.1f} s")

  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  fig, ax = plt.subplots(figsize=(7, 4))
  steps_axis = [s for s, _ in history]
  values = np.array([v for _, v in history])
  for j in range(values.shape[1]):
    ax.plot(steps_axis, values[:, j], marker="o", label=f"λ{j + 1}")
  ax.axhline(2 / 0.1, color="grey", linestyle=":", label="2 / learning rate")
  ax.set_xlabel("training step")
  ax.set_ylabel("Hessian eigenvalue")
  ax.set_title("Top of the MNIST MLP's loss Hessian (Lanczos on hand HVPs)")
  ax.legend()
  ax.grid(alpha=0.3)
  fig.tight_layout()
  png = out / "hessian_eigenvalues.png"
  fig.savefig(png, dpi=120)
  print(f"wrote {png}")


if __name__ == "__main__":
  main()
