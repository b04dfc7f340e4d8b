"""Shared benchmark plumbing: interleaved timing, compiled memory, results.md sections.

Absolute times on shared machines drift; ratios measured side by side in one run hold.
So every benchmark times its variants interleaved (A, B, A, B, ...) and reports the
ratio of medians.
"""

from __future__ import annotations

import datetime
import pathlib
import platform
import random
import statistics
import time
from typing import Callable, Sequence

import jax
import jax.numpy as jnp

RESULTS = pathlib.Path(__file__).with_name("results.md")


def device_description() -> str:
  d = jax.devices()[0]
  kind = getattr(d, "device_kind", d.platform)
  return f"{d.platform} ({kind}), {jax.device_count()} device(s), jax {jax.__version__}, " \
         f"{platform.machine()}"


def block(x):
  return jax.block_until_ready(x)


def interleaved_samples(steps: Sequence[Callable[[], object]], *, repeats: int,
                        iters: int) -> list[list[float]]:
  """Seconds per call of each thunk, one sample per round, timed interleaved.

  Each round times ``iters`` back-to-back calls of every thunk in turn, in an order
  drawn afresh each round (seeded) whose first thunk is never the previous round's
  last.  With more than two variants, a fixed forward/backward alternation lets the
  first and last variants run twice in a row across rounds, on warm caches, while the
  others always follow another program.  Even so, each variant's time includes the
  cache state the others leave: with six steps of the MLP in turn, a step measured at
  1.006× another alone read 1.02–1.04×; compare two at a time where it matters
  (bench/diagnostics.py does).  Thunks must already be compiled (call each once first).
  """
  samples: list[list[float]] = [[] for _ in steps]
  rng = random.Random(0)
  last = None
  for _ in range(repeats):
    order = list(range(len(steps)))
    rng.shuffle(order)
    if len(order) > 1 and order[0] == last:
      order.append(order.pop(0))
    last = order[-1]
    for i in order:
      t0 = time.perf_counter()
      for _ in range(iters):
        out = steps[i]()
      block(out)
      samples[i].append((time.perf_counter() - t0) / iters)
  return samples


def interleaved_step_times(steps: Sequence[Callable[[], object]], *, repeats: int,
                           iters: int) -> list[float]:
  """Median seconds per call of each thunk over interleaved rounds."""
  return [statistics.median(s) for s in interleaved_samples(steps, repeats=repeats, iters=iters)]


def paired_ratio(a: Sequence[float], b: Sequence[float]) -> float:
  """Median over rounds of a/b: samples from the same round share the machine's state,
  so the per-round ratio cancels drift that a ratio of medians would not."""
  return statistics.median(x / y for x, y in zip(a, b))


def sgd_step_factory(loss: Callable, grad_fn: Callable, lr: float) -> Callable[[], Callable]:
  """A factory of fresh jitted SGD steps ``step(params, *batch) -> (params, loss)``
  that donate the parameters.  ``grad_fn`` is ``jax.value_and_grad`` or
  ``handgrad.value_and_grad``.  Each call returns a new function object, so JAX's
  tracing and compilation caches cannot hide the trace+compile cost."""
  def make():
    def step(params, *batch):
      loss_value, grads = grad_fn(loss)(params, *batch)
      return jax.tree.map(lambda p, g: p - lr * g, params, grads), loss_value
    return jax.jit(step, donate_argnums=0)
  return make


def time_training_steps(steps: dict[str, Callable], params, batch: tuple, *, repeats: int,
                        iters: int) -> tuple[dict[str, list[float]], dict[str, float]]:
  """Per-round seconds of each donating step (interleaved) and its first loss.

  Every step gets its own copy of ``params`` (they are donated) and is compiled and
  warmed up by a first call, whose loss is returned for the agreement check.
  """
  state = {k: jax.tree.map(jnp.copy, params) for k in steps}
  losses = {}
  for k, step in steps.items():
    state[k], loss_value = step(state[k], *batch)
    losses[k] = float(loss_value)

  def thunk(k):
    def run():
      state[k], loss_value = steps[k](state[k], *batch)
      return loss_value
    return run

  samples = interleaved_samples([thunk(k) for k in steps], repeats=repeats, iters=iters)
  return dict(zip(steps, samples)), losses


def losses_agree(losses: dict[str, float], reference: str, rtol: float = 1e-5) -> bool:
  """Whether every loss is within ``rtol`` (relative, at least absolute) of the reference's."""
  ref = losses[reference]
  return all(abs(v - ref) <= rtol * max(1.0, abs(ref)) for v in losses.values())


def compile_seconds_and_memory(make_fn: Callable[[], Callable], args: tuple) -> tuple[float, int]:
  """Trace + compile time of a freshly built jitted function, and its temp memory."""
  fn = make_fn()
  t0 = time.perf_counter()
  compiled = fn.lower(*args).compile()
  seconds = time.perf_counter() - t0
  mem = compiled.memory_analysis()
  temp = int(getattr(mem, "temp_size_in_bytes", 0)) if mem is not None else 0
  return seconds, temp


def write_section(title: str, body: str) -> None:
  """Replaces (or appends) the section ``## title`` in bench/results.md.

  Off CPU the device kind joins the title (``..., on NVIDIA H200``), so an accelerator
  run adds its own sections next to the CPU figures instead of replacing them."""
  d = jax.devices()[0]
  if d.platform != "cpu":
    title = f"{title}, on {getattr(d, 'device_kind', d.platform)}"
  text = RESULTS.read_text() if RESULTS.exists() else "# Benchmark results\n\n" \
      "Ratios are hand engine / jax.grad, measured side by side in one run " \
      "(interleaved repeats, medians). Regenerate with `make bench`.\n"
  header = f"## {title}"
  stamp = datetime.date.today().isoformat()
  section = f"{header}\n\n_{stamp}, {device_description()}_\n\n{body.rstrip()}\n"
  parts = text.split("\n## ")
  kept = [parts[0].rstrip() + "\n"]
  replaced = False
  for part in parts[1:]:
    if part.startswith(title + "\n"):
      kept.append(section)
      replaced = True
    else:
      kept.append("## " + part.rstrip() + "\n")
  if not replaced:
    kept.append(section)
  RESULTS.write_text("\n".join(kept))


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
  lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
  lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
  return "\n".join(lines)
