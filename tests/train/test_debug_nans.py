"""fit(debug_nans=True) / handgrad train --debug-nans: a non-finite step is skipped, re-run
with find_nonfinite, reported and appended to nonfinite.json; on_nonfinite stops or goes on."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from handgrad import train
from handgrad.data import Dataset
from handgrad.data import batches

N, BATCH, DIM = 32, 8, 4
ZERO_ROW = 13  # its distance is 0: sqrt'(0) = inf in the backward pass


def distance_loss(params, batch, key):
  del key
  z = batch.x @ params["w"]
  d = jnp.sum(z * z, axis=-1)
  loss = jnp.mean(jnp.sqrt(d))  # the culprit's line
  return loss, {}


def _data(zero_row=ZERO_ROW):
  x = np.asarray(jax.random.normal(jax.random.key(0), (N, DIM)), np.float32) + 0.5
  x[zero_row] = 0.0
  return Dataset(x, np.zeros(N, np.int32), name="distances")


def _state(tx):
  return train.TrainState.create({"w": jnp.ones((DIM, 3), jnp.float32) * 0.1}, tx, key=3)


def _fit(tmp_path, tx, step, **kw):
  notes = []
  result = train.fit(step, _state(tx), _data(), epochs=kw.pop("epochs", 2), batch_size=BATCH,
                     data_key=jax.random.key(1), out_dir=tmp_path, progress=False,
                     plot=False, log=notes.append, **kw)
  return result, notes


def _culprit_line():
  import inspect
  src, first = inspect.getsourcelines(distance_loss)
  return first + next(i for i, line in enumerate(src) if "the culprit's line" in line)


def _check_sqrt_record(record):
  report = record["report"]
  assert report["finite"] is False and report["phase"] == "backward"
  assert report["primitive"] == "sqrt" and report["culprit"] == "sqrt"
  assert report["line"].startswith(f"{__file__}:{_culprit_line()} (distance_loss)")
  assert "derivative is infinite at 0" in report["diagnosis"]
  assert "sqrt" in record["text"]


def test_skip_reports_each_nonfinite_step_and_goes_on(tmp_path):
  tx = optax.sgd(0.1)
  step = train.make_train_step(distance_loss, tx)
  result, notes = _fit(tmp_path, tx, step, debug_nans=True, max_nonfinite=5)
  assert len(result.skipped) == 2  # the zero row's batch, once per epoch
  records = json.loads((tmp_path / "nonfinite.json").read_text())
  assert [(r["step"], r["epoch"], r["batch"]) for r in records] == result.skipped
  assert records == json.loads(json.dumps(result.nonfinite))
  for record in records:
    assert record["action"] == "skipped" and record["micro_batch"] is None
    _check_sqrt_record(record)
  assert any("first non-finite value born in the backward pass of `sqrt`" in n.lower()
             for n in notes)
  for leaf in jax.tree.leaves(jax.device_get(result.state)):
    assert np.all(np.isfinite(np.asarray(leaf, np.float64)))
  # Params equal those of the same run without the finder: it changes nothing.
  plain, _ = _fit(tmp_path / "plain", tx, step, max_nonfinite=5)
  assert plain.skipped == result.skipped and not plain.nonfinite
  assert not (tmp_path / "plain" / "nonfinite.json").exists()
  np.testing.assert_array_equal(jax.device_get(plain.state.params["w"]),
                                jax.device_get(result.state.params["w"]))
  # A resumed run appends its records; it never replaces the earlier ones.
  resumed, _ = _fit(tmp_path, tx, step, epochs=3, debug_nans=True, max_nonfinite=5,
                    resume=True)
  again = json.loads((tmp_path / "nonfinite.json").read_text())
  assert again[:2] == records and len(again) == 3 and len(resumed.skipped) == 1


def test_stop_ends_at_the_first_nonfinite_step_keeping_the_last_good_checkpoint(tmp_path):
  tx = optax.adam(1e-2)
  step = train.make_train_step(distance_loss, tx)
  with pytest.raises(train.NonFiniteError) as info:
    _fit(tmp_path, tx, step, debug_nans=True, on_nonfinite="stop", checkpoint_every=1)
  message = str(info.value)
  assert "\n" not in message and "on_nonfinite='stop'" in message
  assert f"backward pass of `sqrt` at {__file__}:{_culprit_line()}" in message
  record = info.value.record
  assert record["action"] == "stopped"
  _check_sqrt_record(record)
  bad = record["step"]
  saved = sorted(int(p.name) for p in (tmp_path / "checkpoints").iterdir()
                 if p.name.isdigit())
  assert saved and max(saved) == bad - 1 and f"checkpoints/{bad - 1}" in message
  assert json.loads((tmp_path / "nonfinite.json").read_text()) == [
      json.loads(json.dumps(record))]


def test_stop_without_debug_nans_and_bad_arguments(tmp_path):
  tx = optax.sgd(0.1)
  step = train.make_train_step(distance_loss, tx)
  with pytest.raises(train.NonFiniteError, match=r"non-finite loss or gradient: training "
                                                 r"stopped \(on_nonfinite='stop'\)") as info:
    _fit(tmp_path, tx, step, on_nonfinite="stop")
  assert info.value.record is None and not (tmp_path / "nonfinite.json").exists()
  with pytest.raises(ValueError, match="on_nonfinite must be one of 'stop', 'skip'"):
    _fit(tmp_path / "b", tx, step, on_nonfinite="halt")


def test_find_nonfinite_of_a_step_names_the_micro_batch_and_frozen_leaves():
  tx = optax.sgd(0.1)
  ds = _data(zero_row=6)
  batch = next(batches(ds, BATCH, key=None, shuffle=False))  # rows 0-7: micro-batch 1 of 2
  step = train.make_train_step(distance_loss, tx, accumulate=2)
  report, micro = step.find_nonfinite(_state(tx), batch)
  assert micro == 1 and report.primitive == "sqrt" and report.phase == "backward"
  params = {"w": jnp.ones((DIM, 3)) * 0.1, "v": jnp.ones(())}
  frozen_loss = lambda p, b, k: distance_loss({"w": p["w"] * p["v"]}, b, k)  # noqa: E731
  step = train.make_train_step(frozen_loss, tx, frozen=["v"])
  report, micro = step.find_nonfinite(train.TrainState.create(params, tx, key=0), batch)
  assert micro is None and report.primitive == "sqrt"
  healthy = next(batches(_data(zero_row=30), BATCH, key=None, shuffle=False))
  report, _ = step.find_nonfinite(train.TrainState.create(params, tx, key=0), healthy)
  assert report.finite


@pytest.fixture
def nan_pixel_data(monkeypatch):
  """The MNIST loader returns a training set with one NaN pixel, and the host check of
  the inputs is bypassed, so that the NaN reaches a step."""
  from handgrad._src.data import mnist
  from handgrad._src.train import loop
  train_ds, test_ds = mnist.load_mnist()
  x = np.array(train_ds.x[:64])
  x[5, 300] = np.nan
  bad = mnist.Dataset(x, train_ds.y[:64], train_ds.num_classes, "nan-pixel")
  monkeypatch.setattr(mnist, "load_mnist", lambda data_dir=None: (bad, test_ds))
  monkeypatch.setattr(loop, "check_finite_inputs", lambda ds, what="": None)
  return bad


def test_cli_debug_nans_stop_writes_nonfinite_json(tmp_path, capsys, nan_pixel_data):
  from handgrad.cli import main
  out = tmp_path / "run"
  argv = ["train", "--epochs", "1", "--batch-size", "32", "--no-progress", "--out",
          str(out), "--debug-nans", "--on-nonfinite", "stop"]
  assert main(argv) == 2
  err = capsys.readouterr().err
  last = err.strip().splitlines()[-1]
  assert last.startswith("handgrad train: error: step ") and "non-finite input" in last
  assert "training stopped (on_nonfinite='stop')" in last
  (record,) = json.loads((out / "nonfinite.json").read_text())
  assert record["report"]["phase"] == "input" and record["action"] == "stopped"
  assert "Non-finite input" in err
  # A rerun with --resume --on-nonfinite skip appends to the file, never replaces it.
  assert main([*argv[:-1], "skip", "--resume", "--max-nonfinite", "5"]) == 0
  records = json.loads((out / "nonfinite.json").read_text())
  assert records[0] == record and len(records) == 2
  assert records[1]["action"] == "skipped" and records[1]["step"] == record["step"]
