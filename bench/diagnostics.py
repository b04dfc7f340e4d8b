"""In-jit diagnostics versus the plain hand training step: gradient_stats, trace_backward,
and the monitored training step of ``make_train_step`` / ``handgrad train --monitor N``.

First table: each variant is one jitted SGD step on the seed's MLP [784, 256, 128, 10]
(layer-level ops) with ``handgrad.value_and_grad``, returning its diagnostics next to
the updated parameters:

* ``plain``: the step alone (the reference);
* ``stats two-pass``: plus an older ``gradient_stats`` (two-pass variance, one
  finiteness count per leaf, written out here for comparison);
* ``stats, two conds per leaf``: plus the previous ``gradient_stats`` (Σg, Σg², max|g|
  per leaf, and per leaf one ``lax.cond`` for the two-pass variance and one for the
  finiteness count; written out here);
* ``stats``: plus ``handgrad.inspect.gradient_stats`` (the same three reductions, one
  ``lax.cond`` for the whole tree);
* ``floor: one Σg² per leaf``: plus a single reduction per leaf, the least any
  statistic of every gradient element costs (one read of the gradients);
* ``trace wrt_inputs=False`` / ``trace wrt_inputs=True``: ``trace_backward`` in place
  of ``value_and_grad``, returning the trace's norms;
* ``adam``, ``adam + stats``: the same with optax.adam instead of SGD.

Second table: the training step itself, ``handgrad.train.make_train_step`` with adam
(the CLI's default) on ``handgrad.nn.mlp`` [784, 256, 128, 10], which also takes the
global gradient norm and guards the update against non-finite values:

* ``plain``: ``monitor=False``;
* ``monitor every 1`` / ``every 10`` / ``every 50``: ``monitor=True, monitor_every=k``
  (``handgrad train --monitor k``): statistics on one step in k, the host choosing
  between the plain and the monitored program;
* ``monitor every 10, lax.cond``: the same choice made inside one program
  (``jax.jit`` around ``make_train_step(..., jit=False)``, whose traced step count
  makes it use ``gradient_stats_every``);
* ``floor: Σg and max|g| per leaf``: a monitor computing only those two reductions
  (Σg² is already there: the step's global norm computes it).

Each round runs 50 steps of every variant, so the every-k rows hold exactly 50/k
monitored steps.  Compile time: trace + lower + compile of every program the step
holds (two for ``every 10``/``every 50``).

Interleaved rounds (order alternating), ratio = median over rounds of the per-round
ratio to the table's reference.  Target: ≤ 1.03 for the monitor and
``trace_backward(wrt_inputs=False)``.

    python bench/diagnostics.py          # writes its section of bench/results.md
    python bench/diagnostics.py --batch 1024 --repeats 21   # its own section
    python bench/diagnostics.py --quick
"""

import argparse
import os
import statistics
import sys
import time

import jax
import jax.numpy as jnp
import optax

import handgrad as hg
from handgrad import inspect as hgi
from handgrad import train
from handgrad._src.inspect.health import GradStats
from handgrad._src.inspect.monitor import EveryKSteps
from handgrad._src.inspect._tree import named_leaves, upcast

sys.path.insert(0, __file__.rsplit("/", 1)[0])
from _common import interleaved_samples, markdown_table, paired_ratio, write_section  # noqa: E402
from engine import init_mlp, mlp_loss_ops  # noqa: E402

LR = 0.01
WIRED_ITERS = 50


def two_pass_stats(grads):
  """The previous gradient_stats: two-pass variance and a finiteness count per leaf."""
  def leaf(g):
    g = g.astype(jnp.float32)
    n = g.size
    mean = jnp.mean(g)
    std = jnp.sqrt(jnp.sum(jnp.square(g - mean)) / (n - 1))
    return (mean, std, jnp.max(jnp.abs(g)), jnp.sqrt(jnp.sum(jnp.square(g))),
            jnp.mean(jnp.isfinite(g).astype(g.dtype)))
  return [leaf(g) for g in jax.tree.leaves(grads)]


