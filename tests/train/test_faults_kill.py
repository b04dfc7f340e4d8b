"""Fault injection, kills: a run killed at any point (by step, inside a checkpoint save
before / during / after its commit rename, during an evaluation; SIGKILL or SIGTERM) and
resumed ends with the parameters of the uninterrupted run, bit for bit on CPU, and the
same ``metrics.jsonl`` records (wall-clock ``time`` aside)."""

import os
import signal
import subprocess
import sys
import textwrap

import pytest

sys.path.insert(0, os.path.dirname(__file__))
import fault_helpers as fh  # noqa: E402

from handgrad import train  # noqa: E402

EVERY = 3  # checkpoint_every: lands on the last step of every epoch (6 steps per epoch)

_SCRIPT = textwrap.dedent("""
    import os, signal, sys, threading, time
    sys.path.insert(0, {test_dir!r})
    import fault_helpers as fh
    mode, n, sig = {mode!r}, {n!r}, getattr(signal, {sig!r})
    out = {out!r}
    ckpts = os.path.join(out, "checkpoints")

    def die():
      os.kill(os.getpid(), sig)
      if sig == signal.SIGTERM:
        return
      time.sleep(60)

    on_step = eval_step = None
    if mode == "step":
      def on_step(step, metrics):
        if step == n:
          die()
    elif mode in ("rename-before", "rename-after"):
      real, count = os.rename, [0]
      def rename(src, dst, *a, **k):
        final = os.path.dirname(os.fspath(dst)) == ckpts
        if final:
          count[0] += 1
        if final and count[0] == n and mode == "rename-before":
          die()
        real(src, dst, *a, **k)
        if final and count[0] == n and mode == "rename-after":
          die()
      os.rename = rename
    elif mode == "save-write":
      def watch():  # kill as soon as the n-th save's temporary directory exists
        seen = set()
        while True:
          if os.path.isdir(ckpts):
            for name in os.listdir(ckpts):
              if ".orbax-checkpoint-tmp" in name and name not in seen:
                seen.add(name)
                if len(seen) == n:
                  os.kill(os.getpid(), signal.SIGKILL)
          time.sleep(0.0005)
      threading.Thread(target=watch, daemon=True).start()
    elif mode == "eval":
      _, _, inner = fh.pieces()
      calls = [0]
      def eval_step(params, batch):
        calls[0] += 1
        if calls[0] == n:
          die()
        return inner(params, batch)
    try:
      fh.run(out, 3, checkpoint_every={every}, on_step=on_step, eval_step=eval_step)
    except KeyboardInterrupt as e:
      print("interrupted:", e)
      sys.exit(3)
    print("not killed")
""")


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
  out = tmp_path_factory.mktemp("straight")
  result = fh.run(out, 3, checkpoint_every=EVERY)
  return result, fh.records_without_time(out / "metrics.jsonl")


KILLS = [
    ("step", 4, "SIGKILL"),           # mid epoch, after a periodic checkpoint
    ("step", 6, "SIGKILL"),           # right after the periodic save on an epoch's last step
    ("step", 11, "SIGKILL"),
    ("step", 5, "SIGTERM"),           # graceful: checkpoint at step 5, exit
    ("step", 12, "SIGTERM"),          # on an epoch's last step, before its evaluation
    ("rename-before", 2, "SIGKILL"),  # the second save (step 6), before its commit
    ("rename-after", 2, "SIGKILL"),   # just after it, before the epoch's record
    ("rename-after", 3, "SIGKILL"),
    ("save-write", 4, "SIGKILL"),     # while the fourth save writes its files
    ("eval", 2, "SIGKILL"),           # during epoch 2's evaluation (one batch each)
    ("eval", 3, "SIGTERM"),
]


@pytest.mark.parametrize("mode,n,sig", KILLS, ids=[f"{m}-{n}-{s}" for m, n, s in KILLS])
def test_killed_and_resumed_equals_the_uninterrupted_run(straight, tmp_path, mode, n, sig):
  reference, reference_records = straight
  script = _SCRIPT.format(test_dir=os.path.dirname(__file__), mode=mode, n=n, sig=sig,
                          out=str(tmp_path), every=EVERY)
  proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                        timeout=300)
  assert "not killed" not in proc.stdout, proc.stderr[-2000:]
  if sig == "SIGKILL":
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
  else:  # the SIGTERM handler stops after the step and checkpoints it
    assert proc.returncode == 3 and "stopped by SIGTERM after step" in proc.stdout, \
        proc.stdout + proc.stderr[-2000:]
  resumed = fh.run(tmp_path, 3, checkpoint_every=EVERY, resume=True)
  fh.assert_states_equal(resumed.state, reference.state)
  assert fh.records_without_time(tmp_path / "metrics.jsonl") == reference_records
  assert not [p.name for p in (tmp_path / "checkpoints").iterdir() if "tmp" in p.name]


def test_sigterm_to_handgrad_train_then_resume_equals_the_uninterrupted_run(tmp_path):
  """``handgrad train`` in its own process gets SIGTERM once its first epoch record is
  written: one line, exit status 143; ``--resume`` then ends where an uninterrupted run
  ends, parameters and records."""
  import time

  from handgrad.cli import main
  src = os.path.join(os.path.dirname(__file__), os.pardir, os.pardir, "src")
  args = ["train", "--subset", "160", "--batch-size", "32", "--epochs", "3",
          "--no-progress", "--checkpoint-every", "2"]
  assert main([*args, "--out", str(tmp_path / "a")]) == 0
  env = {**os.environ, "PYTHONPATH": os.pathsep.join(
      [os.path.abspath(src), *filter(None, [os.environ.get("PYTHONPATH")])])}
  proc = subprocess.Popen([sys.executable, "-m", "handgrad.cli", *args, "--out",
                           str(tmp_path / "b")], env=env, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True)
  metrics = tmp_path / "b" / "metrics.jsonl"
  deadline = time.monotonic() + 300
  while proc.poll() is None and time.monotonic() < deadline:
    if metrics.exists() and metrics.read_text().strip():
      proc.send_signal(signal.SIGTERM)
      break
    time.sleep(0.005)
  _, err = proc.communicate(timeout=300)
  assert proc.returncode == 128 + signal.SIGTERM, err[-2000:]
  lines = [line for line in err.splitlines() if "stopped by SIGTERM" in line]
  assert len(lines) == 1 and "Traceback" not in err
  assert main([*args, "--out", str(tmp_path / "b"), "--resume"]) == 0
  with train.Checkpointer(tmp_path / "a" / "checkpoints") as a, \
       train.Checkpointer(tmp_path / "b" / "checkpoints") as b:
    template = _cli_template()
    fh.assert_states_equal(a.restore(template)[0], b.restore(template)[0])
  assert (fh.records_without_time(tmp_path / "a" / "metrics.jsonl")
          == fh.records_without_time(metrics))


def _cli_template():
  import jax

  from handgrad import nn
  from handgrad._src.cli.train import MLP_DIMS
  tx = train.make_optimizer("adam", 1e-3)
  return train.TrainState.create(nn.mlp.init(list(MLP_DIMS), key=jax.random.key(0)), tx,
                                 key=0)
