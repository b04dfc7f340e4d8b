"""``handgrad train``: the default run end to end, resume, and one-line errors."""

import json
import os
import pathlib
import subprocess
import sys

import jax
import numpy as np
import pytest

from handgrad import train
from handgrad.cli import main

PNG = b"\x89PNG\r\n\x1a\n"
SRC = pathlib.Path(__file__).resolve().parents[2] / "src"


@pytest.fixture(scope="module")
def default_run(tmp_path_factory):
  """``handgrad train`` exactly as a user types it, no arguments, in a fresh process
  (the time it takes is a benchmark's business, not a test's)."""
  cwd = tmp_path_factory.mktemp("default")
  env = {**os.environ, "PYTHONPATH": os.pathsep.join(
      [str(SRC), *filter(None, [os.environ.get("PYTHONPATH")])])}
  proc = subprocess.run([sys.executable, "-m", "handgrad.cli", "train"], cwd=cwd, env=env,
                        capture_output=True, text=True, timeout=600)
  return proc, cwd / "runs" / "mnist_mlp"


def test_default_run_succeeds_quietly(default_run):
  proc, _ = default_run
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert "Traceback" not in proc.stderr
  assert "absl" not in proc.stderr and "WARNING" not in proc.stderr


def test_default_run_reaches_93_percent(default_run):
  proc, out = default_run
  records = train.read_metrics(out / "metrics.jsonl")
  assert [r["epoch"] for r in records] == list(range(1, 16))
  final = records[-1]
  assert final["test_accuracy"] >= 0.93, final
  assert final["train_loss"] < records[0]["train_loss"]