def per_leaf_cond_stats(grads):
  """The previous gradient_stats: Σg, Σg², max|g| per leaf, two lax.conds per leaf."""
  def leaf(g):
    g = upcast(jnp.asarray(g))
    n, dt = g.size, g.dtype
    flat = jnp.reshape(g, (n,))
    total, sum_sq = jnp.sum(flat), jnp.sum(flat * flat)
    max_abs = jnp.where(jnp.isnan(sum_sq), jnp.nan, jnp.max(jnp.abs(flat)))
    mean = total / n
    finite_sums = jnp.isfinite(sum_sq)
    one_pass = sum_sq - total * mean
    keep = (one_pass >= 1e-2 * sum_sq) | ~finite_sums
    centred = jax.lax.cond(keep, lambda x: one_pass,
                           lambda x: jnp.sum(jnp.square(x - jnp.mean(x))), flat)
    std = jnp.sqrt(jnp.maximum(centred, 0) / (n - 1))
    finite = jax.lax.cond(finite_sums, lambda x: jnp.ones((), dt),
                          lambda x: jnp.mean(jnp.isfinite(x).astype(dt)), flat)
    return GradStats(mean, std, max_abs, jnp.sqrt(sum_sq), finite)
  return {path: leaf(g) for path, g in named_leaves(grads)}


def sum_and_max(grads):
  """The floor of the statistics in a step that already has Σg² (its global norm)."""
  return {path: (jnp.sum(g), jnp.max(jnp.abs(g))) for path, g in named_leaves(grads)}


def sgd(params, grads):
  return jax.tree.map(lambda p, g: p - LR * g, params, grads)


def steps():
  vg = hg.value_and_grad(mlp_loss_ops)
  adam = optax.adam(1e-3)

  def plain(params, step, x, y):
    loss, g = vg(params, x, y)
    return sgd(params, g), loss

  def with_stats(fn):
    def step_fn(params, step, x, y):
      loss, g = vg(params, x, y)
      return sgd(params, g), (loss, fn(g, step))
    return step_fn

  def with_trace(wrt_inputs):
    def step_fn(params, step, x, y):
      g, trace = hgi.trace_backward(mlp_loss_ops, params, x, y, wrt_inputs=wrt_inputs)
      return sgd(params, g), (trace.loss, trace.grad_out, trace.grad_in)
    return step_fn

  def adam_step(stats):
    def step_fn(state, step, x, y):
      params, opt = state
      loss, g = vg(params, x, y)
      updates, opt = adam.update(g, opt, params)
      out = (optax.apply_updates(params, updates), opt)
      return out, ((loss, hgi.gradient_stats(g)) if stats else loss)
    return step_fn

  sgd_steps = {
      "plain": plain,
      "stats two-pass": with_stats(lambda g, s: two_pass_stats(g)),
      "stats, two conds per leaf": with_stats(lambda g, s: per_leaf_cond_stats(g)),
      "stats": with_stats(lambda g, s: hgi.gradient_stats(g)),
      "floor: one Σg² per leaf": with_stats(
          lambda g, s: [jnp.sum(x * x) for x in jax.tree.leaves(g)]),
      "trace wrt_inputs=False": with_trace(False),
      "trace wrt_inputs=True": with_trace(True),
  }
  return sgd_steps, {"adam": adam_step(False), "adam + stats": adam_step(True)}, adam


def run(fns: dict, state0, x, y, repeats: int, iters: int):
  jitted = {k: jax.jit(f, donate_argnums=0) for k, f in fns.items()}
  state = {k: jax.tree.map(jnp.copy, state0) for k in fns}
  for k, f in jitted.items():
    state[k], _ = f(state[k], jnp.int32(0), x, y)

  def thunk(k):
    def go():
      state[k], out = jitted[k](state[k], jnp.int32(0), x, y)
      return out
    return go

  samples = interleaved_samples([thunk(k) for k in fns], repeats=repeats, iters=iters)
  return dict(zip(fns, samples))


# --- the wired training step: make_train_step(monitor=True, monitor_every=k) ----------

def wired_steps(tx):
  loss = train.classification_loss(hg.nn.mlp.apply)

  def make(**kw):
    return lambda: train.make_train_step(loss, tx, **kw)

  def cond_step():
    return jax.jit(train.make_train_step(loss, tx, monitor=True, monitor_every=10, jit=False),
                   donate_argnums=0)

  return {
      "plain": make(),
      "monitor every 1": make(monitor=True),
      "monitor every 10": make(monitor=True, monitor_every=10),
      "monitor every 50": make(monitor=True, monitor_every=50),
      "monitor every 10, lax.cond": cond_step,
      "floor: Σg and max|g| per leaf": make(monitor=sum_and_max),
  }


def compile_seconds(make_step, state, batch) -> float:
  """Trace + lower + compile of every program a freshly made step holds."""
  step = make_step()
  programs = [step.plain, step.monitored] if isinstance(step, EveryKSteps) else [step]
  t0 = time.perf_counter()
  for p in programs:
    p.lower(state, batch).compile()
  return time.perf_counter() - t0


