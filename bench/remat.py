"""Rematerialisation: compiled peak temp memory and step time with and without remat.

Transformer stacks of 2 to 16 pre-norm blocks (``handgrad.nn.transformer_block``); with
``remat=True`` each residual branch is wrapped in ``jax.checkpoint`` as in the seed's
checkpointed block.  Both engines, side by side: handgrad.grad and jax.grad.  Checks
that gradients are unchanged by remat.  Writes a table to bench/results.md and a PNG.

Targets: remat cuts the 16-block stack's temp memory ≥ 3× for both engines; the hand
engine's remat memory is within 10% of jax.grad + jax.checkpoint.

    python bench/remat.py [--quick]
"""

from __future__ import annotations

import argparse
import os
import pathlib
import sys

# XLA:CPU expands optimisation barriers before CSE ("cse_barrier_expander"), so CSE
# merges every recomputation back into the forward pass and jax.checkpoint saves
# nothing on CPU (for jax.grad and handgrad alike; measured: a 16-block stack uses
# *more* temp memory with remat).  GPU and TPU keep the barriers.  Disable that pass
# so that the CPU numbers show what remat does on an accelerator.
if "--keep-cpu-barrier-pass" not in sys.argv:
  os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "")
                             + " --xla_disable_hlo_passes=cse_barrier_expander").strip()

import jax
import jax.numpy as jnp
import numpy as np

import handgrad as hg
import handgrad.nn  # noqa: F401

sys.path.insert(0, str(pathlib.Path(__file__).parent))
from _common import (compile_seconds_and_memory, interleaved_step_times,  # noqa: E402
                     markdown_table, write_section)

HEADS = 4


def init_stack(key, blocks, dim, hidden):
  return [hg.nn.transformer_block.init(dim, HEADS, hidden, key=k)
          for k in jax.random.split(key, blocks)]


def stack_loss(params, x, target, remat):
  for i, p in enumerate(params):
    x = hg.nn.transformer_block.apply(p, x, num_heads=HEADS, causal=True, remat=remat,
                                      path=f"blocks/{i}")
  return hg.ops.mse(x, target)


def make_step(grad_fn, remat):
  def make():
    def step(params, x, target):
      loss, grads = grad_fn(stack_loss)(params, x, target, remat)
      return jax.tree.map(lambda p, g: p - 1e-3 * g, params, grads), loss
    return jax.jit(step)
  return make


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--quick", action="store_true")
  parser.add_argument("--no-write", action="store_true")
  parser.add_argument("--batch", type=int, default=8)
  parser.add_argument("--seq", type=int, default=128)
  parser.add_argument("--dim", type=int, default=128)
  parser.add_argument("--keep-cpu-barrier-pass", action="store_true",
                      help="leave XLA:CPU's cse_barrier_expander on (remat then saves nothing)")
  args = parser.parse_args(argv)
  depths = (2, 16) if args.quick else (2, 4, 8, 16)
  kp, kx, kt = jax.random.split(jax.random.key(0), 3)
  x = jax.random.normal(kx, (args.batch, args.seq, args.dim))
  target = jax.random.normal(kt, x.shape)
  variants = {("hand", False): hg.value_and_grad, ("hand", True): hg.value_and_grad,
              ("jax", False): jax.value_and_grad, ("jax", True): jax.value_and_grad}
  rows, mem_series = [], {k: [] for k in variants}
  for depth in depths:
    params = init_stack(kp, depth, args.dim, 4 * args.dim)
    temp, fns = {}, {}
    for (engine, remat), grad_fn in variants.items():
      make = make_step(grad_fn, remat)
      _, temp[(engine, remat)] = compile_seconds_and_memory(make, (params, x, target))
      fns[(engine, remat)] = make()
    outs = {k: f(params, x, target) for k, f in fns.items()}  # compile + warm up
    grads = {k: (hg.grad if k[0] == "hand" else jax.grad)(stack_loss)(params, x, target, k[1])
             for k in variants}
    ref = grads[("jax", False)]
    unchanged = all(
        all(np.allclose(a, b, rtol=1e-4, atol=1e-5) for a, b in zip(jax.tree.leaves(g), jax.tree.leaves(ref)))
        for g in grads.values())
    times = interleaved_step_times([lambda f=f: f(params, x, target) for f in fns.values()],
                                   repeats=3 if args.quick else 7, iters=2)
    t = dict(zip(fns, times))
    for k in variants:
      mem_series[k].append(temp[k] / 2**20)
    rows.append([
        depth,
        f"{temp[('hand', False)] / 2**20:.1f} → {temp[('hand', True)] / 2**20:.1f}",
        f"{temp[('hand', False)] / temp[('hand', True)]:.2f}×",
        f"{temp[('jax', False)] / 2**20:.1f} → {temp[('jax', True)] / 2**20:.1f}",
        f"{temp[('jax', False)] / temp[('jax', True)]:.2f}×",
        f"{temp[('hand', True)] / temp[('jax', True)]:.3f}",
        f"{t[('hand', False)] * 1e3:.0f} / {t[('hand', True)] * 1e3:.0f}",
        f"{t[('jax', False)] * 1e3:.0f} / {t[('jax', True)] * 1e3:.0f}",
        f"{t[('hand', True)] / t[('jax', True)]:.3f}",
        "yes" if unchanged else "NO",
    ])
    print(rows[-1], flush=True)
    del outs
  headers = ["blocks", "hand temp MiB (no remat → remat)", "hand saving",
             "jax temp MiB (no remat → remat)", "jax saving", "remat memory hand/jax",
             "hand ms (no remat / remat)", "jax ms (no remat / remat)", "remat time hand/jax",
             "grads unchanged"]
  table = markdown_table(headers, rows)
  flags = os.environ.get("XLA_FLAGS", "")
  print("\n" + table)
  png = pathlib.Path(__file__).with_name("remat.png")
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  fig, ax = plt.subplots(figsize=(7, 4.5))
  for (engine, remat), series in mem_series.items():
    ax.plot(depths, series, marker="o", linestyle="-" if engine == "hand" else "--",
            label=f"{'handgrad.grad' if engine == 'hand' else 'jax.grad'}"
                  f"{' + remat' if remat else ''}")
  ax.set_xlabel("transformer blocks")
  ax.set_ylabel("compiled temp memory (MiB)")
  ax.set_title(f"Rematerialisation (batch {args.batch}, seq {args.seq}, dim {args.dim})")
  ax.set_xticks(depths)
  ax.grid(alpha=0.3)
  ax.legend()
  fig.tight_layout()
  fig.savefig(png, dpi=120)
  print(f"wrote {png}")
  if not args.no_write:
    write_section("Rematerialisation: transformer stacks (bench/remat.py)",
                  table + f"\n\nbatch {args.batch}, seq {args.seq}, dim {args.dim}, "
                  f"{HEADS} heads, hidden {4 * args.dim}; XLA_FLAGS=`{flags}`; plot: `bench/remat.png`. "
                  "Targets: "
                  "saving ≥ 3× at 16 blocks for both engines, remat memory hand/jax ≤ 1.10.")


if __name__ == "__main__":
  main()
