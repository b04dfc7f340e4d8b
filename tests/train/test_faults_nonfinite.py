"""Fault injection, non-finite values: a NaN never reaches the parameters, the optimizer
state or a checkpoint; it is reported with its step and batch; a run of them stops."""

import os
import re
import sys

import jax
import numpy as np
import optax
import pytest

sys.path.insert(0, os.path.dirname(__file__))
import fault_helpers as fh  # noqa: E402

from handgrad import nn  # noqa: E402
from handgrad import train  # noqa: E402
from handgrad.data import Dataset  # noqa: E402
from handgrad.data import batches  # noqa: E402


def test_a_nan_pixel_is_an_error_before_training_naming_the_sample(tmp_path):
  train_ds, test_ds = fh.data()
  x = np.array(train_ds.x)
  x[37, 200] = np.nan
  bad = Dataset(x, train_ds.y, name="nan-pixel")
  _, step, ev = fh.pieces()
  with pytest.raises(ValueError, match=r"training set: sample 37 holds a non-finite input "
                                       r"value \(nan at feature 200\)"):
    train.fit(step, fh.fresh_state(), bad, epochs=1, batch_size=fh.BATCH,
              data_key=jax.random.key(0), out_dir=tmp_path, progress=False)
  assert not (tmp_path / "checkpoints").exists()  # nothing written, nothing locked
  x = np.array(test_ds.x)
  x[3, 0] = np.inf
  with pytest.raises(ValueError, match=r"evaluation set: sample 3 .*inf at feature 0"):
    train.fit(step, fh.fresh_state(), train_ds, epochs=1, batch_size=fh.BATCH,
              data_key=jax.random.key(0), eval_step=ev,
              eval_ds=Dataset(x, test_ds.y), progress=False)


def test_a_non_finite_step_is_skipped_bit_exactly():
  """The step's params and optimizer state are the bits that went in; step and key move on."""
  tx, step, _ = fh.pieces(poisoned=True)
  train_ds, _ = fh.data((0,))
  batch = next(batches(train_ds, len(train_ds), key=None, shuffle=False))
  state = fh.fresh_state(poisoned=True)
  before = jax.device_get(state)
  after, metrics = step(state, batch)
  assert float(metrics["skipped"]) == 1.0 and np.isnan(float(metrics["loss"]))
  after = jax.device_get(after)
  fh.assert_states_equal((after.params, after.opt_state), (before.params, before.opt_state))
  assert int(after.step) == 1 and not np.array_equal(after.key, before.key)


def test_a_non_finite_update_is_skipped_too():
  """Finite loss and gradients, but an optimizer whose update is inf: not applied."""
  _, test_ds = fh.data()
  tx = optax.chain(optax.scale(np.float32(3e38)), optax.scale(np.float32(10.0)))
  step = train.make_train_step(train.classification_loss(nn.mlp.apply), tx)
  state = train.TrainState.create(nn.mlp.init([784, 4, 10], key=jax.random.key(0)), tx,
                                  key=0)
  before = jax.device_get(state.params)
  batch = next(batches(test_ds, 16, key=None, shuffle=False))
  after, metrics = step(state, batch)
  assert np.isfinite(float(metrics["loss"])) and float(metrics["skipped"]) == 1.0
  fh.assert_states_equal(after.params, before)


def test_skipped_steps_are_reported_and_the_run_continues_bitwise(tmp_path):
  """Sample 5 poisons one batch per epoch: each such step is skipped and reported; the
  final params equal a run that leaves exactly those steps out (params unchanged)."""
  notes = []
  result = fh.run(tmp_path, 2, poisoned=True, poison_rows=(5,), notes=notes)
  assert len(result.skipped) == 2
  for (step, epoch, batch), note in zip(result.skipped, [n for n in notes if "skipped" in n]):
    assert note.startswith(f"step {step} (epoch {epoch}, batch {batch}): non-finite loss")
    assert (step - 1) % fh.STEPS_PER_EPOCH + 1 == batch
  for leaf in jax.tree.leaves(jax.device_get(result.state)):
    assert np.all(np.isfinite(np.asarray(leaf, np.float64)))
  records = train.read_metrics(tmp_path / "metrics.jsonl")
  assert [r["train_skipped"] for r in records] == [float(np.float32(1 / fh.STEPS_PER_EPOCH))] * 2
  assert all(np.isfinite(r["test_loss"]) for r in records)


