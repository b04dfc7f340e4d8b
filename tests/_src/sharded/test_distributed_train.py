"""Two processes on this machine (jax.distributed over loopback, 4 CPU devices each,
gloo collectives) train the MLP data-parallel with ``handgrad train --mesh data=8`` and
end with the parameters of one process with 8 devices.

Only process 0 writes the run's files (metrics, config, orbax checkpoints); process 1
trains alongside and writes nothing.  Every process is bounded in time and killed if
the other fails.
"""

from __future__ import annotations

import os
import pathlib
import socket
import subprocess
import sys
import time

import jax
import numpy as np

from handgrad import train
from handgrad._src.cli import train as train_cmd

HERE = pathlib.Path(__file__).resolve().parent
SRC = HERE.parents[2] / "src"
TIMEOUT = 300.0
ARGS = ["train", "--subset", "256", "--epochs", "1", "--batch-size", "32", "--no-progress",
        "--mesh", "data=8"]
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


def _start(args, devices, log):
  return subprocess.Popen([sys.executable, "-c", LAUNCH, *args], env=_env(devices),
                          stdout=log, stderr=subprocess.STDOUT)


def _wait_all(procs, logs) -> None:
  """Waits for every process; on a failure or the deadline kills the others."""
  deadline = time.monotonic() + TIMEOUT
  try:
    while any(p.poll() is None for p in procs):
      if time.monotonic() > deadline:
        raise AssertionError(f"timed out after {TIMEOUT:.0f} s")
      if any(p.poll() not in (None, 0) for p in procs):
        break
      time.sleep(0.2)
  finally:
    for p in procs:
      if p.poll() is None:
        p.kill()
        p.wait()
  for i, (p, log) in enumerate(zip(procs, logs)):
    assert p.returncode == 0, (f"process {i} exited {p.returncode}:\n"
                               + pathlib.Path(log.name).read_text()[-4000:])


def _final_state(out: pathlib.Path):
  m = train_cmd._model("mlp")
  tx = train.make_optimizer("adam", 1e-3)
  template = train.TrainState.create(m.init(jax.random.key(0)), tx, key=0)
  with train.Checkpointer(out / "checkpoints") as ckpt:
    state, _ = ckpt.restore(template)
  return state


def test_two_processes_match_one_process_with_8_devices(tmp_path):
  port = _free_port()
  two, one = tmp_path / "two", tmp_path / "one"
  logs = [open(tmp_path / f"p{i}.log", "w") for i in range(2)]
  procs = [_start([*ARGS, "--out", str(two), "--coordinator", f"127.0.0.1:{port}",
                   "--num-processes", "2", "--process-id", str(i)], 4, logs[i])
           for i in range(2)]
  _wait_all(procs, logs)
  log1 = open(tmp_path / "single.log", "w")
  _wait_all([_start([*ARGS, "--out", str(one)], 8, log1)], [log1])

  # Process 0 alone wrote the run: one record for the one epoch, its summary printed.
  assert len(train.read_metrics(two / "metrics.jsonl")) == 1
  assert "final train loss" in (tmp_path / "p0.log").read_text()
  assert "final train loss" not in (tmp_path / "p1.log").read_text()
  a, b = _final_state(two), _final_state(one)
  assert int(a.step) == int(b.step) == 8
  worst = 0.0
  for x, y in zip(jax.tree.leaves((a.params, a.opt_state)),
                  jax.tree.leaves((b.params, b.opt_state))):
    # The same partitioned program over the same 8 devices; only the float32 order of
    # the cross-process all-reduce may differ (measured: 1.6e-7 at most, jax 0.10.2).
    np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=1e-4, atol=1e-6)
    worst = max(worst, float(np.max(np.abs(np.asarray(x, np.float64) - np.asarray(y)))))
  print(f"two processes vs one: max abs difference {worst:.3g}")
