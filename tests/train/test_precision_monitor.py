"""Mixed precision, loss scaling, remat and the gradient monitor in the train step/CLI."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import handgrad as hg
from handgrad import train
from handgrad.cli import main


@pytest.fixture(scope="module")
def mnist():
  return hg.data.load_mnist()


def _train(precision, train_ds, test_ds, *, epochs, loss_scale=None, inject=()):
  tx = train.make_optimizer("adam", 1e-3)
  state = jax.jit(lambda k: train.TrainState.create(
      hg.nn.mlp.init([784, 128, 10], key=k), tx, key=1, loss_scale=loss_scale))(jax.random.key(0))
  step = train.make_train_step(train.classification_loss(hg.nn.mlp.apply, precision=precision),
                               tx, loss_scale=loss_scale)
  skipped = []
  n = 0
  for epoch in range(epochs):
    for batch in hg.data.batches(train_ds, 32, key=jax.random.fold_in(jax.random.key(0), epoch)):
      if n in inject:
        before = jax.device_get(state)
        state, m = step(state, batch._replace(x=batch.x * 1e5))  # overflows float16
        after = jax.device_get(state)
        for a, b in zip(jax.tree.leaves((before.params, before.opt_state)),
                        jax.tree.leaves((after.params, after.opt_state))):
          np.testing.assert_array_equal(a, b)
        skipped.append(n)
        assert float(m["skipped"]) == 1.0
        assert float(after.loss_scale.scale) == float(before.loss_scale.scale) / 2
      else:
        state, m = step(state, batch)
      n += 1
  ev = train.make_eval_step(train.classification_eval(hg.nn.mlp.apply, precision=precision))
  return state, train.evaluate(ev, state.params, test_ds, batch_size=1000)["accuracy"], skipped


def test_bfloat16_reaches_float32_accuracy_within_one_point(mnist):
  train_ds, test_ds = mnist
  _, acc32, _ = _train("float32", train_ds, test_ds, epochs=4)
  _, acc16, _ = _train("bf16", train_ds, test_ds, epochs=4)
  assert acc32 > 0.9
  assert acc16 >= acc32 - 0.01, (acc16, acc32)


def test_float16_with_loss_scaling_survives_injected_overflow(mnist):
  train_ds, test_ds = mnist
  scaler = train.DynamicLossScale(initial_scale=2.0 ** 15, growth_interval=100)
  state, acc, skipped = _train("fp16", train_ds, test_ds, epochs=2, loss_scale=scaler,
                               inject={10, 11, 60})
  assert skipped == [10, 11, 60]
  assert all(np.isfinite(np.asarray(p)).all() for p in jax.tree.leaves(state.params))
  assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(state.params))
  assert acc > 0.85


def test_loss_scale_requires_a_state_that_carries_it(mnist):
  train_ds, _ = mnist
  tx = train.make_optimizer("sgd", 0.1)
  state = train.TrainState.create(hg.nn.mlp.init([784, 10], key=jax.random.key(0)), tx, key=0)
  step = train.make_train_step(train.classification_loss(hg.nn.mlp.apply, precision="fp16"),
                               tx, loss_scale=train.DynamicLossScale())
  batch = next(hg.data.batches(train_ds, 8, key=jax.random.key(0)))
  with pytest.raises(ValueError, match="loss_scale"):
    step(state, batch)


def test_monitor_stats_equal_direct_jax_computation(mnist):
  train_ds, _ = mnist
  tx = train.make_optimizer("sgd", 0.1)
  params = hg.nn.mlp.init([784, 32, 10], key=jax.random.key(0))
  state = train.TrainState.create(params, tx, key=0)
  step = train.make_train_step(train.classification_loss(hg.nn.mlp.apply), tx, monitor=True,
                               donate=False)
  batch = next(hg.data.batches(train_ds, 16, key=jax.random.key(0)))
  _, metrics = step(state, batch)
  grads = jax.grad(lambda p: hg.ops.softmax_cross_entropy(hg.nn.mlp.apply(p, batch.x), batch.y))(params)
  stats = jax.device_get(metrics["grad_stats"])
  g = np.asarray(grads["layers"][0]["W"])
  s = stats["layers/0/W"]
  np.testing.assert_allclose([s.mean, s.std, s.max_abs, s.norm],
                             [g.mean(), g.std(ddof=1), np.abs(g).max(), np.linalg.norm(g)],
                             rtol=2e-5, atol=1e-7)
  assert float(s.finite_fraction) == 1.0


def test_cli_precision_monitor_and_remat(tmp_path, capsys):
  out = tmp_path / "run"
  assert main(["train", "--epochs", "1", "--subset", "640", "--precision", "fp16",
               "--monitor", "5", "--out", str(out), "--no-progress"]) == 0
  text = capsys.readouterr().out
  assert "fp16 (dynamic loss scaling)" in text and "gradient monitor" in text
  records = [json.loads(l) for l in (out / "grad_stats.jsonl").read_text().splitlines()]
  assert [r["step"] for r in records] == [5, 10, 15, 20]
  assert set(records[0]["stats"]) == {f"layers/{i}/{p}" for i in range(3) for p in "Wb"}
  assert (out / "gradient_flow.png").read_bytes()[:4] == b"\x89PNG"
  metrics = [json.loads(l) for l in (out / "metrics.jsonl").read_text().splitlines()]
  assert metrics[0]["train_loss_scale"] == 2.0 ** 15
  assert main(["train", "--remat", "--out", str(tmp_path / "x")]) == 2
  assert "--model transformer" in capsys.readouterr().err
  assert main(["train", "--model", "transformer", "--remat", "--epochs", "1", "--subset", "256",
               "--out", str(tmp_path / "t"), "--no-progress"]) == 0
  assert "checkpointed blocks" in capsys.readouterr().out


def test_cli_resume_keeps_the_earlier_gradient_stats(tmp_path, capsys):
  # 320 digits in batches of 32: 10 steps an epoch, a record every 3 steps.
  args = ["train", "--subset", "320", "--monitor", "3", "--no-progress", "--out", str(tmp_path)]
  assert main([*args, "--epochs", "1"]) == 0
  first = (tmp_path / "grad_stats.jsonl").read_text().splitlines()
  assert [json.loads(l)["step"] for l in first] == [3, 6, 9]
  assert main([*args, "--epochs", "2", "--resume"]) == 0
  lines = (tmp_path / "grad_stats.jsonl").read_text().splitlines()
  assert [json.loads(l)["step"] for l in lines] == [3, 6, 9, 12, 15, 18]
  assert lines[:3] == first  # the first session's records, untouched
  capsys.readouterr()
