"""Two processes on this machine (jax.distributed over loopback, 4 CPU devices each,
gloo collectives) run ``handgrad train --mesh ...`` and end with the parameters of one
process with 8 devices: data parallel (the MLP), FSDP (the MLP's parameters and Adam
moments split over both processes' devices) and Megatron (the transformer,
data=4,model=2).  A two-process run stopped after an epoch (``--epochs 1``, or SIGTERM
sent to one of the processes) and resumed in two processes ends bitwise where the
uninterrupted two-process run ends.  The checkpoints of such runs are saved and
restored by both processes together; a damaged one (seen by one process or by all)
makes both fall back to the same older one.

Only process 0 writes the run's files (metrics, config, curves, lock); every process
writes its pieces of the orbax checkpoints.  Every process is bounded in time and killed
if the other fails.

Measured (jax 0.10.2, CPU, batch 32 on 256 digits): two processes against one with 8
devices differ by at most 1.6e-7 in the parameters (MLP, data parallel, Adam, 8 steps),
1.3e-7 (MLP, FSDP, Adam, 24 steps), 1.2e-7 (transformer, Megatron, SGD 0.1, 8 steps;
SGD because Adam turns the key biases' float32-noise gradients into steps of about lr,
see test_sharded_train.py); the resumed FSDP runs equal the uninterrupted one bit for
bit.
"""

from __future__ import annotations

import json
import os
import pathlib
import shutil
import signal
import socket
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from handgrad import train
from handgrad._src.cli import train as train_cmd

HERE = pathlib.Path(__file__).resolve().parent
SRC = HERE.parents[2] / "src"
TIMEOUT = 300.0
COMMON = ["train", "--subset", "256", "--batch-size", "32", "--no-progress"]
ARGS = [*COMMON, "--epochs", "1", "--mesh", "data=8"]
FSDP = [*COMMON, "--mesh", "data=8", "--sharding", "fsdp"]
MEGATRON = [*COMMON, "--model", "transformer", "--optimizer", "sgd", "--lr", "0.1",
            "--epochs", "1", "--mesh", "data=4,model=2"]
LAUNCH = "import sys; from handgrad.cli import main; sys.exit(main(sys.argv[1:]))"


def _env(devices: int) -> dict:
  env = dict(os.environ)
  env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "") +
                      f" --xla_force_host_platform_device_count={devices}").strip()
  env["JAX_PLATFORMS"] = "cpu"
  env["PYTHONPATH"] = os.pathsep.join([str(SRC), env.get("PYTHONPATH", "")])
  return env


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _start(args, devices, log, script=None):
  command = [sys.executable, str(script)] if script else [sys.executable, "-c", LAUNCH]
  return subprocess.Popen([*command, *args], env=_env(devices), stdout=log,
                          stderr=subprocess.STDOUT)


def _wait_all(procs, logs, *, expect_success: bool = True) -> list[int]:
  """Waits for every process; on a failure or the deadline kills the others.  Returns
  the exit codes (all 0 unless ``expect_success=False``)."""
  deadline = time.monotonic() + TIMEOUT
  try:
    while any(p.poll() is None for p in procs):
      if time.monotonic() > deadline:
        raise AssertionError(f"timed out after {TIMEOUT:.0f} s")
      if expect_success and any(p.poll() not in (None, 0) for p in procs):
        break
      time.sleep(0.2)
  finally:
    for p in procs:
      if p.poll() is None:
        p.kill()
        p.wait()
    for log in logs:
      log.close()
  if expect_success:
    for i, (p, log) in enumerate(zip(procs, logs)):
      assert p.returncode == 0, (f"process {i} exited {p.returncode}:\n"
                                 + pathlib.Path(log.name).read_text()[-4000:])
  return [p.returncode for p in procs]


def _two(tmp: pathlib.Path, name: str, args, *, script=None, expect_success=True):
  """Two processes (4 devices each) into ``tmp/name``; their logs are
  ``tmp/name.p0.log`` and ``tmp/name.p1.log``."""
  port = _free_port()
  out = tmp / name
  logs = [open(tmp / f"{name}.p{i}.log", "w") for i in range(2)]
  if script is None:
    procs = [_start([*args, "--out", str(out), "--coordinator", f"127.0.0.1:{port}",
                     "--num-processes", "2", "--process-id", str(i)], 4, logs[i])
             for i in range(2)]
  else:
    out.mkdir()
    procs = [_start([str(port), str(i), str(out)], 4, logs[i], script) for i in range(2)]
  codes = _wait_all(procs, logs, expect_success=expect_success)
  return out if expect_success else codes


def _one(tmp: pathlib.Path, name: str, args) -> pathlib.Path:
  """One process with 8 devices into ``tmp/name``."""
  log = open(tmp / f"{name}.log", "w")
  _wait_all([_start([*args, "--out", str(tmp / name)], 8, log)], [log])
  return tmp / name


