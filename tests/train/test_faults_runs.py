"""Fault injection: damaged checkpoints, reruns, concurrent runs, bad scaler and safe
optimizer arguments, and the one-line errors of ``handgrad train``."""

import errno
import gzip
import json
import os
import socket
import subprocess
import sys
import textwrap

import jax
import numpy as np
import optax
import pytest

sys.path.insert(0, os.path.dirname(__file__))
import fault_helpers as fh  # noqa: E402

from handgrad import train  # noqa: E402
from handgrad.cli import main  # noqa: E402


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
  out = tmp_path_factory.mktemp("straight")
  return fh.run(out, 2), fh.records_without_time(out / "metrics.jsonl")


def _state_files(step_dir):
  return sorted(p for p in (step_dir / "state").rglob("*") if p.is_file()
                and p.stat().st_size > 64 and "metadata" not in p.name)


# --- damaged checkpoints -------------------------------------------------------------

@pytest.mark.parametrize("damage", ["flip", "truncate"])
def test_a_damaged_newest_checkpoint_falls_back_with_one_warning(straight, tmp_path, damage):
  reference, records = straight
  fh.run(tmp_path, 2, checkpoint_every=3)  # checkpoints 6, 9, 12 kept
  newest = tmp_path / "checkpoints" / "12"
  for f in _state_files(newest):
    data = bytearray(f.read_bytes())
    if damage == "flip":
      data[len(data) // 2:len(data) // 2 + 64] = bytes(b ^ 0xFF for b in
                                                        data[len(data) // 2:len(data) // 2 + 64])
    else:
      data = data[:len(data) // 2]
    f.write_bytes(bytes(data))
  notes = []
  resumed = fh.run(tmp_path, 2, checkpoint_every=3, resume=True, notes=notes)
  warnings = [n for n in notes if "falling back" in n]
  assert len(warnings) == 1 and "\n" not in warnings[0]
  assert warnings[0].startswith(f"{newest}: ") and "step 9" in warnings[0]
  assert resumed.start_step == 9
  fh.assert_states_equal(resumed.state, reference.state)
  assert fh.records_without_time(tmp_path / "metrics.jsonl") == records
  assert (tmp_path / "checkpoints.damaged" / "12").is_dir()  # set aside, not deleted


def test_no_intact_checkpoint_is_one_line(tmp_path):
  fh.run(tmp_path, 1)
  for step_dir in (tmp_path / "checkpoints").iterdir():
    for f in _state_files(step_dir):
      f.write_bytes(f.read_bytes()[:10])
  with pytest.raises(train.CheckpointError) as e:
    fh.run(tmp_path, 2, resume=True)
  assert "\n" not in str(e.value) and "no intact checkpoint to resume from" in str(e.value)


def test_validation_catches_non_finite_and_tampered_state(tmp_path):
  state = fh.fresh_state()
  with train.Checkpointer(tmp_path) as ck:
    ck.save(state, {"a": 1})
    # the checksum is part of the metadata: a restored array that differs is caught
    bad = state._replace(step=np.int32(1), params=jax.tree.map(
        lambda x: x.at[0].set(np.nan) if x.ndim else x, state.params))
    ck.save(bad)
    with pytest.raises(train.CheckpointError, match="holds non-finite values"):
      ck.restore(fh.fresh_state(), step=1)
    restored, meta = ck.restore(fh.fresh_state(), step=0)
  assert meta == {"a": 1}
  other = train.TrainState.create({"w": np.zeros(3, np.float32)}, optax.sgd(0.1), key=0)
  with train.Checkpointer(tmp_path) as ck, pytest.raises(ValueError, match="does not match"):
    ck.restore(other, step=0)


# --- reruns and locks ----------------------------------------------------------------

def _snapshot(out):
  return {str(p.relative_to(out)): p.read_bytes() for p in sorted(out.rglob("*"))
          if p.is_file() and p.name != ".handgrad.lock"}


def test_a_rerun_is_refused_and_destroys_nothing(tmp_path, capsys):
  args = ["train", "--subset", "64", "--batch-size", "32", "--epochs", "1",
          "--no-progress", "--out", str(tmp_path)]
  assert main(args) == 0
  before = _snapshot(tmp_path)
  capsys.readouterr()
  for extra in ([], ["--lr", "0.5"], ["--batch-size", "33"]):
    code = main(args + extra)
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1, err
    assert _snapshot(tmp_path) == before
  # The command line names its flags, not fit's keyword arguments.
  err = main_err(capsys, args)
  assert err.startswith(f"handgrad train: error: {tmp_path}: holds a previous run ("), err
  assert err.endswith("); pass --resume to continue it or --overwrite to replace it\n"), err
  assert "=True" not in err and err.count("\n") == 1
  # a refused --resume leaves config.json as it was
  assert main(args + ["--resume", "--lr", "0.01"]) == 2
  assert _snapshot(tmp_path) == before
  capsys.readouterr()
  assert main(args + ["--overwrite", "--seed", "4"]) == 0
  assert json.loads((tmp_path / "config.json").read_text())["seed"] == 4


def test_fit_refuses_a_rerun_naming_its_keyword_arguments(tmp_path):
  fh.run(tmp_path, 1)
  before = _snapshot(tmp_path)
  with pytest.raises(train.RunExistsError) as info:
    fh.run(tmp_path, 1)
  message = str(info.value)
  assert message.endswith("pass resume=True to continue it or overwrite=True to replace it")
  assert "--" not in message and "\n" not in message
  assert info.value.out == tmp_path and info.value.previous
  assert _snapshot(tmp_path) == before


def main_err(capsys, argv):
  main(argv)
  return capsys.readouterr().err


def test_help_says_what_a_rerun_does(capsys):
  with pytest.raises(SystemExit):
    main(["train", "--help"])
  text = capsys.readouterr().out
  assert "--overwrite" in text and "never replaced silently" in text and "``" not in text


def test_a_second_run_is_refused_naming_the_first(tmp_path):
  script = textwrap.dedent(f"""
      import sys, time
      sys.path.insert(0, {str(os.path.dirname(os.path.dirname(os.path.dirname(__file__))) + '/src')!r})
      from handgrad._src.train.lock import RunLock
      lock = RunLock({str(tmp_path)!r})
      print("locked", flush=True)
      time.sleep(120)
  """)
  holder = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
  try:
    assert holder.stdout.readline().strip() == "locked"
    with pytest.raises(train.RunLockedError) as e:
      fh.run(tmp_path, 1)
    msg = str(e.value)
    assert f"pid {holder.pid} on host {socket.gethostname()}" in msg and "\n" not in msg
  finally:
    holder.kill()
    holder.wait(timeout=60)
  # the holder died without releasing: its lock is stale and is taken over
  notes = []
  result = fh.run(tmp_path, 1, notes=notes)
  assert int(result.state.step) == fh.STEPS_PER_EPOCH
  assert any(f"stale lock" in n and f"pid {holder.pid}" in n for n in notes)


def test_a_run_inside_a_run_is_refused(tmp_path):
  def nested(step, metrics):
    if step == 2:
      fh.run(tmp_path, 1, overwrite=True)

  with pytest.raises(train.RunLockedError, match=f"pid {os.getpid()}"):
    fh.run(tmp_path, 1, on_step=nested)


# --- loss scaling and the safe optimizer ---------------------------------------------

@pytest.mark.parametrize("kwargs,needle", [
    ({"growth_factor": 0.5}, "growth_factor must be a finite number > 1"),
    ({"backoff_factor": 2.0}, "backoff_factor must lie in (0, 1)"),
    ({"min_scale": 0.0}, "min_scale must be a finite positive number"),
    ({"initial_scale": float("nan")}, "initial_scale must be a finite positive"),
    ({"initial_scale": -1.0}, "initial_scale must be a finite positive"),
    ({"initial_scale": float("inf")}, "initial_scale must be a finite positive"),
    ({"growth_interval": 0}, "growth_interval must be a positive int"),
])
def test_loss_scale_arguments_are_checked(kwargs, needle):
  with pytest.raises(ValueError) as e:
    train.DynamicLossScale(**kwargs)
  assert needle in str(e.value)


def test_loss_scale_grows_only_to_a_finite_value():
  scaler = train.DynamicLossScale(initial_scale=2.0 ** 127, growth_interval=1)
  state = scaler.init()
  for _ in range(3):
    state = scaler.adjust(state, np.bool_(True))
    assert np.isfinite(float(state.scale)) and float(state.scale) == 2.0 ** 127
  state = scaler.adjust(state, np.bool_(False))
  assert float(state.scale) == 2.0 ** 126  # it can still back off


@pytest.mark.parametrize("kwargs,needle", [
    ({"max_grad_norm": float("nan")}, "max_grad_norm must be a finite positive number"),
    ({"learning_rate": float("nan")}, "learning_rate must be a finite positive number"),
    ({"learning_rate": -0.1}, "learning_rate must be a finite positive number"),
    ({"explosion_factor": -1.0}, "explosion_factor must be a finite positive number"),
    ({"patience": 0}, "patience must be an int >= 1"),
])
def test_safe_optimizer_arguments_are_checked(kwargs, needle):
  with pytest.raises(ValueError) as e:
    train.safe_optimizer(optax.sgd, **{"learning_rate": 0.1, **kwargs})
  assert needle in str(e.value)


def test_safe_optimizer_never_applies_a_non_finite_update():
  # finite gradient, but an inner direction that overflows: the update is skipped
  tx = train.safe_optimizer(optax.scale(np.float32(3e38)), learning_rate=10.0,
                            max_grad_norm=1e30)
  params = {"w": np.ones(3, np.float32)}
  state = tx.init(params)
  updates, new_state = tx.update({"w": np.full(3, 1.0, np.float32)}, state, params)
  np.testing.assert_array_equal(updates["w"], np.zeros(3, np.float32))
  assert bool(new_state.last_skipped) and int(new_state.num_skipped) == 1


# --- one-line errors -----------------------------------------------------------------

def one_line(capsys, argv, status=2):
  code = main(argv)
  err = capsys.readouterr().err
  assert code == status and err.count("\n") == 1 and "Traceback" not in err, err
  return err


@pytest.mark.parametrize("seed", ["-1", str(2 ** 63), "1e3"])
def test_seed_out_of_range_is_one_line(capsys, seed):
  with pytest.raises(SystemExit) as e:
    main(["train", "--seed", seed])
  assert e.value.code == 2
  err = capsys.readouterr().err
  assert err.count("\n") == 1 and "argument --seed" in err


def test_out_that_is_a_file_is_one_line(capsys, tmp_path):
  (tmp_path / "f").write_text("x")
  err = one_line(capsys, ["train", "--out", str(tmp_path / "f"), "--subset", "64"])
  assert "exists and is not a directory" in err


def test_corrupt_gz_idx_is_one_line(capsys, tmp_path):
  good = gzip.compress(b"\x00\x00\x08\x01" + (4).to_bytes(4, "big") + bytes(4))
  for name in ("train-images-idx3-ubyte", "train-labels-idx1-ubyte",
               "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"):
    (tmp_path / f"{name}.gz").write_bytes(good[:12] + bytes(b ^ 0x55 for b in good[12:]))
  err = one_line(capsys, ["train", "--data-dir", str(tmp_path), "--out", str(tmp_path / "run")])
  assert "cannot read the" in err and ".gz" in err


def test_out_of_memory_is_one_line_with_a_hint(capsys, tmp_path, monkeypatch):
  def oom(*args, **kwargs):
    raise jax.errors.JaxRuntimeError("RESOURCE_EXHAUSTED: Out of memory while trying to "
                                     "allocate 123 bytes.\nmore detail")
  from handgrad._src.train import loop
  monkeypatch.setattr(loop, "fit", oom)  # what the train command calls
  err = one_line(capsys, ["train", "--subset", "64", "--out", str(tmp_path / "o")])
  assert "out of memory" in err and "--accumulate" in err and "--batch-size" in err


def test_disk_full_during_a_save_is_one_line_and_leaves_no_tmp(tmp_path, monkeypatch):
  state = fh.fresh_state()
  ck = train.Checkpointer(tmp_path)

  def full(*args, **kwargs):
    (tmp_path / f"3{'.orbax-checkpoint-tmp'}-1").mkdir()
    raise OSError(errno.ENOSPC, "No space left on device")
  monkeypatch.setattr(ck._manager, "save", full)
  with pytest.raises(OSError) as e:
    ck.save(state._replace(step=np.int32(3)))
  assert e.value.errno == errno.ENOSPC and "no space left on device" in str(e.value)
  assert "\n" not in str(e.value) and not list(tmp_path.glob("*tmp*"))


def test_ctrl_c_during_a_save_is_held_until_the_save_is_done(tmp_path):
  import signal
  state = fh.fresh_state()
  with train.Checkpointer(tmp_path) as ck:
    real = ck._manager.save

    def interrupted_save(*args, **kwargs):
      os.kill(os.getpid(), signal.SIGINT)  # Ctrl-C arrives in the middle of the save
      return real(*args, **kwargs)
    ck._manager.save = interrupted_save
    with pytest.raises(KeyboardInterrupt):
      ck.save(state._replace(step=np.int32(2)))
    assert ck.all_steps() == [2]
  assert not list(tmp_path.glob("*tmp*"))
  with train.Checkpointer(tmp_path) as ck:
    ck.restore(fh.fresh_state())


def test_the_default_directory_gives_way_to_a_numbered_one(tmp_path, monkeypatch, capsys):
  monkeypatch.chdir(tmp_path)
  args = ["train", "--subset", "64", "--batch-size", "32", "--epochs", "1", "--no-progress"]
  assert main(args) == 0
  first = _snapshot(tmp_path / "runs" / "mnist_mlp")
  capsys.readouterr()
  assert main(args) == 0
  err = capsys.readouterr().err
  assert "runs/mnist_mlp holds a previous run; writing this one to runs/mnist_mlp-2" in err
  assert _snapshot(tmp_path / "runs" / "mnist_mlp") == first
  assert train.read_metrics(tmp_path / "runs" / "mnist_mlp-2" / "metrics.jsonl")
