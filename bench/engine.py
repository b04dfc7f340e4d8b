"""Jitted training step with handgrad.grad versus jax.grad: time, memory, compile time.

One step = forward, loss, backward, SGD update, jitted and donating the parameters.
Models: the seed's MLP [784, 256, 128, 10] written with handgrad.ops layer-level ops
(``mlp/ops``) and with plain jax.numpy/jax.nn (``mlp/jnp``, exercising primitive
rules) at batch 32, 128, 1024 and 8192; the training step of ``handgrad.train``
(``mlp/train step``: ``make_train_step(..., backend="hand")`` against
``backend="jax"``, both with adam, the global gradient norm and the guard that skips a
non-finite update, so the two rows differ only in the gradient) at batch 32, 128 and
1024; a stack of 4 pre-norm transformer blocks; and the
MNIST CNN of ``handgrad.nn.cnn`` (``cnn/ops``: conv2d/max_pool layer ops) and the same
network in plain lax/jax.nn (``cnn/jnp``: the conv_general_dilated and reduce_window_max
primitive rules) at batch 32 and 128.

Ratios are hand / jax, measured side by side in one run: interleaved rounds (the order
alternating), time ratio = median over rounds of the per-round ratio.
Targets: step time ≤ 1.05, compiled temp memory ≤ 1.05, trace+compile time ≤ 2.

    python bench/engine.py            # full run, writes bench/results.md
    python bench/engine.py --quick    # fewer repeats
    python bench/engine.py --models cnn   # the CNN rows only (their own section)
    python bench/engine.py --xla-cpu-scheduler memory   # XLA:CPU's memory-optimised scheduler

XLA:CPU's default scheduler is "concurrency optimised": it runs independent thunks at
the same time.  On 2 cores it sometimes schedules a hand-differentiated program (same
HLO operations as jax.grad's) so that thunks contend, and the same dot runs several
times slower.  ``--xla-cpu-scheduler memory`` runs the comparison with XLA's
memory-optimised scheduler, which executes the program in order; both tables are kept
in bench/results.md.
"""

import os
import sys as _sys

_SCHEDULERS = {"default": "", "memory": "--xla_cpu_scheduler_type=CPU_SCHEDULER_TYPE_MEMORY_OPTIMIZED"}
if "--xla-cpu-scheduler" in _sys.argv:  # must be set before JAX starts its backend
  _choice = _sys.argv[_sys.argv.index("--xla-cpu-scheduler") + 1]
  os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " " + _SCHEDULERS.get(_choice, "")).strip()


import argparse
import math
import statistics
import sys

import jax
import jax.numpy as jnp

import optax

import handgrad as hg
from handgrad import train

sys.path.insert(0, __file__.rsplit("/", 1)[0])
from _common import (compile_seconds_and_memory, losses_agree,  # noqa: E402
                     markdown_table, paired_ratio, sgd_step_factory, time_training_steps,
                     write_section)

LR = 0.01


# --- models ---------------------------------------------------------------------------

def init_mlp(key, dims=(784, 256, 128, 10)):
  params = []
  for k, (m, n) in zip(jax.random.split(key, len(dims) - 1), zip(dims[:-1], dims[1:])):
    params.append({"W": jax.random.normal(k, (m, n)) * math.sqrt(2 / m), "b": jnp.zeros(n)})
  return params


def mlp_loss_ops(params, x, y):
  h = x
  for layer in params[:-1]:
    h = hg.ops.relu(hg.ops.dense(h, layer["W"], layer["b"]))
  return hg.ops.softmax_cross_entropy(hg.ops.dense(h, params[-1]["W"], params[-1]["b"]), y)


def mlp_loss_jnp(params, x, y):
  h = x
  for layer in params[:-1]:
    h = jax.nn.relu(h @ layer["W"] + layer["b"])
  logits = h @ params[-1]["W"] + params[-1]["b"]
  return -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(logits), y[:, None], axis=1))


def init_transformer(key, *, blocks=4, dim=128, hidden=512):
  def dense(k, m, n):
    return {"W": jax.random.normal(k, (m, n)) / math.sqrt(m), "b": jnp.zeros(n)}

  params = []
  for k in jax.random.split(key, blocks):
    ks = jax.random.split(k, 6)
    params.append({
        "ln1": {"g": jnp.ones(dim), "b": jnp.zeros(dim)},
        "ln2": {"g": jnp.ones(dim), "b": jnp.zeros(dim)},
        "q": dense(ks[0], dim, dim), "k": dense(ks[1], dim, dim), "v": dense(ks[2], dim, dim),
        "o": dense(ks[3], dim, dim), "ff1": dense(ks[4], dim, hidden), "ff2": dense(ks[5], hidden, dim),
    })
  return params


