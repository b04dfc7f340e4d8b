"""Loops: a jitted RNN training step through ``lax.scan``, handgrad.grad vs jax.grad.

handgrad's backward pass of a scan keeps only the carry entering each iteration and
recomputes the iteration's forward pass before its backward (like a checkpointed
body); jax.grad keeps every residual of the body.  Both are compared with
``jax.grad`` of the same scan with a ``jax.checkpoint``-ed body, which makes the same
trade.  Side by side in one run (interleaved rounds, medians of per-round ratios);
writes a table to bench/results.md.

    python bench/scan.py [--quick] [--no-write]

What to expect: handgrad's temp memory close to jax.grad + checkpoint and below plain
jax.grad's when the body's residuals outweigh its carry; its time between the two
(one extra forward of the body per iteration, as with checkpoint).  ``hand+save``
checkpoints the body with ``everything_saveable``, which handgrad honours by keeping
each iteration's residuals: jax.grad's time at jax.grad's memory.
"""

from __future__ import annotations

import argparse
import functools
import math
import os
import pathlib
import statistics
import sys

import jax
import jax.numpy as jnp

import handgrad as hg

sys.path.insert(0, str(pathlib.Path(__file__).parent))
from _common import (compile_seconds_and_memory, losses_agree,  # noqa: E402
                     markdown_table, paired_ratio, sgd_step_factory, time_training_steps,
                     write_section)

LR = 0.01


def init_rnn(key, inputs, hidden, classes):
  kw, ku, ko = jax.random.split(key, 3)
  return {"W": jax.random.normal(kw, (hidden, hidden)) / math.sqrt(hidden),
          "U": jax.random.normal(ku, (inputs, hidden)) / math.sqrt(inputs),
          "b": jnp.zeros(hidden),
          "out": {"W": jax.random.normal(ko, (hidden, classes)) / math.sqrt(hidden),
                  "b": jnp.zeros(classes)}}


def rnn_loss(params, xs, labels, checkpoint_body=False):
  """A tanh RNN over xs: [T, B, F]; the last state classifies.  labels: [B] int.
  ``checkpoint_body``: False, True (``jax.checkpoint``, save nothing) or ``"save"``
  (``jax.checkpoint`` with ``everything_saveable``: keep every residual per iteration)."""
  def step(h, x):
    return jnp.tanh(h @ params["W"] + x @ params["U"] + params["b"]), None

  if checkpoint_body == "save":
    body = jax.checkpoint(step, policy=jax.checkpoint_policies.everything_saveable)
  else:
    body = jax.checkpoint(step) if checkpoint_body else step
  h0 = jnp.zeros((xs.shape[1], params["W"].shape[0]), xs.dtype)
  h, _ = jax.lax.scan(body, h0, xs)
  logits = hg.ops.dense(h, params["out"]["W"], params["out"]["b"])
  return hg.ops.softmax_cross_entropy(logits, labels)


VARIANTS = {"hand": (hg.value_and_grad, False), "hand+save": (hg.value_and_grad, "save"),
            "jax": (jax.value_and_grad, False), "jax+ckpt": (jax.value_and_grad, True)}


def bench_case(name, params, batch, *, repeats, iters):
  makers = {k: sgd_step_factory(functools.partial(rnn_loss, checkpoint_body=ckpt), grad_fn, LR)
            for k, (grad_fn, ckpt) in VARIANTS.items()}
  temp, compile_s = {}, {}
  for k, make in makers.items():
    compile_s[k], temp[k] = compile_seconds_and_memory(make, (params, *batch))
  samples, losses = time_training_steps({k: make() for k, make in makers.items()}, params,
                                        batch, repeats=repeats, iters=iters)
  mib = {k: v / 2**20 for k, v in temp.items()}
  ms = {k: statistics.median(samples[k]) * 1e3 for k in makers}

  def ratio(a, b):
    return f"{paired_ratio(samples[a], samples[b]):.3f}"

  def mem(a, b):
    return f"{temp[a] / max(temp[b], 1):.3f}"

  return {
      "case": name,
      "ms hand / hand+save / jax / jax+ckpt": " / ".join(f"{ms[k]:.2f}" for k in makers),
      "time hand/jax+ckpt": ratio("hand", "jax+ckpt"),
      "time hand/jax": ratio("hand", "jax"),
      "time hand+save/jax": ratio("hand+save", "jax"),
      "temp MiB hand / hand+save / jax / jax+ckpt": " / ".join(f"{mib[k]:.2f}" for k in makers),
      "memory hand/jax+ckpt": mem("hand", "jax+ckpt"),
      "memory hand/jax": mem("hand", "jax"),
      "memory hand+save/jax": mem("hand+save", "jax"),
      "compile hand/jax": f"{compile_s['hand'] / compile_s['jax']:.2f}",
      "loss agrees": "yes" if losses_agree(losses, "jax") else f"NO ({losses})",
  }


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--quick", action="store_true", help="fewer repeats and cases")
  parser.add_argument("--no-write", action="store_true", help="print only; leave results.md")
  args = parser.parse_args(argv)
  repeats = 5 if args.quick else 15
  load = os.getloadavg()
  kp, kx, ky = jax.random.split(jax.random.key(0), 3)
  cases = ((32, 64), (128, 64)) if args.quick else ((32, 64), (128, 64), (512, 16))
  inputs, hidden, classes = 64, 256, 10
  params = init_rnn(kp, inputs, hidden, classes)
  rows = []
  for steps, batch in cases:
    xs = jax.random.normal(kx, (steps, batch, inputs))
    labels = jax.random.randint(ky, (batch,), 0, classes)
    row = bench_case(f"rnn T={steps} B={batch} H={hidden}", params, (xs, labels),
                     repeats=repeats, iters=5)
    print(row, flush=True)
    rows.append(row)
  headers = list(rows[0])
  table = markdown_table(headers, [[r[h] for h in headers] for r in rows])
  print("\n" + table)
  if not args.no_write:
    write_section("Loops: RNN training step through lax.scan (bench/scan.py)",
                  table + "\n\nhand = handgrad.grad, default (recomputes each iteration "
                  "from its saved carry); hand+save = handgrad.grad with the body "
                  "jax.checkpoint(step, policy=everything_saveable) (keeps every "
                  "residual per iteration, as jax.grad); jax = jax.grad; jax+ckpt = "
                  "jax.grad with a jax.checkpoint-ed scan body. Targets: hand ≈ jax+ckpt "
                  "(time and memory), hand+save ≈ jax (time and memory). Load average "
                  f"(1 min) {load[0]:.1f} at start, {os.getloadavg()[0]:.1f} at end.")


if __name__ == "__main__":
  main()
