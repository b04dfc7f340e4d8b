"""find_nonfinite on the planted faults of experiments/nan_hunt.py and on others.

Each fault's expected culprit, source line and diagnosis are known; healthy runs (a
causal transformer whose attention mask holds -inf) must report nothing, and a second
fault downstream of the first must never be named.
"""

import importlib.util
import json
import pathlib
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

import handgrad as hg
import handgrad.nn  # noqa: F401
from handgrad import inspect as hgi

_ROOT = pathlib.Path(__file__).resolve().parents[2]


def _nan_hunt():
  spec = importlib.util.spec_from_file_location("nan_hunt", _ROOT / "experiments" / "nan_hunt.py")
  mod = importlib.util.module_from_spec(spec)
  sys.modules["nan_hunt"] = mod  # dataclasses look their module up
  spec.loader.exec_module(mod)
  return mod


NAN_HUNT = _nan_hunt()


@pytest.mark.parametrize("make", NAN_HUNT.CASES, ids=lambda m: m.__name__)
def test_nan_hunt_cases(make):
  case = make(8)  # the experiment's --quick batch
  report = NAN_HUNT.handgrad_report(case)
  if case.expect_phase is None:
    assert report.finite and report.culprit is None, str(report)
    assert str(report).startswith("All finite")
    return
  assert not report.finite
  assert report.phase == case.expect_phase, str(report)
  assert report.culprit == case.expect_culprit, str(report)
  assert report.line.endswith(f"nan_hunt.py:{NAN_HUNT.fault_line(case.name)} "
                              f"({case.loss.__qualname__})"), report.line
  for word in case.expect_words:
    assert word in report.diagnosis, (word, report.diagnosis)
  assert report.line in str(report) and report.diagnosis in str(report)


def _line_of(marker: str) -> int:
  for i, line in enumerate(pathlib.Path(__file__).read_text().splitlines(), 1):
    if line.rstrip().endswith(f"# {marker}"):
      return i
  raise KeyError(marker)


def _expect(report, phase, culprit, marker, *words):
  assert not report.finite, str(report)
  assert (report.phase, report.culprit) == (phase, culprit), str(report)
  assert f"test_nonfinite.py:{_line_of(marker)} " in report.line, report.line
  for w in words:
    assert w in report.diagnosis, (w, report.diagnosis)


def _resmlp():
  p = hg.nn.residual_mlp.init(6, 8, 3, 2, key=jax.random.key(0))
  x = jax.random.normal(jax.random.key(1), (4, 6))
  return p, x


# --- the same patterns in other models ------------------------------------------------

def test_pow_half_of_a_zero_distance_in_a_residual_mlp():
  p, x = _resmlp()

  def loss(p, x):
    e = hg.nn.residual_mlp.apply(p, x)
    d2 = jnp.sum((e[:, None] - e[None]) ** 2, -1)
    return jnp.mean(jnp.power(d2, 0.5))  # pow-distance

  r = hgi.find_nonfinite(loss, p, x)
  _expect(r, "backward", "pow", "pow-distance", "distance", "infinite at 0")
  assert r.inputs[0].zeros == 4 and r.inputs[0].negatives == 0  # the diagonal
  assert "blocks/0/linear1/W" in r.nonfinite_grads
  # jax.grad agrees that the gradient is not finite.
  assert not np.all(np.isfinite(jax.grad(loss)(p, x)["blocks"][0]["linear1"]["W"]))


def test_where_trap_with_sqrt_in_a_transformer():
  p = hg.nn.transformer_classifier.init(key=jax.random.key(2), in_features=4, seq_len=3,
                                        dim=8, num_heads=2, num_blocks=1, num_classes=4)
  x = jax.random.normal(jax.random.key(3), (5, 12))

  keep = jnp.array([1.0, 0.0, 1.0, 1.0])  # a data mask: some energies are exactly 0

  def loss(p, x, keep):
    v = hg.nn.transformer_classifier.apply(p, x, num_heads=2) ** 2 * keep
    return jnp.mean(jnp.where(v > 0, jnp.sqrt(v), 0.0))  # where-sqrt

  r = hgi.find_nonfinite(loss, p, x, keep)
  _expect(r, "backward", "sqrt", "where-sqrt", "where trap", "true (second) argument",
          "double where")
  assert r.layer == "" and r.cotangents and r.cotangents[0].zeros > 0


