"""Model FLOPs utilisation of a bf16 transformer training step, handgrad.grad vs jax.grad.

The model is bench/engine.py's pre-norm transformer stack (layer_norm, q/k/v/o dense
layers, causal attention, a GELU feed-forward, residuals), computed in bfloat16: the
float32 parameters and inputs are cast to bf16 inside the loss, so the gradients come
back in float32 through the cast's rule, as in a mixed-precision step.  One step is
forward, loss, backward and an SGD update, jitted and donating the parameters.

Model FLOPs per step are counted from the architecture, not from what XLA executes
(PaLM's appendix B convention): 6 · (matrix parameters) · tokens for the dense layers
(2 forward, 4 backward), plus 12 · blocks · seq · dim · tokens for the attention scores
and the weighted sum (the causal mask is not discounted).  Layer norms, GELU and the
softmax are not counted.  MFU = model FLOPs / step time / the device's peak dense bf16
FLOP/s; the peak comes from ``--peak-tflops`` or, for known accelerators, the table
below (the datasheet's dense figure, no sparsity).  On a CPU there is no meaningful peak
and the MFU column says so.

    python bench/mfu.py                      # accelerator-sized model, writes results.md
    python bench/mfu.py --quick --no-write   # a tiny model, a smoke test on CPU
"""

from __future__ import annotations

import argparse
import functools
import os
import statistics
import sys

import jax
import jax.numpy as jnp

import handgrad as hg

sys.path.insert(0, __file__.rsplit("/", 1)[0])
from _common import (losses_agree, markdown_table, paired_ratio,  # noqa: E402
                     sgd_step_factory, time_training_steps, write_section)
from engine import init_transformer, transformer_loss  # noqa: E402

LR = 1e-3

#: Dense bf16 peak FLOP/s by ``device_kind`` (datasheets, without sparsity).
PEAK_BF16 = {
    "NVIDIA H200": 989e12,
    "NVIDIA H100 80GB HBM3": 989e12,
    "NVIDIA H100 PCIe": 756e12,
    "NVIDIA A100-SXM4-80GB": 312e12,
    "NVIDIA A100-SXM4-40GB": 312e12,
    "TPU v4": 275e12,
    "TPU v5 lite": 197e12,
    "TPU v5p": 459e12,
}


def bf16_loss(params, x, target, heads=4):
  """``transformer_loss`` computed in bfloat16; float32 in and out."""
  cast = lambda a: a.astype(jnp.bfloat16)
  return transformer_loss(jax.tree.map(cast, params), cast(x), cast(target),
                          heads=heads).astype(jnp.float32)


def model_flops(*, blocks: int, dim: int, hidden: int, batch: int, seq: int) -> float:
  """Training FLOPs of one step (forward + backward), PaLM's convention (see above)."""
  tokens = batch * seq
  matrix_params = blocks * (4 * dim * dim + 2 * dim * hidden)
  return 6.0 * matrix_params * tokens + 12.0 * blocks * seq * dim * tokens


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--quick", action="store_true", help="a tiny model (CPU smoke test)")
  parser.add_argument("--no-write", action="store_true", help="print only; leave results.md")
  parser.add_argument("--peak-tflops", type=float, default=None,
                      help="the device's dense bf16 peak in TFLOP/s (default: known table)")
  parser.add_argument("--repeats", type=int, default=None, help="interleaved rounds")
  args = parser.parse_args(argv)

  if args.quick:
    blocks, dim, hidden, heads, batch, seq = 2, 64, 256, 4, 4, 32
  else:
    blocks, dim, hidden, heads, batch, seq = 12, 1024, 4096, 16, 16, 1024
  repeats = args.repeats or (5 if args.quick else 15)

  device = jax.devices()[0]
  kind = getattr(device, "device_kind", device.platform)
  peak = args.peak_tflops * 1e12 if args.peak_tflops else PEAK_BF16.get(kind)

  kp, kx, kt = jax.random.split(jax.random.key(0), 3)
  params = init_transformer(kp, blocks=blocks, dim=dim, hidden=hidden)
  x = jax.random.normal(kx, (batch, seq, dim))
  target = jax.random.normal(kt, (batch, seq, dim))
  loss = functools.partial(bf16_loss, heads=heads)
  steps = {"hand": sgd_step_factory(loss, hg.value_and_grad, LR)(),
           "jax": sgd_step_factory(loss, jax.value_and_grad, LR)()}
  samples, losses = time_training_steps(steps, params, (x, target), repeats=repeats, iters=3)
  flops = model_flops(blocks=blocks, dim=dim, hidden=hidden, batch=batch, seq=seq)

  rows = []
  for name in ("hand", "jax"):
    t = statistics.median(samples[name])
    achieved = flops / t
    rows.append([name, f"{t * 1e3:.2f}", f"{achieved / 1e12:.3g}",
                 f"{100 * achieved / peak:.1f}%" if peak else "n/a (no known peak)"])
  ratio = paired_ratio(samples["hand"], samples["jax"])
  agree = "yes" if losses_agree(losses, "jax", rtol=1e-2) else f"NO ({losses})"
  table = markdown_table(["engine", "step ms", "model TFLOP/s", "MFU"], rows)
  note = (f"{blocks} blocks, dim {dim}, hidden {hidden}, {heads} heads, batch {batch} × seq "
          f"{seq}, bf16 compute with float32 parameters; {flops / 1e12:.3g} model TFLOP per "
          f"step; {repeats} interleaved rounds of 3 steps, medians.  Time ratio hand/jax "
          f"{ratio:.3f}; losses agree (bf16, rtol 1e-2): {agree}.  Peak used: "
          + (f"{peak / 1e12:.0f} TFLOP/s dense bf16 ({kind})" if peak else f"none ({kind})")
          + f"; load average {', '.join(f'{v:.1f}' for v in os.getloadavg())}.")
  print(table + "\n\n" + note)
  if not args.no_write:
    write_section("Model FLOPs utilisation: bf16 transformer step (bench/mfu.py)",
                  table + "\n\n" + note)


if __name__ == "__main__":
  main()
