"""In-jit diagnostics versus the plain hand training step: gradient_stats, trace_backward.

Each variant is one jitted SGD step on the seed's MLP [784, 256, 128, 10] (layer-level
ops) at batch 128, with ``handgrad.value_and_grad``, returning its diagnostics next to
the updated parameters:

* ``plain``: the step alone (the reference);
* ``stats two-pass``: plus the previous ``gradient_stats`` (two-pass variance, one
  finiteness count per leaf, written out here for comparison);
* ``stats``: plus ``handgrad.inspect.gradient_stats`` (independent reductions, the
  finiteness count only under a ``lax.cond`` when something is not finite);
* ``floor: one Σg² per leaf``: plus a single reduction per leaf, the least any
  statistic of every gradient element costs (one read of the gradients);
* ``stats every 10``: plus ``gradient_stats_every(grads, step, 10)`` (a ``lax.cond``
  on the step counter; the figure is the mean over 10 consecutive steps);
* ``stats every 10, separate step``: the plain step on 9 steps in 10 and the ``stats``
  step on the 10th (the host chooses; two compiled programs);
* ``trace wrt_inputs=False`` / ``trace wrt_inputs=True``: ``trace_backward`` in place
  of ``value_and_grad``, returning the trace's norms;
* ``adam``, ``adam + stats``: the same with optax.adam instead of SGD, as in a
  monitored ``make_train_step``.

Interleaved rounds (order alternating), ratio = median over rounds of the per-round
ratio to ``plain`` (``adam`` for the adam rows).  Target: ≤ 1.03 for the monitor and
``trace_backward(wrt_inputs=False)``.

    python bench/diagnostics.py          # writes its section of bench/results.md
    python bench/diagnostics.py --quick
"""

import argparse
import os
import statistics
import sys

import jax
import jax.numpy as jnp
import optax

import handgrad as hg
from handgrad import inspect as hgi
from handgrad._src.inspect import monitor

sys.path.insert(0, __file__.rsplit("/", 1)[0])
from _common import interleaved_samples, markdown_table, paired_ratio, write_section  # noqa: E402
from engine import init_mlp, mlp_loss_ops  # noqa: E402

LR = 0.01
EVERY = 10


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
      "stats": with_stats(lambda g, s: hgi.gradient_stats(g)),
      "floor: one Σg² per leaf": with_stats(
          lambda g, s: [jnp.sum(x * x) for x in jax.tree.leaves(g)]),
      f"stats every {EVERY}": with_stats(lambda g, s: monitor.gradient_stats_every(g, s, EVERY)),
      f"stats every {EVERY}, separate step": (plain, with_stats(lambda g, s: hgi.gradient_stats(g))),
      "trace wrt_inputs=False": with_trace(False),
      "trace wrt_inputs=True": with_trace(True),
  }
  return sgd_steps, {"adam": adam_step(False), "adam + stats": adam_step(True)}, adam


def run(fns: dict, state0, x, y, repeats: int, iters: int):
  """A value of ``fns`` is a step, or a pair (plain step, monitored step): the host
  runs the monitored one on steps ``k % EVERY == 0`` (two compiled programs)."""
  jitted = {k: tuple(jax.jit(g, donate_argnums=0) for g in (f if isinstance(f, tuple) else (f,)))
            for k, f in fns.items()}
  state = {k: jax.tree.map(jnp.copy, state0) for k in fns}
  counter = {k: 0 for k in fns}
  for k, fs in jitted.items():
    for f in fs:
      state[k], _ = f(state[k], jnp.int32(0), x, y)

  def thunk(k):
    def go():
      counter[k] += 1
      fs = jitted[k]
      f = fs[1] if len(fs) == 2 and counter[k] % EVERY == 0 else fs[0]
      state[k], out = f(state[k], jnp.int32(counter[k]), x, y)
      return out
    return go

  samples = interleaved_samples([thunk(k) for k in fns], repeats=repeats, iters=iters)
  return dict(zip(fns, samples))


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--quick", action="store_true")
  parser.add_argument("--no-write", action="store_true")
  parser.add_argument("--batch", type=int, default=128)
  args = parser.parse_args(argv)
  repeats = 7 if args.quick else 61
  kp, kx, ky = jax.random.split(jax.random.key(0), 3)
  params = init_mlp(kp)
  x = jax.random.normal(kx, (args.batch, 784))
  y = jax.random.randint(ky, (args.batch,), 0, 10)
  sgd_steps, adam_steps, adam = steps()
  load = os.getloadavg()
  s_sgd = run(sgd_steps, params, x, y, repeats, EVERY * 2)
  s_adam = run(adam_steps, (params, adam.init(params)), x, y, repeats, EVERY * 2)
  load_end = os.getloadavg()
  rows = []
  for table, ref in ((s_sgd, "plain"), (s_adam, "adam")):
    for k, s in table.items():
      r = paired_ratio(s, table[ref])
      goal = "—"
      if k in ("stats", "trace wrt_inputs=False", "adam + stats", f"stats every {EVERY}",
               f"stats every {EVERY}, separate step"):
        goal = "yes" if r <= 1.03 else "no"
      rows.append([k, f"{statistics.median(s) * 1e3:.3f}", f"{r:.3f}", goal])
  body = markdown_table(["step", "ms", f"ratio to {'plain'}/adam", "≤ 1.03"], rows)
  body += (f"\n\nSeed MLP [784, 256, 128, 10] (layer-level ops), batch {args.batch}; "
           f"{len(s_sgd['plain'])} interleaved rounds of {EVERY * 2} steps each. "
           f"Load average (1 min) {load[0]:.1f} at start, {load_end[0]:.1f} at end.")
  print(body)
  if not args.no_write:
    write_section(f"In-jit diagnostics, batch {args.batch} (bench/diagnostics.py)", body)


if __name__ == "__main__":
  main()
