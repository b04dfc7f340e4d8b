"""Orbax checkpoints and resume: a run stopped anywhere and resumed ends with exactly
(bitwise, on CPU) the state of an uninterrupted run."""

import functools
import json
import os
import signal
import subprocess
import sys
import textwrap

import jax
import numpy as np
import optax
import pytest

from handgrad import nn
from handgrad import train
from handgrad.data import Dataset
from handgrad.data import load_mnist

N_TRAIN, BATCH = 320, 32  # 10 steps per epoch


@functools.lru_cache(maxsize=None)
def _pieces(frozen):
  """(optimizer, train_step, eval_step, train subset, test subset), built once so that
  every run reuses one compiled step."""
  train_full, test_full = load_mnist()
  train_ds = Dataset(train_full.x[:N_TRAIN], train_full.y[:N_TRAIN], name="sub")
  test_ds = Dataset(test_full.x[:200], test_full.y[:200], name="sub-test")
  tx = train.make_optimizer("adam", 1e-3, clip_norm=1.0, frozen=frozen)
  step = train.make_train_step(train.classification_loss(nn.mlp.apply), tx, frozen=frozen)
  eval_step = train.make_eval_step(train.classification_eval(nn.mlp.apply))
  return tx, step, eval_step, train_ds, test_ds


_init = jax.jit(lambda k: nn.mlp.init([784, 32, 10], key=k))


def setup(frozen=None):
  """A small run: (train_step, fresh state, train subset, test subset, eval_step)."""
  tx, step, eval_step, train_ds, test_ds = _pieces(frozen)
  state = train.TrainState.create(_init(jax.random.key(0)), tx, key=1)
  return step, state, train_ds, test_ds, eval_step


def run_fit(out_dir, epochs, *, resume=False, config=None, **kw):
  step, state, train_ds, test_ds, eval_step = setup()
  return train.fit(step, state, train_ds, epochs=epochs, batch_size=BATCH,
                   data_key=jax.random.key(5), eval_step=eval_step, eval_ds=test_ds,
                   out_dir=out_dir, resume=resume, progress=False,
                   config=config or {"run": "test"}, log=lambda msg: None, **kw)


def assert_states_equal(a, b):
  la, ta = jax.tree.flatten(jax.device_get(a))
  lb, tb = jax.tree.flatten(jax.device_get(b))
  assert ta == tb
  for x, y in zip(la, lb):
    assert np.asarray(x).dtype == np.asarray(y).dtype
    np.testing.assert_array_equal(x, y)


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
  """The uninterrupted reference: 3 epochs = 30 steps."""
  return run_fit(tmp_path_factory.mktemp("straight"), 3)


# --- the checkpointer ----------------------------------------------------------------

def test_checkpointer_round_trip_is_exact(tmp_path):
  step, state, train_ds, _, _ = setup(frozen="layers/0")
  from handgrad.data import batches
  for batch in list(batches(train_ds, BATCH, key=jax.random.key(0)))[:3]:
    state, _ = step(state, batch)
  saved = jax.device_get(state)
  with train.Checkpointer(tmp_path / "ck", max_to_keep=2) as ck:
    assert ck.latest_step() is None
    assert ck.save(state, {"epoch": 0, "note": "x"}) == 3
    _, template, _, _, _ = setup(frozen="layers/0")
    restored, meta = ck.restore(template)
  assert isinstance(restored, train.TrainState)
  assert meta == {"epoch": 0, "note": "x"}
  assert_states_equal(restored, saved)  # params, Adam moments, MaskedNodes, key, step


def test_checkpointer_keeps_the_newest_and_refuses_a_foreign_template(tmp_path):
  _, state, _, _, _ = setup()
  with train.Checkpointer(tmp_path, max_to_keep=2) as ck:
    for s in (1, 2, 3):
      ck.save(state._replace(step=np.int32(s)))
    assert ck.all_steps() == [2, 3] and ck.latest_step() == 3
    with pytest.raises(FileNotFoundError):
      ck.restore(state, step=1)
    other = train.TrainState.create(nn.mlp.init([784, 8, 10], key=jax.random.key(0)),
                                    optax.sgd(0.1), key=0)
    with pytest.raises(ValueError, match="does not match"):
      ck.restore(other)


# --- resume through fit --------------------------------------------------------------