def test_consecutive_non_finite_steps_stop_the_run_keeping_the_last_good_checkpoint(
    tmp_path):
  """One sample of each batch of epoch 2's order is poisoned: after 3 non-finite steps in
  a row, one line naming them; the newest checkpoint is the last one before the streak,
  and it is finite."""
  train_ds, _ = fh.data()
  order = np.asarray(jax.random.permutation(jax.random.fold_in(jax.random.key(5), 1),
                                            fh.N_TRAIN))
  rows = tuple(int(order[i * fh.BATCH]) for i in range(fh.STEPS_PER_EPOCH))
  with pytest.raises(train.NonFiniteError) as e:
    fh.run(tmp_path, 3, poisoned=True, poison_rows=rows, checkpoint_every=2)
  msg = str(e.value)
  assert "\n" not in msg
  m = re.fullmatch(r"3 non-finite steps in a row, steps (\d+)-(\d+) \(epoch \d, batch \d "
                   r"to epoch 2, batch \d\): training stopped; the last good checkpoint "
                   r"is (.*)", msg)
  assert m, msg
  first, last, where = int(m[1]), int(m[2]), m[3]
  assert last - first == 2 and first <= 7 <= last
  good = int(os.path.basename(where))
  assert good < first and first - good <= 2  # checkpoint_every=2
  with train.Checkpointer(tmp_path / "checkpoints") as ck:
    assert ck.latest_step() == good
    restored, _ = ck.restore(fh.fresh_state(poisoned=True))
  for leaf in jax.tree.leaves(jax.device_get(restored)):
    assert np.all(np.isfinite(np.asarray(leaf, np.float64)))
  assert [r["epoch"] for r in train.read_metrics(tmp_path / "metrics.jsonl")] == [1]


def test_max_nonfinite_is_settable_and_checked(tmp_path):
  order = np.asarray(jax.random.permutation(jax.random.fold_in(jax.random.key(5), 0),
                                            fh.N_TRAIN))
  with pytest.raises(train.NonFiniteError, match="^1 non-finite steps in a row, steps 2-2"):
    fh.run(None, 1, poisoned=True, poison_rows=(int(order[fh.BATCH]),), max_nonfinite=1)
  with pytest.raises(ValueError, match="max_nonfinite must be an int >= 1, got 0"):
    fh.run(None, 1, max_nonfinite=0)


def test_labels_are_checked_against_the_models_output_width(tmp_path):
  """A 5-logit model on 10-class labels: an error before the first step with a label >= 5."""
  dims = (784, 8, 5)
  with pytest.raises(ValueError, match=r"epoch 1, batch 1: labels must lie in \[0, 5\), "
                                       r"found .* \(the model has 5 outputs\)"):
    fh.run(tmp_path, 1, dims=dims)
  assert not list((tmp_path / "checkpoints").iterdir())


def test_an_unguarded_train_step_with_a_nan_loss_stops_at_once():
  tx, step, _ = fh.pieces()
  train_ds, _ = fh.data()

  def nan_step(state, batch):
    state, metrics = step(state, batch)
    return state, {"loss": metrics["loss"] * np.float32(np.nan)}

  with pytest.raises(train.NonFiniteError, match=r"step 1 \(epoch 1, batch 1\): the loss "
                                                 r"is nan and the train step does not skip"):
    train.fit(nan_step, fh.fresh_state(), train_ds, epochs=1, batch_size=fh.BATCH,
              data_key=jax.random.key(0), progress=False)