def run_wired(makers: dict, state0, batch, repeats: int):
  steps = {k: m() for k, m in makers.items()}
  state = {k: jax.tree.map(jnp.copy, state0) for k in steps}
  for k, step in steps.items():  # compile every program the step holds
    for _ in range(WIRED_ITERS):
      state[k], m = step(state[k], batch)

  def thunk(k):
    def go():
      state[k], metrics = steps[k](state[k], batch)
      return metrics["loss"]
    return go

  samples = interleaved_samples([thunk(k) for k in steps], repeats=repeats,
                                iters=WIRED_ITERS)
  # Each variant again, interleaved with the plain step alone: with six programs and six
  # states in turn, each round's caches hold whatever ran before, and that moved the
  # one-in-50 monitor from 1.006× (two at a time) to 1.02–1.04× (all six).
  pairs = {k: paired_ratio(*interleaved_samples([thunk(k), thunk("plain")], repeats=repeats,
                                                 iters=WIRED_ITERS))
           for k in steps if k != "plain"}
  return dict(zip(steps, samples)), pairs


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--quick", action="store_true")
  parser.add_argument("--no-write", action="store_true")
  parser.add_argument("--batch", type=int, default=128)
  parser.add_argument("--repeats", type=int, default=None, help="rounds (default 61)")
  args = parser.parse_args(argv)
  repeats = args.repeats or (7 if args.quick else 61)
  kp, kx, ky = jax.random.split(jax.random.key(0), 3)
  params = init_mlp(kp)
  x = jax.random.normal(kx, (args.batch, 784))
  y = jax.random.randint(ky, (args.batch,), 0, 10)
  sgd_steps, adam_steps, adam = steps()
  tx = optax.adam(1e-3)
  state0 = train.TrainState.create(hg.nn.mlp.init([784, 256, 128, 10], key=kp), tx, key=0)
  batch = hg.data.Batch(x, y, jnp.ones(args.batch, bool))
  wired = wired_steps(tx)
  load = os.getloadavg()
  s_sgd = run(sgd_steps, params, x, y, repeats, 20)
  s_adam = run(adam_steps, (params, adam.init(params)), x, y, repeats, 20)
  s_wired, pairwise = run_wired(wired, state0, batch, repeats)
  compile_s = {k: statistics.median(compile_seconds(m, state0, batch) for _ in range(3))
               for k, m in wired.items()}
  load_end = os.getloadavg()
  rows = []
  for table, ref in ((s_sgd, "plain"), (s_adam, "adam")):
    for k, s in table.items():
      r = paired_ratio(s, table[ref])
      goal = "—"
      if k in ("stats", "trace wrt_inputs=False", "adam + stats"):
        goal = "yes" if r <= 1.03 else "no"
      rows.append([k, f"{statistics.median(s) * 1e3:.3f}", f"{r:.3f}", goal])
  body = markdown_table(["step", "ms", "ratio to plain/adam", "≤ 1.03"], rows)
  body += (f"\n\nSeed MLP [784, 256, 128, 10] (layer-level ops), batch {args.batch}; "
           f"{len(s_sgd['plain'])} interleaved rounds of 20 steps each.")
  rows = []
  for k, s in s_wired.items():
    r = paired_ratio(s, s_wired["plain"])
    pair = pairwise.get(k, 1.0)
    goal = "yes" if pair <= 1.03 else "no"
    rows.append([k, f"{statistics.median(s) * 1e3:.3f}", f"{r:.3f}", f"{pair:.3f}",
                 f"{compile_s[k]:.2f}", f"{compile_s[k] / compile_s['plain']:.2f}",
                 "—" if k == "plain" else goal])
  body += "\n\n" + markdown_table(
      ["make_train_step (adam)", "ms / step", "ratio to plain, all interleaved",
       "ratio to plain, pairwise", "compile s", "compile ratio", "≤ 1.03 (pairwise)"], rows)
  body += (f"\n\n`handgrad.nn.mlp` [784, 256, 128, 10], batch {args.batch}, "
           f"`make_train_step(classification_loss(mlp.apply), optax.adam(1e-3), "
           f"monitor=..., monitor_every=k)`; {len(s_wired['plain'])} interleaved rounds of "
           f"{WIRED_ITERS} steps each, all six steps in each round, then each step with the "
           f"plain one alone (pairwise; the goal is read there); compile time median of 3. Load average (1 min) "
           f"{load[0]:.1f} at start, {load_end[0]:.1f} at end.")
  print(body)
  if not args.no_write:
    write_section(f"In-jit diagnostics, batch {args.batch} (bench/diagnostics.py)", body)


if __name__ == "__main__":
  main()
