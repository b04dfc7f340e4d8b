"""Cost of find_nonfinite's jitted run versus the plain hand gradient.

``handgrad.inspect.find_nonfinite`` first runs one jitted program: the forward pass,
the hand backward pass and one finiteness flag (``all(isfinite(x))``) per forward value
and per backward cotangent.  This times that program
(``nonfinite.value_and_grad_with_flags``, which also returns the value and gradients
like a train step needs) against ``jax.jit(handgrad.value_and_grad(loss))`` on the
seed's MLP [784, 256, 128, 10] at batch 128 and on bench/engine.py's 4-block
transformer.  Interleaved rounds; ratio = median over rounds of the per-round ratio.
Target: ≤ 1.5.

    python bench/nonfinite.py            # prints a markdown table
    python bench/nonfinite.py --quick
"""

import argparse
import statistics
import sys

import jax

import handgrad as hg
from handgrad._src.inspect import nonfinite

sys.path.insert(0, __file__.rsplit("/", 1)[0])
from _common import interleaved_samples, markdown_table, paired_ratio  # noqa: E402
from engine import init_mlp, init_transformer, mlp_loss_ops, transformer_loss  # noqa: E402


def cases():
  k1, k2, k3 = jax.random.split(jax.random.key(0), 3)
  x = jax.random.uniform(k1, (128, 784))
  y = jax.random.randint(k2, (128,), 0, 10)
  yield "mlp/ops batch 128", mlp_loss_ops, (init_mlp(k3), x, y)
  xt = jax.random.normal(k1, (8, 64, 128))
  yield "transformer 4 blocks, batch 8×64", transformer_loss, (
      init_transformer(k3), xt, jax.random.normal(k2, xt.shape))


def bench(name, loss, args, *, repeats, iters):
  plain = jax.jit(hg.value_and_grad(loss))
  flagged = jax.jit(nonfinite.value_and_grad_with_flags(loss))
  v_plain, _ = jax.block_until_ready(plain(*args))
  (v_flag, _), flags = jax.block_until_ready(flagged(*args))
  assert float(v_plain) == float(v_flag) and bool(nonfinite.all_flags_finite(flags))
  samples = interleaved_samples([lambda: plain(*args), lambda: flagged(*args)],
                                repeats=repeats, iters=iters)
  n_flags = sum(x.size for x in jax.tree.leaves(flags))
  return [name, f"{statistics.median(samples[0]) * 1e3:.3f}",
          f"{statistics.median(samples[1]) * 1e3:.3f}", n_flags,
          f"{paired_ratio(samples[1], samples[0]):.3f}"]


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--quick", action="store_true", help="fewer repeats")
  args = parser.parse_args(argv)
  repeats, iters = (7, 5) if args.quick else (21, 20)
  rows = [bench(*c, repeats=repeats, iters=iters) for c in cases()]
  print(markdown_table(["case", "hand grad ms", "with flags ms", "flags", "ratio"], rows))


if __name__ == "__main__":
  main()