def transformer_loss(params, x, target, heads=4):
  b, t, d = x.shape
  for p in params:
    h = hg.ops.layer_norm(x, p["ln1"]["g"], p["ln1"]["b"])
    split = lambda z: z.reshape(b, t, heads, d // heads)
    q, k, v = (split(hg.ops.dense(h, p[n]["W"], p[n]["b"])) for n in "qkv")
    a = hg.ops.attention(q, k, v, causal=True).reshape(b, t, d)
    x = x + hg.ops.dense(a, p["o"]["W"], p["o"]["b"])
    h = hg.ops.layer_norm(x, p["ln2"]["g"], p["ln2"]["b"])
    h = jax.nn.gelu(hg.ops.dense(h, p["ff1"]["W"], p["ff1"]["b"]))
    x = x + hg.ops.dense(h, p["ff2"]["W"], p["ff2"]["b"])
  return hg.ops.mse(x, target)


def cnn_loss_ops(params, x, y):
  return hg.ops.softmax_cross_entropy(hg.nn.cnn.apply(params, x), y)


def cnn_loss_jnp(params, x, y):
  h = x.reshape(x.shape[0], 28, 28, 1)
  for p in params["blocks"]:
    h = jax.lax.conv_general_dilated(h, p["W"], (1, 1), "SAME",
                                     dimension_numbers=("NHWC", "HWIO", "NHWC")) + p["b"]
    h = jax.lax.reduce_window(jax.nn.relu(h), -jnp.inf, jax.lax.max, (1, 2, 2, 1),
                              (1, 2, 2, 1), "VALID")
  logits = h.reshape(h.shape[0], -1) @ params["head"]["W"] + params["head"]["b"]
  return -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(logits), y[:, None], axis=1))


# --- steps ----------------------------------------------------------------------------

def train_step_factory(backend: str):
  """Fresh ``make_train_step`` steps (adam, guarded) as ``step(state, batch) -> (state,
  loss)`` for ``time_training_steps``; each call builds new jitted functions."""
  tx = optax.adam(1e-3)
  loss = train.classification_loss(hg.nn.mlp.apply)

  def make():
    step = train.make_train_step(loss, tx, backend=backend)

    def run(state, batch):
      state, metrics = step(state, batch)
      return state, metrics["loss"]
    run.lower = step.lower  # for the compile time and memory
    return run
  return make, tx


def bench_case(name, loss, params, batch, *, repeats, iters, makers=None):
  makers = makers or {"hand": sgd_step_factory(loss, hg.value_and_grad, LR),
                      "jax": sgd_step_factory(loss, jax.value_and_grad, LR)}
  # Trace+compile time and memory of fresh jit objects, interleaved over 3 rounds.
  compile_s = {k: [] for k in makers}
  temp = {}
  for _ in range(3):
    for k, make in makers.items():
      s, temp[k] = compile_seconds_and_memory(make, (params, *batch))
      compile_s[k].append(s)
  compile_med = {k: sorted(v)[1] for k, v in compile_s.items()}

  samples, losses = time_training_steps({k: make() for k, make in makers.items()}, params,
                                        batch, repeats=repeats, iters=iters)
  s_hand, s_jax = samples["hand"], samples["jax"]
  t_hand, t_jax = statistics.median(s_hand), statistics.median(s_jax)
  return {
      "case": name,
      "hand ms": f"{t_hand * 1e3:.3f}", "jax ms": f"{t_jax * 1e3:.3f}",
      "time ratio": f"{paired_ratio(s_hand, s_jax):.3f}",
      "temp MiB hand/jax": f"{temp['hand'] / 2**20:.2f} / {temp['jax'] / 2**20:.2f}",
      "memory ratio": f"{temp['hand'] / max(temp['jax'], 1):.3f}",
      "compile s hand/jax": f"{compile_med['hand']:.2f} / {compile_med['jax']:.2f}",
      "compile ratio": f"{compile_med['hand'] / compile_med['jax']:.2f}",
      "loss agrees": ("yes" if losses_agree(losses, "jax")
                      else f"NO ({losses['hand']} vs {losses['jax']})"),
  }


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--quick", action="store_true", help="fewer repeats and batch sizes")
  parser.add_argument("--no-write", action="store_true", help="print only; leave results.md")
  parser.add_argument("--models", choices=["all", "mlp+transformer", "cnn"], default="all",
                      help="which rows to run (cnn rows go to their own section)")
  parser.add_argument("--xla-cpu-scheduler", choices=sorted(_SCHEDULERS), default="default",
                      help="XLA:CPU scheduler (set through XLA_FLAGS at start-up)")
  args = parser.parse_args(argv)
  repeats = 5 if args.quick else 15
  key = jax.random.key(0)
  kp, kx, ky = jax.random.split(key, 3)
  if args.models in ("all", "mlp+transformer"):
    rows = mlp_and_transformer_rows(kp, kx, ky, repeats, args.quick)
    write_rows(rows, "Engine: jitted training step, handgrad.grad vs jax.grad (bench/engine.py)",
               args, note=ENGINE_NOTE)
  if args.models in ("all", "cnn"):
    rows = cnn_rows(kp, kx, ky, repeats)
    write_rows(rows, "CNN: jitted training step, handgrad.grad vs jax.grad "
               "(bench/engine.py --models cnn)", args, note=CNN_NOTE)