def test_fit_writes_metrics_curves_and_checkpoints(straight):
  out = straight.out_dir
  records = train.read_metrics(out / "metrics.jsonl")
  assert [r["epoch"] for r in records] == [1, 2, 3]
  assert [r["step"] for r in records] == [10, 20, 30]
  assert records == straight.history
  for key in ("train_loss", "train_accuracy", "grad_norm", "test_loss", "test_accuracy"):
    assert np.isfinite(records[-1][key])
  assert (out / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
  assert sorted(int(p.name) for p in (out / "checkpoints").iterdir()) == [10, 20, 30]
  assert len(straight.step_losses) == 30 and straight.start_step == 0


def test_resume_after_an_epoch_is_bitwise(straight, tmp_path):
  first = run_fit(tmp_path, 1)
  assert int(first.state.step) == 10
  second = run_fit(tmp_path, 3, resume=True)
  assert second.start_step == 10 and len(second.step_losses) == 20
  assert_states_equal(second.state, straight.state)
  np.testing.assert_array_equal(second.step_losses, straight.step_losses[10:])
  records = train.read_metrics(tmp_path / "metrics.jsonl")
  assert [r["epoch"] for r in records] == [1, 2, 3]
  for a, b in zip(records, straight.history):
    assert {k: v for k, v in a.items() if k != "time"} == \
           {k: v for k, v in b.items() if k != "time"}


class Crash(Exception):
  pass


def test_crash_mid_epoch_then_resume_is_bitwise(straight, tmp_path):
  """A failure at step 17 (mid epoch 2) with checkpoints every 5 steps: the resumed run
  restores step 15, skips the first 5 batches of epoch 2 and ends bitwise equal."""
  def crash(step, metrics):
    if step == 17:
      raise Crash

  with pytest.raises(Crash):
    run_fit(tmp_path, 3, checkpoint_every=5, on_step=crash)
  with train.Checkpointer(tmp_path / "checkpoints") as ck:
    assert ck.latest_step() == 15
  resumed = run_fit(tmp_path, 3, resume=True, checkpoint_every=5)
  assert resumed.start_step == 15
  assert_states_equal(resumed.state, straight.state)
  assert [r["epoch"] for r in train.read_metrics(tmp_path / "metrics.jsonl")] == [1, 2, 3]


_KILLED_RUN = textwrap.dedent("""
    import os, signal, sys
    sys.path.insert(0, {test_dir!r})
    import test_checkpoint_resume as t

    def kill(step, metrics):
      if step == 23:
        os.kill(os.getpid(), signal.SIGKILL)  # no cleanup, no finally

    t.run_fit({out!r}, 3, checkpoint_every=4, on_step=kill)
    print("not killed")
""")


def test_sigkill_then_resume_is_bitwise(straight, tmp_path):
  """A real SIGKILL at step 23 in another process; resuming here from its newest
  checkpoint (step 20) gives the uninterrupted run's final state bit for bit."""
  script = _KILLED_RUN.format(test_dir=os.path.dirname(__file__), out=str(tmp_path))
  proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                        timeout=300)
  assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
  assert "not killed" not in proc.stdout
  with train.Checkpointer(tmp_path / "checkpoints") as ck:
    assert ck.latest_step() == 20
  resumed = run_fit(tmp_path, 3, resume=True)
  assert resumed.start_step == 20
  assert_states_equal(resumed.state, straight.state)


def test_resume_with_other_settings_is_refused(tmp_path):
  run_fit(tmp_path, 1, config={"lr": 1e-3, "batch_size": 32})
  with pytest.raises(ValueError, match=r"cannot resume a run with other settings: "
                                       r"lr=0\.001 \(now 0\.01\)"):
    run_fit(tmp_path, 2, resume=True, config={"lr": 1e-2, "batch_size": 32})


def test_resume_without_checkpoint_starts_fresh_and_a_fresh_run_replaces(tmp_path):
  notes = []
  step, state, train_ds, _, _ = setup()
  result = train.fit(step, state, train_ds, epochs=1, batch_size=BATCH,
                     data_key=jax.random.key(5), out_dir=tmp_path, resume=True,
                     progress=False, log=notes.append)
  assert result.start_step == 0 and "starting from step 0" in notes[0]
  again = run_fit(tmp_path, 1, overwrite=True)  # the old run is replaced on request
  assert again.start_step == 0
  assert [r["epoch"] for r in train.read_metrics(tmp_path / "metrics.jsonl")] == [1]


def test_resume_needs_an_output_directory():
  step, state, train_ds, _, _ = setup()
  with pytest.raises(ValueError, match="resume needs an output directory"):
    train.fit(step, state, train_ds, epochs=1, batch_size=BATCH,
              data_key=jax.random.key(5), resume=True, progress=False)


def test_fit_argument_errors():
  step, state, train_ds, _, _ = setup()
  with pytest.raises(ValueError, match="epochs must be an int >= 0"):
    train.fit(step, state, train_ds, epochs=-1, batch_size=BATCH,
              data_key=jax.random.key(5), progress=False)
  with pytest.raises(ValueError, match="larger than the training set"):
    train.fit(step, state, train_ds, epochs=1, batch_size=N_TRAIN + 1,
              data_key=jax.random.key(5), progress=False)


def test_metrics_file_lines_are_json(straight):
  for line in (straight.out_dir / "metrics.jsonl").read_text().splitlines():
    assert isinstance(json.loads(line), dict)
