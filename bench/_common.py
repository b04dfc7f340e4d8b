"""Shared benchmark plumbing: interleaved timing, compiled memory, results.md sections.

Absolute times on shared machines drift; ratios measured side by side in one run hold.
So every benchmark times its variants interleaved (A, B, A, B, ...) and reports the
ratio of medians.
"""

from __future__ import annotations

import datetime
import pathlib
import platform
import statistics
import time
from typing import Callable, Sequence

import jax

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

  Each round times ``iters`` back-to-back calls of every thunk in turn, alternating
  the order from round to round so that neither variant always runs first.  Thunks
  must already be compiled (call each once first).
  """
  samples: list[list[float]] = [[] for _ in steps]
  for r in range(repeats):
    order = list(range(len(steps)))
    if r % 2:
      order.reverse()
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
  """Replaces (or appends) the section ``## title`` in bench/results.md."""
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