def mlp_and_transformer_rows(kp, kx, ky, repeats, quick):
  rows = []
  batch_sizes = (32, 1024) if quick else (32, 128, 1024, 8192)
  mlp = init_mlp(kp)
  for variant, loss in (("ops", mlp_loss_ops), ("jnp", mlp_loss_jnp)):
    for bs in batch_sizes:
      x = jax.random.uniform(kx, (bs, 784))
      y = jax.random.randint(ky, (bs,), 0, 10)
      iters = max(3, min(200, 200_000 // (bs * 10)))
      row = bench_case(f"mlp/{variant} batch {bs}", loss, mlp, (x, y), repeats=repeats, iters=iters)
      print(row, flush=True)
      rows.append(row)
  for bs in (32, 1024) if quick else (32, 128, 1024):
    (hand, tx), (jax_step, _) = train_step_factory("hand"), train_step_factory("jax")
    state = train.TrainState.create(hg.nn.mlp.init([784, 256, 128, 10], key=kp), tx, key=0)
    x = jax.random.uniform(kx, (bs, 784))
    y = jax.random.randint(ky, (bs,), 0, 10)
    batch = hg.data.Batch(x, y, jnp.ones(bs, bool))
    iters = max(3, min(200, 200_000 // (bs * 10)))
    row = bench_case(f"mlp/train step (adam, guarded) batch {bs}", None, state, (batch,),
                     repeats=repeats, iters=iters, makers={"hand": hand, "jax": jax_step})
    print(row, flush=True)
    rows.append(row)
  tf = init_transformer(kp)
  x = jax.random.normal(kx, (16, 64, 128))
  target = jax.random.normal(ky, (16, 64, 128))
  row = bench_case("transformer 4 blocks (16×64×128)", transformer_loss, tf, (x, target),
                   repeats=repeats, iters=5)
  print(row, flush=True)
  rows.append(row)
  return rows


def cnn_rows(kp, kx, ky, repeats):
  rows = []
  params = hg.nn.cnn.init(key=kp)
  for variant, loss in (("ops", cnn_loss_ops), ("jnp", cnn_loss_jnp)):
    for bs in (32, 128):
      x = jax.random.uniform(kx, (bs, 784))
      y = jax.random.randint(ky, (bs,), 0, 10)
      row = bench_case(f"cnn/{variant} batch {bs}", loss, params, (x, y), repeats=repeats,
                       iters=max(5, 640 // bs))
      print(row, flush=True)
      rows.append(row)
  return rows


ENGINE_NOTE = (
    "Like with like: the `mlp/ops`, `mlp/jnp` and transformer rows are a bare SGD step "
    "(value_and_grad and the update, no guard) on both sides; the `mlp/train step` rows are "
    "`handgrad.train.make_train_step(classification_loss(nn.mlp.apply), optax.adam(1e-3), "
    "backend=\"hand\")` against `backend=\"jax\"`: the same global gradient norm, the same "
    "guard that skips a non-finite update and the same adam on both sides, only the gradient "
    "differs.")


CNN_NOTE = (
    "The convolutions' backward passes compile to the same HLO as jax.grad's (two "
    "convolutions each). The difference is max pooling: jax.grad's backward is "
    "select_and_scatter_add, which XLA:CPU runs slowly (alone, 2×2 pooling of 128×28×28×16: 111 ms against 8 ms by hand); "
    "the hand rule compares the 4 strided views of each window with the max and routes the "
    "cotangent to the first match, elementwise work that XLA fuses.")


def write_rows(rows, title, args, note=""):
  headers = list(rows[0])
  table = markdown_table(headers, [[r[h] for h in headers] for r in rows])
  print("\n" + table)
  if not args.no_write:
    if args.xla_cpu_scheduler != "default":
      title += f", XLA:CPU {args.xla_cpu_scheduler}-optimised scheduler"
    load = ", ".join(f"{v:.1f}" for v in os.getloadavg())
    write_section(title, table + f"\n\nXLA_FLAGS=`{os.environ.get('XLA_FLAGS', '')}`; load "
                  f"average at the end {load} (1, 5, 15 min). "
                  "Targets: time ratio ≤ 1.05, memory ratio ≤ 1.05, compile ratio ≤ 2."
                  + (f"\n\n{note}" if note else ""))


if __name__ == "__main__":
  main()