def test_naive_logsumexp_overflows_in_exp():
  p = hg.nn.mlp.init([6, 8, 3], key=jax.random.key(4))
  x = 200.0 * jax.random.normal(jax.random.key(5), (4, 6))

  def loss(p, x):
    logits = hg.nn.mlp.apply(p, x)
    return jnp.mean(jnp.log(jnp.sum(jnp.exp(logits), -1)))  # naive-lse

  r = hgi.find_nonfinite(loss, p, x)
  _expect(r, "forward", "exp", "naive-lse", "exp overflow", "subtract the maximum")
  assert r.inputs[0].max > 88.7


def test_a_literal_inf_is_named_as_a_constant_not_an_overflow():
  def loss(w, x):
    z = x @ w
    return jnp.sum(z * jnp.inf)  # literal-inf

  r = hgi.find_nonfinite(loss, jnp.ones((3, 2)), jnp.ones((4, 3)))
  _expect(r, "forward", "mul", "literal-inf", "constant inf or NaN", "operand 1")
  assert "finite operands" not in r.diagnosis
  assert r.inputs[1].infs == 1 and "no finite element" in str(r.inputs[1])


def test_layer_norm_eps0_of_a_constant_row():
  p = hg.nn.mlp.init([6, 8, 3], key=jax.random.key(6))
  x = jax.random.normal(jax.random.key(7), (4, 6)).at[2].set(1.5)

  def loss(p, x):
    h = hg.ops.layer_norm(x, jnp.ones(6), jnp.zeros(6), eps=0.0)  # ln-eps0
    return jnp.mean(hg.nn.mlp.apply(p, h))

  _expect(hgi.find_nonfinite(loss, p, x), "forward", "hg.layer_norm", "ln-eps0",
          "constant row", "eps=0")


def test_rsqrt_batch_norm_with_eps0():
  p, x = _resmlp()

  def loss(p, x):
    h = hg.nn.residual_mlp.apply(p, x).at[:, 0].set(1.0)
    mu = h.mean(0)
    var = ((h - mu) ** 2).mean(0)
    return jnp.sum((h - mu) * lax.rsqrt(var))  # bn-rsqrt

  _expect(hgi.find_nonfinite(loss, p, x), "forward", "rsqrt", "bn-rsqrt", "zero variance")


def test_negative_label_and_float16_forward_overflow():
  p = hg.nn.mlp.init([6, 8, 3], key=jax.random.key(8))
  x = jax.random.normal(jax.random.key(9), (4, 6))

  def ce(p, x, y):
    return hg.ops.softmax_cross_entropy(hg.nn.mlp.apply(p, x), y)  # neg-label

  r = hgi.find_nonfinite(ce, p, x, jnp.array([0, 1, -1, 2]))
  _expect(r, "forward", "hg.softmax_cross_entropy", "neg-label", "out-of-range label")
  assert r.inputs[1].negatives == 1

  def half(p, x):
    p16 = jax.tree.map(lambda a: a.astype(jnp.float16), p)
    h = hg.nn.mlp.apply(p16, (x * 3e4).astype(jnp.float16))  # fp16-forward
    return jnp.sum(h.astype(jnp.float32))

  _expect(hgi.find_nonfinite(half, p, x), "forward", "hg.dense", "fp16-forward",
          "float16 overflow")


def test_non_finite_parameter_is_an_input_fault():
  p, x = _resmlp()
  p["blocks"][1]["linear2"]["b"] = p["blocks"][1]["linear2"]["b"].at[0].set(jnp.inf)
  r = hgi.find_nonfinite(lambda p, x: jnp.mean(hg.nn.residual_mlp.apply(p, x)), p, x)
  assert r.phase == "input" and "blocks/1/linear2/b" in r.diagnosis, str(r)


