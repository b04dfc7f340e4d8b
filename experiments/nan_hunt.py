"""Where was the NaN born?  Six planted faults, one healthy control, three tools.

Each case is a real model (handgrad.nn MLPs and a transformer classifier) on random
data with one planted fault (its line carries a ``# FAULT`` comment):

1. ``sqrt_distance``: a contrastive embedding loss, sqrt of a squared distance that
   reaches 0 (an example paired with itself): finite forward, NaN gradient;
2. ``where_trap``: a "safe" log of ReLU outputs, ``jnp.where(p > 0, log(p), 0)``:
   finite loss, NaN gradient (0 · inf on the discarded branch);
3. ``log_softmax``: log of a softmax whose probabilities underflow to 0;
4. ``batch_norm_eps0``: a hand-written batch norm with eps = 0 over a feature that is
   constant in the batch (a dead ReLU unit);
5. ``fp16_overflow``: a float16 MLP with a loss summed over the batch, under loss
   scaling 2¹⁵: its backward overflows float16;
6. ``label_range``: cross-entropy with a label equal to the class count;
7. ``healthy``: a causal transformer classifier (its attention mask holds -inf) whose
   loss and gradients are finite.

For each: ``handgrad.inspect.find_nonfinite``'s culprit, line and diagnosis, then what
``jax_debug_nans`` and ``jax.experimental.checkify`` (``float_checks``) say about
``jax.grad`` of the same loss.

    python experiments/nan_hunt.py --quick      # a few seconds per case on a CPU
"""

from __future__ import annotations

import argparse
import dataclasses
import pathlib
import re
from typing import Any, Callable

import jax
import jax.numpy as jnp
from jax.experimental import checkify

import handgrad as hg
import handgrad.inspect as hgi
import handgrad.nn  # noqa: F401


@dataclasses.dataclass
class Case:
  name: str
  loss: Callable[..., Any]
  args: tuple
  expect_phase: str | None  # None: healthy
  expect_culprit: str | None
  expect_words: tuple[str, ...] = ()  # in the diagnosis
  loss_scale: float | None = None


def fault_line(name: str) -> int:
  """The line of this file marked ``# FAULT: name``."""
  for i, line in enumerate(pathlib.Path(__file__).read_text().splitlines(), 1):
    if line.rstrip().endswith(f"# FAULT: {name}"):
      return i
  raise KeyError(name)


def _data(key, batch, features):
  kx, ky = jax.random.split(key)
  return jax.random.normal(kx, (batch, features)), jax.random.randint(ky, (batch,), 0, 10)


# --- the cases ------------------------------------------------------------------------

def sqrt_distance(batch: int) -> Case:
  params = hg.nn.mlp.init([16, 32, 8], key=jax.random.key(1))
  x, _ = _data(jax.random.key(2), batch, 16)

  def loss(p, x):
    e = hg.nn.mlp.apply(p, x)
    d2 = jnp.sum((e[:, None, :] - e[None, :, :]) ** 2, axis=-1)
    d = jnp.sqrt(d2)  # FAULT: sqrt_distance
    return jnp.mean(jax.nn.relu(1.0 - d))

  return Case("sqrt_distance", loss, (params, x), "backward", "sqrt", ("distance",))


def where_trap(batch: int) -> Case:
  params = hg.nn.mlp.init([16, 32, 4], key=jax.random.key(3))
  x, _ = _data(jax.random.key(4), batch, 16)
  # A sparse rate: entries switched off by a data mask are exactly 0.
  keep = (jnp.arange(batch * 4).reshape(batch, 4) % 3 != 0).astype(jnp.float32)

  def loss(p, x, keep):
    rate = jax.nn.softplus(hg.nn.mlp.apply(p, x)) * keep
    log_rate = jnp.where(rate > 0, jnp.log(rate), 0.0)  # FAULT: where_trap
    return jnp.mean(rate - log_rate)

  return Case("where_trap", loss, (params, x, keep), "backward", "log",
              ("where trap", "double where"))


def log_softmax(batch: int) -> Case:
  params = hg.nn.mlp.init([16, 32, 10], key=jax.random.key(5))
  params["layers"][1]["W"] = params["layers"][1]["W"] * 200.0  # over-confident logits
  x, y = _data(jax.random.key(6), batch, 16)

  def loss(p, x, y):
    probs = jax.nn.softmax(hg.nn.mlp.apply(p, x))
    logp = jnp.log(probs)  # FAULT: log_softmax
    return -jnp.mean(jnp.take_along_axis(logp, y[:, None], axis=1))

  return Case("log_softmax", loss, (params, x, y), "forward", "log",
              ("softmax that underflowed", "log_softmax"))


def batch_norm_eps0(batch: int) -> Case:
  params = hg.nn.mlp.init([16, 32, 10], key=jax.random.key(7))
  params["layers"][0]["b"] = params["layers"][0]["b"].at[3].set(-100.0)  # a dead unit
  x, y = _data(jax.random.key(8), batch, 16)

  def loss(p, x, y):
    h = jax.nn.relu(hg.ops.dense(x, p["layers"][0]["W"], p["layers"][0]["b"]))
    mu = jnp.mean(h, axis=0)
    var = jnp.mean((h - mu) ** 2, axis=0)
    h = (h - mu) / jnp.sqrt(var + 0.0)  # FAULT: batch_norm_eps0
    logits = hg.ops.dense(h, p["layers"][1]["W"], p["layers"][1]["b"])
    return hg.ops.softmax_cross_entropy(logits, y)

  return Case("batch_norm_eps0", loss, (params, x, y), "forward", "div",
              ("zero variance", "eps"))