def test_default_run_writes_its_files(default_run):
  _, out = default_run
  for line in (out / "metrics.jsonl").read_text().splitlines():
    record = json.loads(line)
    assert {"epoch", "step", "train_loss", "train_accuracy", "grad_norm", "test_loss",
            "test_accuracy", "time"} <= set(record)
  assert (out / "curves.png").read_bytes()[:8] == PNG
  steps = sorted(int(p.name) for p in (out / "checkpoints").iterdir() if p.name.isdigit())
  assert steps[-1] == 15 * (4000 // 32) and len(steps) <= 3
  config = json.loads((out / "config.json").read_text())
  assert config["backend"] == "hand" and config["model"] == "mlp"


def test_default_run_shows_progress_and_a_summary(default_run):
  proc, out = default_run
  assert "epoch 15/15" in proc.stderr and "1875/1875" in proc.stderr
  assert "loss=" in proc.stderr and "acc=" in proc.stderr  # live postfix
  final = train.read_metrics(out / "metrics.jsonl")[-1]
  lines = proc.stdout.splitlines()
  assert lines[0].split() == ["epoch", "step", "train", "loss", "train", "acc", "test",
                              "loss", "test", "acc", "time", "s"]
  assert f"test accuracy     {final['test_accuracy']:.4f}" in proc.stdout
  assert "backend           hand" in proc.stdout
  assert "epochs / steps    15 / 1875" in proc.stdout
  assert "wall time" in proc.stdout


def test_resume_of_a_finished_run_changes_nothing(default_run, capsys):
  _, out = default_run
  before = (out / "metrics.jsonl").read_text()
  assert main(["train", "--out", str(out), "--resume", "--no-progress"]) == 0
  captured = capsys.readouterr()
  assert "resuming from" in captured.err and "step 1875" in captured.err
  assert (out / "metrics.jsonl").read_text() == before


def _restore_params(out: pathlib.Path):
  from handgrad._src.cli.train import MLP_DIMS
  from handgrad import nn
  tx = train.make_optimizer("adam", 1e-3)
  template = train.TrainState.create(
      nn.mlp.init(list(MLP_DIMS), key=jax.random.key(0)), tx, key=0)
  with train.Checkpointer(out / "checkpoints") as ck:
    state, meta = ck.restore(template)
  return jax.device_get(state), meta


def test_cli_resume_is_bitwise(tmp_path, capsys):
  args = ["train", "--subset", "320", "--batch-size", "32", "--no-progress", "--seed", "3"]
  assert main([*args, "--epochs", "2", "--out", str(tmp_path / "a")]) == 0
  assert main([*args, "--epochs", "1", "--out", str(tmp_path / "b")]) == 0
  assert main([*args, "--epochs", "2", "--out", str(tmp_path / "b"), "--resume"]) == 0
  a, meta_a = _restore_params(tmp_path / "a")
  b, meta_b = _restore_params(tmp_path / "b")
  assert int(a.step) == int(b.step) == 20 and meta_a == meta_b
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_array_equal(x, y)
  ra = train.read_metrics(tmp_path / "a" / "metrics.jsonl")
  rb = train.read_metrics(tmp_path / "b" / "metrics.jsonl")
  assert [r["train_loss"] for r in ra] == [r["train_loss"] for r in rb]
  # settings that change the run are refused, in one line
  capsys.readouterr()
  assert main([*args, "--epochs", "3", "--out", str(tmp_path / "b"), "--resume",
               "--lr", "0.01"]) == 2
  err = capsys.readouterr().err
  assert err.count("\n") == 1 and "cannot resume a run with other settings: lr=0.001" in err


def one_line_error(capsys, argv, status=2):
  try:
    code = main(argv)
  except SystemExit as e:
    code = e.code
  assert code == status
  captured = capsys.readouterr()
  assert captured.err.count("\n") == 1, captured.err
  assert "Traceback" not in captured.err
  return captured.err.strip()


@pytest.mark.parametrize("argv,needle", [
    (["--epochs", "-1"], "argument --epochs: expected a positive integer, got -1"),
    (["--epochs", "ten"], "argument --epochs: expected a positive integer, got 'ten'"),
    (["--optimizer", "lamb"], "argument --optimizer: invalid choice: 'lamb'"),
    (["--backend", "torch"], "argument --backend: invalid choice: 'torch'"),
    (["--lr", "0"], "argument --lr: expected a positive finite number, got 0"),
    (["--lr", "nan"], "argument --lr: expected a positive finite number, got nan"),
    (["--clip-norm", "-1"], "argument --clip-norm: expected a positive finite number"),
    (["--accumulate", "0"], "argument --accumulate: expected a positive integer, got 0"),
])
def test_bad_arguments_give_one_line(capsys, tmp_path, monkeypatch, argv, needle):
  monkeypatch.chdir(tmp_path)
  err = one_line_error(capsys, ["train", *argv])
  assert err.startswith("handgrad train: error: ") and needle in err
  assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize("argv,needle", [
    (["--batch-size", "33", "--accumulate", "2"],
     "--batch-size 33 is not a multiple of --accumulate 2"),
    (["--batch-size", "5000"], "--batch-size 5000 is larger than the training set (4000"),
    (["--freeze", "encoder"], "frozen prefix 'encoder' matches no parameter; the "
                              "parameters are layers/0/W"),
])
def test_bad_combinations_give_one_line(capsys, tmp_path, monkeypatch, argv, needle):
  monkeypatch.chdir(tmp_path)
  err = one_line_error(capsys, ["train", *argv])
  assert err.startswith("handgrad train: error: ") and needle in err
  assert not (tmp_path / "runs").exists()


def test_unreadable_data_gives_one_line(capsys, tmp_path):
  err = one_line_error(capsys, ["train", "--data-dir", str(tmp_path / "nope"), "--out", str(tmp_path / "run")])
  assert err.endswith(f"--data-dir {tmp_path / 'nope'}: no such directory")
  (tmp_path / "empty").mkdir()
  err = one_line_error(capsys, ["train", "--data-dir", str(tmp_path / "empty"), "--out", str(tmp_path / "run")])
  assert "train-images-idx3-ubyte[.gz]: missing MNIST file" in err
  bad = tmp_path / "bad"
  bad.mkdir()
  for name in ("train-images-idx3-ubyte", "train-labels-idx1-ubyte",
               "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"):
    (bad / name).write_bytes(b"\x00\x00\x08")
  err = one_line_error(capsys, ["train", "--data-dir", str(bad), "--out", str(tmp_path / "run")])
  assert "truncated" in err
  (tmp_path / "file").write_text("x")
  err = one_line_error(capsys, ["train", "--out", str(tmp_path / "file"), "--subset", "64",
                                "--no-progress"])
  assert "file" in err
