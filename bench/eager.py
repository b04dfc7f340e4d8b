"""Eager (un-jitted) gradient calls: handgrad.grad versus jax.grad.

``handgrad.grad(f)(x)`` called outside ``jax.jit`` compiles its forward and hand
backward once per call signature and reuses the program (``handgrad._src.eager``);
``jax.grad(f)(x)`` runs op by op, each primitive compiled once and cached.  Seed MLP
[784, 256, 128, 10] in layer-level ops, batch 32.

* per call: a repeated call, handgrad cached / jax.grad, and handgrad uncached (the
  cache off: trace + op-by-op engine every call) / jax.grad; interleaved rounds, ratio =
  median over rounds of the per-round ratio.  Target ≤ 1.0 (cached).
* first call: one fresh Python process per sample (so JAX's per-primitive compilation
  caches start cold, as they do for a user's first call), the engines alternating; the
  figure is the call alone (imports and data set-up excluded); ratio of medians.
  Target ≤ 1.2.

    python bench/eager.py            # writes its section of bench/results.md
    python bench/eager.py --quick
"""

import argparse
import os
import statistics
import subprocess
import sys
import time

import jax

import handgrad as hg
from handgrad._src import eager

sys.path.insert(0, __file__.rsplit("/", 1)[0])
from _common import interleaved_samples, markdown_table, paired_ratio, write_section  # noqa: E402
from engine import init_mlp, mlp_loss_ops  # noqa: E402

BATCH = 32


def data():
  kp, kx, ky = jax.random.split(jax.random.key(0), 3)
  params = init_mlp(kp)
  x = jax.random.normal(kx, (BATCH, 784))
  y = jax.random.randint(ky, (BATCH,), 0, 10)
  return params, x, y


def first_call(engine: str) -> float:
  """Seconds of the first gradient call in this process."""
  params, x, y = data()
  jax.block_until_ready((params, x, y))
  grad = hg.grad if engine == "hand" else jax.grad
  t0 = time.perf_counter()
  jax.block_until_ready(grad(mlp_loss_ops)(params, x, y))
  return time.perf_counter() - t0


def first_call_samples(rounds: int) -> dict[str, list[float]]:
  out = {"hand": [], "jax": []}
  env = dict(os.environ)
  for r in range(rounds):
    order = ["hand", "jax"] if r % 2 == 0 else ["jax", "hand"]
    for k in order:
      res = subprocess.run([sys.executable, __file__, "--first-call", k], env=env,
                           capture_output=True, text=True, check=True)
      out[k].append(float(res.stdout.strip().splitlines()[-1]))
  return out


def per_call_samples(repeats: int, iters: int):
  params, x, y = data()
  g_hand, g_jax = hg.grad(mlp_loss_ops), jax.grad(mlp_loss_ops)

  def hand():
    return g_hand(params, x, y)

  def hand_uncached():
    eager.disable()
    try:
      return g_hand(params, x, y)
    finally:
      eager.enable()

  def jaxg():
    return g_jax(params, x, y)

  ref = jax.tree.leaves(hand_uncached())
  got = jax.tree.leaves(hand())
  identical = all(bool((a == b).all()) for a, b in zip(ref, got))
  for f in (hand, hand_uncached, jaxg):
    jax.block_until_ready(f())
  s = interleaved_samples([hand, hand_uncached, jaxg], repeats=repeats, iters=iters)
  return s, identical


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--quick", action="store_true")
  parser.add_argument("--no-write", action="store_true")
  parser.add_argument("--first-call", choices=["hand", "jax"])
  args = parser.parse_args(argv)
  if args.first_call:
    print(first_call(args.first_call))
    return
  load = os.getloadavg()
  (s_hand, s_unc, s_jax), identical = per_call_samples(7 if args.quick else 21, 10)
  first = first_call_samples(3 if args.quick else 7)
  load_end = os.getloadavg()
  med = statistics.median
  f_hand, f_jax = med(first["hand"]), med(first["jax"])
  rows = [
      ["repeated call, cached", f"{med(s_hand) * 1e3:.3f}", f"{med(s_jax) * 1e3:.3f}",
       f"{paired_ratio(s_hand, s_jax):.3f}", "≤ 1.0",
       "yes" if paired_ratio(s_hand, s_jax) <= 1.0 else "no"],
      ["repeated call, cache off (trace every call)", f"{med(s_unc) * 1e3:.3f}",
       f"{med(s_jax) * 1e3:.3f}", f"{paired_ratio(s_unc, s_jax):.3f}", "—", "—"],
      ["first call in a fresh process", f"{f_hand * 1e3:.1f}", f"{f_jax * 1e3:.1f}",
       f"{f_hand / f_jax:.3f}", "≤ 1.2", "yes" if f_hand / f_jax <= 1.2 else "no"],
  ]
  body = markdown_table(["case", "hand ms", "jax.grad ms", "ratio hand/jax", "target", "met"],
                        rows)
  body += (f"\n\nSeed MLP [784, 256, 128, 10] (layer-level ops), batch {BATCH}, eager calls "
           f"(no jax.jit around them). Gradients of the cached call bit-identical to the "
           f"uncached call: {'yes' if identical else 'NO'}. Load average (1 min) "
           f"{load[0]:.1f} at start, {load_end[0]:.1f} at end; per-call rounds: "
           f"{len(s_hand)} × 10 calls; first call: {len(first['hand'])} processes per engine.")
  print(body)
  if not args.no_write:
    write_section("Eager calls: handgrad.grad vs jax.grad without jit (bench/eager.py)", body)


if __name__ == "__main__":
  main()