# --- first culprit only; inside jit and checkpoint regions -----------------------------

@jax.jit
def _inner_log(h):
  return jnp.log(h)  # inner-log


def test_no_culprit_downstream_of_the_first():
  p, x = _resmlp()

  def loss(p, x):
    e = hg.nn.residual_mlp.apply(p, x)
    a = _inner_log(jnp.abs(e) * 0.0)  # log(0): the first fault, inside a nested jit
    b = jnp.exp(e * 1000.0)  # an overflow that comes later
    c = a / (e * 0.0)  # and a division by zero downstream of the first
    return jnp.sum(a) + jnp.sum(b) + jnp.sum(c)

  r = hgi.find_nonfinite(loss, p, x)
  _expect(r, "forward", "log", "inner-log", "log of 0")
  assert r.eqn_path[-1] == 0 and len(r.eqn_path) == 2  # the log inside the jit


def test_backward_fault_inside_a_checkpoint_region():
  p, x = _resmlp()

  def loss(p, x):
    f = jax.checkpoint(lambda e: jnp.sqrt(jnp.sum(e * e * 0.0, -1)))  # ckpt-sqrt
    return jnp.sum(f(hg.nn.residual_mlp.apply(p, x)))

  _expect(hgi.find_nonfinite(loss, p, x), "backward", "sqrt", "ckpt-sqrt", "infinite at 0")


def test_healthy_runs_report_nothing_and_masked_infs_are_counted():
  p, x = _resmlp()
  r = hgi.find_nonfinite(lambda p, x: jnp.mean(hg.nn.residual_mlp.apply(p, x) ** 2), p, x)
  assert r.finite and r.masked == 0 and r.phase is None
  # jnp.where(x > 0, log(x), 0) with x > 0 where it matters: log(0) forward is masked,
  # and nothing is differentiated through it (x is data).
  def masked(p, x):
    safe = jnp.where(x > 0, jnp.log(jnp.maximum(x, 0.0)), 0.0)
    return jnp.mean(hg.nn.residual_mlp.apply(p, safe))

  r = hgi.find_nonfinite(masked, p, x)
  assert r.finite and r.masked >= 1 and "never reached the loss" in str(r)


def test_report_fields_and_json():
  p, x = _resmlp()

  def loss(p, x):
    return jnp.sum(jnp.log(hg.nn.residual_mlp.apply(p, x) * 0.0))  # json-log

  r = hgi.find_nonfinite(loss, p, x)
  d = r.to_dict()
  assert d["culprit"] == "log" and d["phase"] == "forward"
  assert d["in_shapes"] == ((4, 3),) and d["out_shapes"] == ((4, 3),)
  assert json.loads(json.dumps(d))["inputs"][0]["zeros"] == 12
  assert isinstance(r.inputs[0], hgi.ArrayStats) and "zeros=12" in str(r.inputs[0])


def test_loss_scale_says_the_scaler_skips_the_step():
  p = hg.nn.mlp.init([6, 32, 3], key=jax.random.key(10), dtype=jnp.float16)
  x = (4.0 * jax.random.normal(jax.random.key(11), (8, 6))).astype(jnp.float16)
  y = jnp.arange(8) % 3

  def loss(p, x, y):
    return hg.ops.softmax_cross_entropy(hg.nn.mlp.apply(p, x).astype(jnp.float32), y)

  assert hgi.find_nonfinite(loss, p, x, y).finite  # unscaled: fine
  r = hgi.find_nonfinite(loss, p, x, y, loss_scale=2.0 ** 15)
  assert r.phase == "backward" and "float16 overflow" in r.diagnosis
  assert "skips this step" in r.diagnosis and "16384" in r.diagnosis
  assert np.isfinite(r.loss)