def _final_state(out: pathlib.Path, model: str = "mlp", optimizer: str = "adam"):
  m = train_cmd._model(model)
  tx = train.make_optimizer(optimizer, 1e-3)
  template = train.TrainState.create(m.init(jax.random.key(0)), tx, key=0)
  with train.Checkpointer(out / "checkpoints") as ckpt:
    state, _ = ckpt.restore(template)
  return state


def _leaves(state):
  return jax.tree.leaves((state.params, state.opt_state, state.step, state.key))


def _assert_close(a, b, *, atol: float = 2e-6) -> float:
  """Parameters and optimizer state within float32 reduction-order tolerance; returns
  the largest parameter difference."""
  for x, y in zip(jax.tree.leaves((a.params, a.opt_state)),
                  jax.tree.leaves((b.params, b.opt_state))):
    np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=5e-4, atol=atol)
  return max(float(np.max(np.abs(np.asarray(x, np.float64) - np.asarray(y))))
             for x, y in zip(jax.tree.leaves(a.params), jax.tree.leaves(b.params)))


def _records(out: pathlib.Path):
  return [{k: v for k, v in r.items() if k != "time"}
          for r in train.read_metrics(out / "metrics.jsonl")]


@pytest.fixture(scope="module")
def tmp(tmp_path_factory):
  return tmp_path_factory.mktemp("distributed")


def test_two_processes_match_one_process_with_8_devices(tmp):
  two, one = _two(tmp, "data", ARGS), _one(tmp, "data-one", ARGS)
  # Process 0 alone wrote the run: one record for the one epoch, its summary printed.
  assert len(train.read_metrics(two / "metrics.jsonl")) == 1
  assert "final train loss" in (tmp / "data.p0.log").read_text()
  assert "final train loss" not in (tmp / "data.p1.log").read_text()
  a, b = _final_state(two), _final_state(one)
  assert int(a.step) == int(b.step) == 8
  # The same partitioned program over the same 8 devices; only the float32 order of
  # the cross-process all-reduce may differ (measured: 1.6e-7 at most, jax 0.10.2).
  worst = _assert_close(a, b, atol=1e-6)
  print(f"data parallel, two processes vs one: max abs difference {worst:.3g}")


@pytest.fixture(scope="module")
def fsdp_runs(tmp):
  """Three epochs of FSDP in two processes, uninterrupted; the first epoch alone; the
  same three epochs in one process with 8 devices."""
  return {"two": _two(tmp, "fsdp3", [*FSDP, "--epochs", "3"]),
          "first": _two(tmp, "fsdp1", [*FSDP, "--epochs", "1"]),
          "one": _one(tmp, "fsdp3-one", [*FSDP, "--epochs", "3"])}


def test_fsdp_two_processes_match_one_process_with_8_devices(fsdp_runs):
  a, b = _final_state(fsdp_runs["two"]), _final_state(fsdp_runs["one"])
  assert int(a.step) == int(b.step) == 24
  worst = _assert_close(a, b)
  print(f"fsdp, two processes vs one: max abs difference {worst:.3g}")


def _resume_and_compare(tmp, name: str, reference: pathlib.Path, step: int) -> None:
  """Resumes ``tmp/name`` in two processes up to three epochs: bitwise the reference."""
  _two(tmp, name, [*FSDP, "--epochs", "3", "--resume"])
  p0, p1 = ((tmp / f"{name}.p{i}.log").read_text() for i in range(2))
  assert f"resuming from {tmp / name / 'checkpoints' / str(step)}: step {step}" in p0, p0[-2000:]
  assert "resuming from" not in p1
  a, b = _final_state(tmp / name), _final_state(reference)
  assert int(a.step) == 24
  for x, y in zip(_leaves(a), _leaves(b)):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))  # bitwise
  assert _records(tmp / name) == _records(reference)


def test_a_resumed_two_process_run_equals_the_uninterrupted_one(fsdp_runs, tmp):
  shutil.copytree(fsdp_runs["first"], tmp / "fsdp-resumed")
  _resume_and_compare(tmp, "fsdp-resumed", fsdp_runs["two"], 8)