def fp16_overflow(batch: int) -> Case:
  params = hg.nn.mlp.init([16, 64, 10], key=jax.random.key(9), dtype=jnp.float16)
  x, y = _data(jax.random.key(10), batch, 16)
  x = (4.0 * x).astype(jnp.float16)

  def loss(p, x, y):
    h = jax.nn.relu(hg.ops.dense(x, p["layers"][0]["W"], p["layers"][0]["b"]))
    logits = hg.ops.dense(h, p["layers"][1]["W"], p["layers"][1]["b"])  # FAULT: fp16_overflow
    # Summed over the batch (not averaged): each example's cotangent is the full scale.
    return hg.ops.softmax_cross_entropy(logits.astype(jnp.float32), y) * x.shape[0]

  return Case("fp16_overflow", loss, (params, x, y), "backward", "hg.dense",
              ("float16 overflow", "skips this step"), loss_scale=2.0 ** 15)


def label_range(batch: int) -> Case:
  params = hg.nn.transformer_classifier.init(key=jax.random.key(11), in_features=8,
                                             seq_len=4, dim=16, num_heads=2,
                                             num_blocks=1, num_classes=5)
  x, _ = _data(jax.random.key(12), batch, 32)
  y = jnp.arange(batch) % 5
  y = y.at[1].set(5)  # one label equals the class count

  def loss(p, x, y):
    logits = hg.nn.transformer_classifier.apply(p, x, num_heads=2)
    return hg.ops.softmax_cross_entropy(logits, y)  # FAULT: label_range

  return Case("label_range", loss, (params, x, y), "forward", "hg.softmax_cross_entropy",
              ("out-of-range label",))


def healthy(batch: int) -> Case:
  params = hg.nn.transformer_classifier.init(key=jax.random.key(13), in_features=8,
                                             seq_len=4, dim=16, num_heads=2,
                                             num_blocks=2, num_classes=5)
  x, _ = _data(jax.random.key(14), batch, 32)
  y = jnp.arange(batch) % 5

  def loss(p, x, y):
    logits = hg.nn.transformer_classifier.apply(p, x, num_heads=2, causal=True)
    return hg.ops.softmax_cross_entropy(logits, y)

  return Case("healthy", loss, (params, x, y), None, None)


CASES = (sqrt_distance, where_trap, log_softmax, batch_norm_eps0, fp16_overflow,
         label_range, healthy)


def cases(quick: bool = True) -> list[Case]:
  batch = 8 if quick else 128
  return [make(batch) for make in CASES]


# --- the three tools ------------------------------------------------------------------

def handgrad_report(case: Case) -> hgi.NonFiniteReport:
  return hgi.find_nonfinite(case.loss, *case.args, loss_scale=case.loss_scale)


def _jax_grad_fn(case: Case):
  scale = case.loss_scale

  def scaled(*args):
    out = case.loss(*args)
    return out * scale if scale is not None else out

  return jax.grad(scaled)


def _first_line(msg: str) -> str:
  msg = str(msg).strip().splitlines()
  return msg[0] if msg else ""


def debug_flag_message(case: Case, flag: str = "nans") -> str:
  """What ``jax_debug_nans`` (or ``jax_debug_infs``) says about ``jax.grad`` of the
  loss, jitted."""
  grad_fn = jax.jit(_jax_grad_fn(case))
  context = jax.debug_nans(True) if flag == "nans" else jax.debug_infs(True)
  try:
    with context:
      jax.block_until_ready(grad_fn(*case.args))
  except FloatingPointError as e:
    return _first_line(e)
  except Exception as e:  # noqa: BLE001  - report whatever JAX raised
    return f"{type(e).__name__}: {_first_line(e)}"
  return "(no error)"


def checkify_message(case: Case) -> str:
  """What ``checkify.checkify(jax.grad(loss), errors=float_checks)`` says."""
  checked = jax.jit(checkify.checkify(_jax_grad_fn(case), errors=checkify.float_checks))
  err, _ = checked(*case.args)
  msg = err.get()
  if msg is None:
    return "(no error)"
  return re.sub(r"\s+", " ", _first_line(msg))


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--quick", action="store_true", help="batch 8 instead of 128")
  args = parser.parse_args()
  for case in cases(args.quick):
    report = handgrad_report(case)
    print(f"\n== {case.name}")
    if case.expect_phase is not None:
      print(f"planted at line {fault_line(case.name)}")
    print(f"handgrad.inspect.find_nonfinite:\n  {str(report).replace(chr(10), chr(10) + '  ')}")
    print(f"jax_debug_nans (jax.grad, jitted):\n  {debug_flag_message(case, 'nans')}")
    print(f"jax_debug_infs (jax.grad, jitted):\n  {debug_flag_message(case, 'infs')}")
    print(f"checkify float_checks (jax.grad, jitted):\n  {checkify_message(case)}")


if __name__ == "__main__":
  main()
