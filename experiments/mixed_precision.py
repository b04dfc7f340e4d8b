"""Mixed precision on MNIST: float32, bfloat16, and float16 with dynamic loss scaling.

The seed trains with ``autocast`` and a ``GradScaler``.  Here a precision policy keeps
parameters and logits in float32 and runs the MLP in bfloat16 or float16; float16 adds
dynamic loss scaling, and some float16 batches are made to overflow on purpose (inputs
scaled past float16's largest value, 65504): those steps must be skipped with every
parameter bit-unchanged, the scale must back off, and training must carry on.

Prints test accuracy, median step time (interleaved, after compilation) and the
loss-scale trace; writes a PNG of the losses and the scale.

    python experiments/mixed_precision.py --quick     # under a minute on a 2-core CPU
"""

from __future__ import annotations

import argparse
import json
import pathlib
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np

import handgrad as hg
from handgrad import train


def run_precision(precision: str, train_ds, test_ds, *, epochs: int, batch_size: int,
                  inject: set[int], seed: int = 0):
  model_init = lambda key: hg.nn.mlp.init([784, 256, 128, 10], key=key)
  tx = train.make_optimizer("adam", 1e-3)
  loss_scale = train.DynamicLossScale(initial_scale=2.0 ** 15, growth_interval=200) \
      if precision == "fp16" else None
  state = jax.jit(lambda k: train.TrainState.create(model_init(k), tx, key=1,
                                                    loss_scale=loss_scale))(jax.random.key(seed))
  step = train.make_train_step(train.classification_loss(hg.nn.mlp.apply, precision=precision),
                               tx, loss_scale=loss_scale)
  eval_step = train.make_eval_step(train.classification_eval(hg.nn.mlp.apply, precision=precision))
  trace = {"loss": [], "loss_scale": [], "skipped": []}
  n = 0
  for epoch in range(epochs):
    for batch in hg.data.batches(train_ds, batch_size, key=jax.random.fold_in(jax.random.key(seed), epoch)):
      if n in inject:
        # Overflow: float16 cannot hold 1e5, so the first layer's input becomes inf.
        batch = batch._replace(x=batch.x * 1e5)
        before = jax.device_get(state.params)
      state, metrics = step(state, batch)
      m = jax.device_get(metrics)
      trace["loss"].append(float(m["loss"]))
      trace["loss_scale"].append(float(m.get("loss_scale", np.nan)))
      trace["skipped"].append(bool(m.get("skipped", 0.0)))
      if n in inject:
        after = jax.device_get(state.params)
        unchanged = all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(before), jax.tree.leaves(after)))
        assert unchanged and trace["skipped"][-1], f"step {n}: overflow step was not skipped"
      assert all(np.isfinite(np.asarray(p)).all() for p in jax.tree.leaves(state.params)), \
          f"{precision}: a parameter became non-finite at step {n}"
      n += 1
  scores = train.evaluate(eval_step, state.params, test_ds, batch_size=1000)
  return state, step, trace, scores


def median_step_time(steps: dict, states: dict, batch, rounds: int = 5, iters: int = 20) -> dict:
  """Median seconds per step for each precision, timed in interleaved rounds."""
  times = {k: [] for k in steps}
  states = {k: jax.tree.map(jnp.copy, s) for k, s in states.items()}
  for _ in range(rounds):
    for k, step in steps.items():
      t0 = time.perf_counter()
      for _ in range(iters):
        states[k], m = step(states[k], batch)
      jax.block_until_ready(m)
      times[k].append((time.perf_counter() - t0) / iters)
  return {k: statistics.median(v) for k, v in times.items()}


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--quick", action="store_true", help="CPU-sized run, under a minute")
  parser.add_argument("--data-dir", default=None, help="full MNIST IDX directory")
  parser.add_argument("--epochs", type=int, default=None)
  parser.add_argument("--batch-size", type=int, default=None)
  parser.add_argument("--out", default="runs/mixed_precision")
  args = parser.parse_args(argv)
  epochs = args.epochs or (5 if args.quick else 15)
  batch_size = args.batch_size or (32 if args.quick else 256)
  out = pathlib.Path(args.out)
  out.mkdir(parents=True, exist_ok=True)
  train_ds, test_ds = hg.data.load_mnist(args.data_dir)
  inject = {40, 41, 42, 150}

  results, steps, states = {}, {}, {}
  for precision in ("float32", "bf16", "fp16"):
    t0 = time.perf_counter()
    state, step, trace, scores = run_precision(
        precision, train_ds, test_ds, epochs=epochs, batch_size=batch_size,
        inject=inject if precision == "fp16" else set())
    results[precision] = {"test_accuracy": scores["accuracy"], "trace": trace,
                          "wall_s": time.perf_counter() - t0}
    steps[precision], states[precision] = step, state
    print(f"{precision:8s} test accuracy {scores['accuracy']:.4f}  "
          f"({len(trace['loss'])} steps, {sum(trace['skipped'])} skipped, "
          f"{results[precision]['wall_s']:.1f} s)", flush=True)

  batch = next(hg.data.batches(train_ds, batch_size, key=jax.random.key(0)))
  timing = median_step_time(steps, states, batch)
  base = timing["float32"]
  print("\nprecision  test acc  Δ vs float32  step ms  time vs float32")
  for p, r in results.items():
    print(f"{p:9s}  {r['test_accuracy']:.4f}   {100 * (r['test_accuracy'] - results['float32']['test_accuracy']):+.2f} pt"
          f"     {timing[p] * 1e3:6.3f}   {timing[p] / base:.2f}×")
  fp16 = results["fp16"]["trace"]
  print(f"\nfloat16 loss scale: start {fp16['loss_scale'][0]:.0f}, after the injected overflows "
        f"at steps {sorted(inject)}: " + ", ".join(
            f"step {i}: {fp16['loss_scale'][i]:.0f}{' (skipped)' if fp16['skipped'][i] else ''}"
            for i in sorted(inject)) + f"; final {fp16['loss_scale'][-1]:.0f}")
  print("(On CPU, bfloat16 and float16 arithmetic is emulated and slower than float32; "
        "the step-time gain belongs to accelerators.)")
  diff = results["bf16"]["test_accuracy"] - results["float32"]["test_accuracy"]
  print(f"bfloat16 within 1 point of float32: {'yes' if diff >= -0.01 else 'NO'} "
        f"(bf16 − float32 = {100 * diff:+.2f} pt)")

  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
  for p, r in results.items():
    loss = np.array(r["trace"]["loss"])
    ok = np.isfinite(loss)
    ax1.plot(np.arange(len(loss))[ok], loss[ok], label=p, alpha=0.8, linewidth=0.8)
  ax1.set_yscale("log")
  ax1.set_xlabel("step")
  ax1.set_ylabel("training loss")
  ax1.legend()
  ax2.semilogy(fp16["loss_scale"], color="C2")
  for i in sorted(inject):
    ax2.axvline(i, color="red", alpha=0.3, linewidth=0.8)
  ax2.set_xlabel("step")
  ax2.set_ylabel("float16 loss scale (red: injected overflow)")
  fig.tight_layout()
  fig.savefig(out / "mixed_precision.png", dpi=120)
  (out / "results.json").write_text(json.dumps(
      {p: {"test_accuracy": r["test_accuracy"], "step_ms": timing[p] * 1e3,
           "skipped_steps": [i for i, s in enumerate(r["trace"]["skipped"]) if s]}
       for p, r in results.items()}, indent=2))
  print(f"wrote {out / 'mixed_precision.png'} and {out / 'results.json'}")


if __name__ == "__main__":
  main()