def test_sigterm_to_one_process_stops_both_then_resume(fsdp_runs, tmp):
  # SIGTERM reaches process 1 alone, after the first epoch: both processes stop at
  # the same step (the first multiple of 8 or epoch end after it) with one checkpoint
  # saved together, and the run resumed in two processes ends as the uninterrupted one.
  name, port = "fsdp-sigterm", _free_port()
  out = tmp / name
  logs = [open(tmp / f"{name}.p{i}.log", "w") for i in range(2)]
  procs = [_start([*FSDP, "--epochs", "3", "--out", str(out), "--coordinator",
                   f"127.0.0.1:{port}", "--num-processes", "2", "--process-id", str(i)],
                  4, logs[i]) for i in range(2)]
  deadline = time.monotonic() + TIMEOUT
  while (not train.read_metrics(out / "metrics.jsonl") and time.monotonic() < deadline
         and all(p.poll() is None for p in procs)):
    time.sleep(0.05)
  if procs[1].poll() is None:
    procs[1].send_signal(signal.SIGTERM)
  codes = _wait_all(procs, logs, expect_success=False)
  texts = [(tmp / f"{name}.p{i}.log").read_text() for i in range(2)]
  assert codes == [128 + signal.SIGTERM] * 2, (codes, texts[0][-2000:], texts[1][-2000:])
  stops = [[line for line in t.splitlines() if "stopped by SIGTERM after step" in line]
           for t in texts]
  assert len(stops[0]) == len(stops[1]) == 1, stops
  step = int(stops[0][0].split("after step ")[1].split(";")[0])
  assert step in (8, 16) and f"after step {step};" in stops[1][0], stops
  with train.Checkpointer(out / "checkpoints") as ckpt:
    assert ckpt.latest_step() == step
  _resume_and_compare(tmp, name, fsdp_runs["two"], step)


def _snapshot(out: pathlib.Path) -> dict:
  return {str(p.relative_to(out)): p.read_bytes() for p in sorted(out.rglob("*"))
          if p.is_file() and p.name != ".handgrad.lock"}


def test_a_rerun_of_two_processes_is_refused_by_both(fsdp_runs, tmp):
  rerun = tmp / "fsdp-rerun"
  shutil.copytree(fsdp_runs["first"], rerun)
  before = _snapshot(rerun)
  codes = _two(tmp, "fsdp-rerun", [*FSDP, "--epochs", "1"], expect_success=False)
  assert codes == [2, 2], codes
  for i in range(2):
    log = (tmp / f"fsdp-rerun.p{i}.log").read_text()
    assert f"{rerun}: holds a previous run" in log, log[-2000:]
  assert _snapshot(rerun) == before  # nothing touched


def test_megatron_two_processes_match_one_process_with_8_devices(tmp):
  two, one = _two(tmp, "megatron", MEGATRON), _one(tmp, "megatron-one", MEGATRON)
  a = _final_state(two, "transformer", "sgd")
  b = _final_state(one, "transformer", "sgd")
  assert int(a.step) == int(b.step) == 8
  worst = _assert_close(a, b)
  print(f"megatron, two processes vs one: max abs difference {worst:.3g}")


def test_checkpoints_of_two_processes(tmp):
  out = _two(tmp, "checkpointer", (), script=HERE / "cases_distributed_checkpoint.py")
  results = []
  for i in range(2):
    text = (tmp / f"checkpointer.p{i}.log").read_text().strip().splitlines()
    results.append(json.loads(text[-1]))
  r0, r1 = results
  assert "error" not in r0, r0.get("traceback", r0)
  assert "error" not in r1, r1.get("traceback", r1)
  assert r0["truncated"] >= 1
  r0.pop("truncated")
  assert r0 == r1  # every process took the same decisions
  assert r0["w0_sharded"] and r0["steps"] == [0, 1, 2]
  # Steps 2 (checksum) and 1 (a truncated piece) damaged: both set aside, one warning.
  assert r0["fallback_step"] == 0 and r0["fallback_meta"] == {"note": "good"}
  assert r0["fallback_equal"] and r0["fallback_sharded"]
  assert len(r0["warnings"]) == 1 and "2 damaged checkpoints" in r0["warnings"][0]
  assert "checkpoints/2: the checksum" in r0["warnings"][0]
  assert "checkpoints/1: unreadable state" in r0["warnings"][0]
  assert r0["set_aside"] == ["1", "2"] and r0["steps_after"] == [0]
  # A NaN in a piece only process 1's devices hold is found by both.
  assert r0["nonfinite"].startswith("CheckpointError: ")
  assert "params/layers/0/W holds non-finite values (1 of 50176)" in r0["nonfinite"]
  assert r0["other_mesh_equal"] and r0["other_mesh_spec"] == "P('data',)"
  # The checksum the two processes wrote is that of the values: one process with one
  # device restores and verifies the sharded checkpoint.
  from handgrad import nn
  tx = train.make_optimizer("adam", 1e-3)
  template = train.TrainState.create(nn.mlp.init([784, 64, 10], key=jax.random.key(0)),
                                     tx, key=0)
  with train.Checkpointer(out / "checkpoints") as ckpt:
    state, meta = ckpt.restore(template, step=0)
  assert meta == {"note": "good"}
  for x, y in zip(jax.tree.leaves(state), jax.tree.leaves(template)):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
