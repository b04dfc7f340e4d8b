"""The training loop: epochs of shuffled batches, evaluation, logs, checkpoints, resume.

A run never loses or corrupts its data:

* the inputs are checked for non-finite values and the labels against the dataset's
  class count *and* the model's output width, on the host, before a step sees them;
* a step whose loss or gradient is not finite is skipped by the train step (params and
  optimizer state bit-unchanged), reported here with its step, epoch and batch, and
  after ``max_nonfinite`` of them in a row the run stops (:class:`NonFiniteError`),
  keeping its last good checkpoint (no checkpoint is written during such a streak);
  ``on_nonfinite="stop"`` stops at the first one, and ``debug_nans=True`` re-runs it
  with ``handgrad.inspect.find_nonfinite`` and appends the report to ``nonfinite.json``;
* a rerun into a directory that holds a run refuses (:class:`RunExistsError`) unless
  ``resume`` or ``overwrite`` says what to do; ``config.json`` is written only once the
  run is accepted; one lock file keeps a second run out (:class:`RunLockedError`);
* checkpoints carry the current epoch's per-step metrics, and the epoch's record is
  written before its checkpoint, so a run killed at any point and resumed writes the
  very records (wall-clock ``time`` aside) and parameters of an uninterrupted run;
* SIGTERM and the first Ctrl-C stop the run after the current step, with a checkpoint
  (:class:`Interrupted`); a damaged checkpoint is skipped for the newest intact one.

:func:`fit` runs a jitted ``train_step`` (from ``make_train_step``) over a dataset:

* epoch e visits the training set in the order ``permutation(fold_in(data_key, e))``
  in full batches (``remainder="drop"``: one shape, one compilation), so the data order
  is a function of ``(data_key, epoch)`` alone and a resumed run sees the same batches;
* every batch's labels are checked on the host before the step (``check_labels``);
* after each epoch: the evaluation set is scored, its record is added to
  ``out_dir/metrics.jsonl``, a checkpoint is written to ``out_dir/checkpoints`` and
  ``out_dir/curves.png`` is redrawn (at most every ``plot_interval`` seconds, and at
  the end);
* with ``resume=True`` the newest checkpoint is restored and the run continues at its
  step: the epoch is ``step // steps_per_epoch`` and the first ``step % steps_per_epoch``
  batches of that epoch are skipped.  Since the checkpoint holds the exact bits of
  the state (params, optimizer state, step, PRNG key) and the data order is
  deterministic, the final parameters are bitwise those of an uninterrupted run on
  the same device (XLA on CPU is deterministic).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import pathlib
import shutil
import signal
import sys
import threading
import time
from typing import Any, Callable, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from handgrad._src.data.batching import batches, num_batches
from handgrad._src.train import processes
from handgrad._src.train.checkpoint import Checkpointer
from handgrad._src.train.labels import check_labels
from handgrad._src.train.lock import RunLock, RunLockedError
from handgrad._src.train.state import TrainState
from handgrad._src.train.step import Metrics, TrainStep, evaluate

METRICS_FILE = "metrics.jsonl"
CURVES_FILE = "curves.png"
CHECKPOINT_DIR = "checkpoints"
CONFIG_FILE = "config.json"
NONFINITE_FILE = "nonfinite.json"
GRAD_STATS_FILE = "grad_stats.jsonl"  # written by the CLI's --monitor
# What a run leaves in its directory (replaced by overwrite=True / --overwrite).
RUN_FILES = (METRICS_FILE, CURVES_FILE, CONFIG_FILE, GRAD_STATS_FILE,
             "gradient_flow.png", NONFINITE_FILE)
ON_NONFINITE = ("stop", "skip")
RUN_DIRS = (CHECKPOINT_DIR, CHECKPOINT_DIR + ".damaged")
DEFAULT_MAX_NONFINITE = 3
# Steps whose metrics are fetched to the host together (and checked for skipped steps);
# every save, stop and epoch end fetches all of them first.
FETCH_EVERY = 8

logger = logging.getLogger("handgrad")


class NonFiniteError(RuntimeError):
  """Training stopped after too many non-finite steps in a row, at the first one
  (``on_nonfinite="stop"``), or at an unguarded one.

  Attributes:
    record: with ``debug_nans``, the :data:`NONFINITE_FILE` record of the step that
      stopped the run (its ``"report"`` is ``NonFiniteReport.to_dict()``), else ``None``.
  """

  def __init__(self, message: str, record: dict | None = None):
    super().__init__(message)
    self.record = record


class RunExistsError(FileExistsError):
  """The output directory holds a previous run and neither resume nor overwrite was
  asked for.

  Attributes:
    out: the directory.
    previous: what it holds (``"checkpoints at steps [4, 8]"``, ...).
  """

  def __init__(self, out, previous: Sequence[str]):
    self.out, self.previous = out, tuple(previous)
    super().__init__(self.message("resume=True", "overwrite=True"))

  def to_shared(self) -> str:
    """The error as one string another process rebuilds it from (:meth:`from_shared`)."""
    return json.dumps([str(self.out), list(self.previous)])

  @classmethod
  def from_shared(cls, text: str) -> "RunExistsError":
    out, previous = json.loads(text)
    return cls(pathlib.Path(out), previous)

  def message(self, resume: str, overwrite: str) -> str:
    """The one-line refusal, naming the two ways on: ``resume``/``overwrite`` as the
    caller spells them (keyword arguments of ``fit``, ``--resume``/``--overwrite`` of
    the command line)."""
    return (f"{self.out}: holds a previous run ({'; '.join(self.previous)}); pass "
            f"{resume} to continue it or {overwrite} to replace it")


class Interrupted(KeyboardInterrupt):
  """SIGTERM or SIGINT stopped the run after a step; a checkpoint was written.

  Attributes:
    signum: the signal.
    step: the step the run stopped at.
    checkpoint: the checkpoint's directory, or ``None`` without an output directory.
  """

  def __init__(self, signum: int, step: int, checkpoint: pathlib.Path | None):
    self.signum, self.step, self.checkpoint = signum, step, checkpoint
    name = signal.Signals(signum).name
    where = f"; checkpoint {checkpoint} (resume to continue)" if checkpoint else ""
    super().__init__(f"stopped by {name} after step {step}{where}")

Record = dict[str, Any]


@dataclasses.dataclass
class FitResult:
  """What :func:`fit` returns.

  Attributes:
    state: the final :class:`TrainState`.
    history: one record per epoch, as written to ``metrics.jsonl`` (records of epochs
      before a resume included): ``epoch``, ``step``, ``train_loss``,
      ``train_accuracy`` (means over the epoch's steps), ``grad_norm``, ``test_loss``,
      ``test_accuracy`` (when an eval set is given), ``time`` (seconds since the
      session started).  The train means cover all the epoch's steps, also when the
      epoch was resumed in its middle (checkpoints carry the epoch's per-step metrics).
    step_losses: float32 ``[steps run in this session]``, the loss of every step.
    start_step: the step the session started at (0, or the resumed checkpoint's).
    skipped: ``(step, epoch, batch)`` of every non-finite step skipped in this session
      (1-based epoch and batch).
    wall_time: seconds spent in :func:`fit`, compilation included.
    out_dir: the output directory, or ``None``.
    nonfinite: with ``debug_nans``, the record of every non-finite step of this
      session, as appended to ``nonfinite.json``.
  """
  state: TrainState
  history: list[Record]
  step_losses: np.ndarray
  start_step: int
  wall_time: float
  out_dir: pathlib.Path | None = None
  skipped: list[tuple[int, int, int]] = dataclasses.field(default_factory=list)
  nonfinite: list[Record] = dataclasses.field(default_factory=list)

  @property
  def final(self) -> Record:
    """The last epoch's record (empty if no epoch finished)."""
    return self.history[-1] if self.history else {}


def read_metrics(path: str | os.PathLike) -> list[Record]:
  """The records of a ``metrics.jsonl`` file (an empty list if it does not exist)."""
  path = pathlib.Path(path)
  if not path.exists():
    return []
  records = []
  for n, line in enumerate(path.read_text().splitlines(), 1):
    if line.strip():
      try:
        records.append(json.loads(line))
      except json.JSONDecodeError as e:
        raise ValueError(f"{path}:{n}: not a JSON line ({e})") from None
  return records


def _write_atomically(path: pathlib.Path, text: str) -> None:
  """Writes ``text`` to ``path`` through a temporary file and a rename: a reader (or a
  resumed run) sees the old file or the new one, never a torn line."""
  tmp = path.with_name(path.name + ".tmp")
  with open(tmp, "w") as f:
    f.write(text)
    f.flush()
    os.fsync(f.fileno())
  os.replace(tmp, path)


def write_records(path: pathlib.Path, records: Sequence[Record]) -> None:
  """Writes JSON-lines ``records`` to ``path`` atomically (see ``_write_atomically``)."""
  _write_atomically(path, "".join(json.dumps(r) + "\n" for r in records))


def plot_curves(history: Sequence[Record], path: str | os.PathLike, *,
                title: str = "") -> None:
  """Loss and accuracy against epoch, train and test, side by side, as a PNG.

  Uses matplotlib's Agg canvas directly (no ``pyplot`` state, no display needed).
  """
  from matplotlib.backends.backend_agg import FigureCanvasAgg
  from matplotlib.figure import Figure

  fig = Figure(figsize=(10, 4), dpi=100)
  FigureCanvasAgg(fig)
  ax_loss, ax_acc = fig.subplots(1, 2)
  epochs = [r["epoch"] for r in history]
  for ax, metric, label in ((ax_loss, "loss", "cross-entropy loss"),
                            (ax_acc, "accuracy", "accuracy")):
    for split, style in (("train", "-o"), ("test", "-s")):
      ys = [r.get(f"{split}_{metric}") for r in history]
      if any(y is not None for y in ys):
        ax.plot(epochs, [np.nan if y is None else y for y in ys], style, markersize=3,
                label=split)
    ax.set_xlabel("epoch")
    ax.set_ylabel(label)
    ax.grid(alpha=0.3)
    ax.legend()
  ax_loss.set_yscale("log")
  if title:
    fig.suptitle(title)
  fig.tight_layout()
  path = pathlib.Path(path)
  tmp = path.with_name(path.name + ".tmp.png")
  fig.savefig(tmp, format="png")
  os.replace(tmp, path)


class _Progress:
  """A tqdm bar over all steps of the run, on stderr, with live loss and accuracy."""

  def __init__(self, enabled: bool, total: int, initial: int, every: int):
    self.bar = None
    self.every = every
    if enabled:
      from tqdm.auto import tqdm
      self.bar = tqdm(total=total, initial=initial, unit="step", file=sys.stderr,
                      dynamic_ncols=True, mininterval=0.25, leave=True)

  def set_epoch(self, epoch: int, epochs: int) -> None:
    if self.bar is not None:
      self.bar.set_description(f"epoch {epoch}/{epochs}")

  def step(self, n_in_epoch: int, metrics: Metrics, extra: Mapping[str, Any] = ()) -> None:
    if self.bar is None:
      return
    self.bar.update(1)
    if n_in_epoch % self.every == 0:
      self.postfix(metrics, extra)

  def postfix(self, metrics: Mapping[str, Any], extra: Mapping[str, Any] = ()) -> None:
    if self.bar is None:
      return
    shown = {"loss": f"{float(metrics['loss']):.4f}"}
    if "accuracy" in metrics:
      shown["acc"] = f"{float(metrics['accuracy']):.3f}"
    shown.update(extra)
    self.bar.set_postfix(shown, refresh=False)

  def close(self) -> None:
    if self.bar is not None:
      self.bar.close()


# --- argument and input checks -------------------------------------------------------

def _check_arguments(train_ds, *, epochs, batch_size, checkpoint_every, resume, out_dir,
                     max_nonfinite, on_nonfinite) -> int:
  """Every argument check that needs no file; returns the steps per epoch."""
  if isinstance(epochs, bool) or not isinstance(epochs, (int, np.integer)) or epochs < 0:
    raise ValueError(f"epochs must be an int >= 0, got {epochs!r}")
  steps_per_epoch = num_batches(len(train_ds), batch_size, "drop")
  if steps_per_epoch == 0:
    raise ValueError(f"the batch size {batch_size} is larger than the training set "
                     f"({len(train_ds)} samples): no full batch")
  if checkpoint_every is not None and checkpoint_every < 1:
    raise ValueError(f"checkpoint_every must be >= 1, got {checkpoint_every}")
  if (isinstance(max_nonfinite, bool) or not isinstance(max_nonfinite, (int, np.integer))
      or max_nonfinite < 1):
    raise ValueError(f"max_nonfinite must be an int >= 1, got {max_nonfinite!r}")
  if on_nonfinite not in ON_NONFINITE:
    raise ValueError(f"on_nonfinite must be one of {', '.join(map(repr, ON_NONFINITE))}, "
                     f"got {on_nonfinite!r}")
  if resume and out_dir is None:
    raise ValueError("resume needs an output directory holding the checkpoints")
  return steps_per_epoch


def check_finite_inputs(ds, what: str = "training set") -> None:
  """Raises ``ValueError`` naming the first sample of ``ds.x`` with a NaN or inf.

  One ``isfinite`` pass over the features on the host (a few milliseconds for MNIST),
  so that a single bad pixel is an error before training instead of a NaN loss.
  """
  x = np.asarray(ds.x)
  if not np.issubdtype(x.dtype, np.inexact) or x.size == 0:
    return
  bad_rows = ~np.isfinite(x.reshape(len(x), -1)).all(axis=1)
  if not bad_rows.any():
    return
  rows = np.flatnonzero(bad_rows)
  first = int(rows[0])
  flat = x[first].reshape(-1)
  j = int(np.flatnonzero(~np.isfinite(flat))[0])
  more = f" ({len(rows)} samples in all)" if len(rows) > 1 else ""
  raise ValueError(f"{what}: sample {first} holds a non-finite input value ({flat[j]} at "
                   f"feature {j}){more}")


# --- the run directory: refuse, lock, replace, resume ------------------------------

def previous_run(out: str | os.PathLike) -> list[str]:
  """What of a previous run lies in directory ``out``, one phrase per kind of file
  (checkpoints, ``metrics.jsonl``, ``config.json``); empty when there is none."""
  out = pathlib.Path(out)
  found = []
  ckpts = out / CHECKPOINT_DIR
  if ckpts.is_dir():
    steps = sorted(int(p.name) for p in ckpts.iterdir() if p.name.isdigit())
    if steps:
      found.append(f"checkpoints of steps {', '.join(map(str, steps))}")
  metrics = out / METRICS_FILE
  if metrics.is_file() and metrics.stat().st_size:
    found.append(METRICS_FILE)
  if (out / CONFIG_FILE).is_file():
    found.append(CONFIG_FILE)
  return found


def _open_run_dir(out_dir, *, resume: bool, overwrite: bool, notify) -> tuple[
    pathlib.Path, RunLock]:
  """Creates and locks ``out_dir``; refuses a previous run unless resumed or overwritten.

  Nothing of a previous run is touched here: ``overwrite`` removes it only once the
  whole run has been accepted (:func:`_replace_previous_run`).
  """
  out = pathlib.Path(out_dir)
  if out.exists() and not out.is_dir():
    raise ValueError(f"{out}: the output path exists and is not a directory")
  try:
    out.mkdir(parents=True, exist_ok=True)
  except (FileExistsError, NotADirectoryError):
    raise ValueError(f"{out}: cannot create the output directory (a parent is a "
                     f"file)") from None
  lock = RunLock(out, log=notify)
  try:
    previous = previous_run(out)
    if previous and not resume and not overwrite:
      raise RunExistsError(out, previous)
  except BaseException:
    lock.release()
    raise
  return out, lock


def _replace_previous_run(out: pathlib.Path, notify) -> None:
  previous = previous_run(out)
  for name in RUN_DIRS:
    if (out / name).exists():
      shutil.rmtree(out / name)
  for name in RUN_FILES:
    (out / name).unlink(missing_ok=True)
  if previous:
    notify(f"overwrite: removed the previous run in {out} ({'; '.join(previous)})")


def _check_resumable(meta: Mapping[str, Any], config: Mapping[str, Any],
                     steps_per_epoch: int, where: pathlib.Path) -> None:
  saved = dict(meta.get("config", {}))
  if meta.get("steps_per_epoch") not in (None, steps_per_epoch):
    raise ValueError(f"{where}: cannot resume: the checkpoint has "
                     f"{meta['steps_per_epoch']} steps per epoch, this run "
                     f"{steps_per_epoch} (another batch size or dataset)")
  diff = [f"{k}={saved.get(k)!r} (now {config.get(k)!r})"
          for k in sorted(set(saved) | set(config)) if saved.get(k) != config.get(k)]
  if diff:
    raise ValueError(f"{where}: cannot resume a run with other settings: "
                     + ", ".join(diff))


@dataclasses.dataclass
class _Position:
  """Where a session starts: the state, the records kept, and the epoch in progress."""
  state: TrainState
  history: list[Record]
  epoch: int  # 0-based epoch to (continue to) run
  skip: int  # batches of that epoch already done
  epoch_values: dict[str, list[float]]  # that epoch's per-step metrics so far


def _resume(ckpt: Checkpointer, template: TrainState, out: pathlib.Path, config,
            steps_per_epoch: int, notify) -> _Position:
  """The newest intact checkpoint as a position; the metrics file's records up to it."""
  found = ckpt.restore_intact(template, warn=lambda msg: notify(msg, logging.WARNING))
  if found is None:
    notify(f"no checkpoint in {ckpt.directory}; starting from step 0")
    return _Position(template, [], 0, 0, {})
  state, meta, step = found
  _check_resumable(meta, config, steps_per_epoch, ckpt.directory)
  history = [r for r in read_metrics(out / METRICS_FILE) if r.get("step", math.inf) <= step]
  # With several processes each read the metrics file itself: the epoch to continue
  # (and whether it still needs its evaluation) must be the same everywhere.
  processes.check_same([step, len(history)], "the checkpoint and the records to resume from")
  epoch, skip = divmod(step, steps_per_epoch)
  values = {k: list(v) for k, v in dict(meta.get("epoch_metrics") or {}).items()}
  if skip == 0 and epoch > 0 and not any(r.get("step") == step for r in history):
    # Saved at the last step of an epoch whose evaluation and record never happened:
    # finish that epoch (no steps left, its metrics come from the checkpoint).
    epoch, skip = epoch - 1, steps_per_epoch
  elif skip == 0:
    values = {}
  notify(f"resuming from {ckpt.directory / str(step)}: step {step}, epoch "
         f"{step // steps_per_epoch + 1}, batch {step % steps_per_epoch + 1}")
  return _Position(state, history, epoch, skip, values)


# --- per-step bookkeeping: metrics to the host, non-finite steps ---------------------

# The key of a step's gradient statistics in _StepLog.pending (the scalar metrics are
# kept under their names there; "grad_stats" is a dict, never one of them).
_GRAD_STATS = "grad_stats"


class _StepLog:
  """Fetches the steps' scalar metrics a few steps late, several at a time (the device
  keeps working), and keeps the epoch's per-step values, the skipped steps and the
  non-finite streak."""

  def __init__(self, max_nonfinite: int, notify, values: dict[str, list[float]],
               last_scale: float | None, stop_at_first: bool = False, explain=None,
               monitor=None):
    self.max_nonfinite = max_nonfinite
    # A GradientMonitor: each step's "grad_stats" (present on the monitored steps) is
    # fetched with the other metrics, a few steps late, and logged at its step number.
    self.monitor = monitor
    self.stop_at_first = stop_at_first
    # explain(step, epoch, batch, stopping) -> (one-line culprit, record) or None: the
    # debug_nans re-run of a non-finite step (called before the run stops on it).
    self.explain = explain
    self.notify = notify
    self.values = values
    self.pending: list[tuple[int, int, int, Metrics]] = []
    self.streak: list[tuple[int, int, int]] = []
    self.skipped: list[tuple[int, int, int]] = []
    self.last_scale = last_scale
    self.checkpoint_hint = "no checkpoint was written"

  def add(self, step: int, epoch: int, batch: int, metrics: Metrics) -> None:
    scalars = {n: v for n, v in metrics.items() if not isinstance(v, Mapping)}
    if self.monitor is not None and isinstance(metrics.get(_GRAD_STATS), Mapping):
      scalars[_GRAD_STATS] = metrics[_GRAD_STATS]
    self.pending.append((step, epoch, batch, scalars))
    if len(self.pending) > FETCH_EVERY:
      # All but the newest step (still running): one transfer for many steps.
      self._fetch(self.pending[:-1])
      self.pending = self.pending[-1:]

  def flush(self) -> None:
    self._fetch(self.pending)
    self.pending = []

  def _fetch(self, items) -> None:
    if not items:
      return
    hosts = jax.device_get([metrics for *_, metrics in items])
    for (step, epoch, batch, _), host in zip(items, hosts):
      self._process(step, epoch, batch, host)

  def _process(self, step: int, epoch: int, batch: int, host: dict) -> None:
    if _GRAD_STATS in host:
      host = dict(host)
      self.monitor.log(host.pop(_GRAD_STATS), step=step)
    for name, v in host.items():
      self.values.setdefault(name, []).append(float(v))
    loss = float(host.get("loss", 0.0))
    if "skipped" not in host:
      if not math.isfinite(loss):
        raise NonFiniteError(f"step {step} (epoch {epoch}, batch {batch}): the loss is "
                             f"{loss} and the train step does not skip non-finite steps "
                             f"(no 'skipped' metric): stopped; {self.checkpoint_hint}")
      return
    scale = host.get("loss_scale")
    backed_off = (scale is not None and self.last_scale is not None
                  and float(scale) < self.last_scale)
    if scale is not None:
      self.last_scale = float(scale)
    if not host["skipped"] or backed_off:
      # A finite step; or an overflow the loss scale handles by backing off.
      self.streak = []
      return
    where = (step, epoch, batch)
    self.streak.append(where)
    self.skipped.append(where)
    self.notify(f"step {step} (epoch {epoch}, batch {batch}): non-finite loss or gradient "
                f"(loss {loss}, gradient norm {float(host.get('grad_norm', math.nan))}); "
                f"step skipped, parameters and optimizer state unchanged", logging.WARNING)
    stopping = self.stop_at_first or len(self.streak) >= self.max_nonfinite
    found = self.explain(step, epoch, batch, stopping) if self.explain else None
    culprit, record = found if found else ("", None)
    if self.stop_at_first:
      raise NonFiniteError(f"step {step} (epoch {epoch}, batch {batch}): non-finite loss or "
                           f"gradient{culprit}: training stopped (on_nonfinite='stop'); "
                           f"{self.checkpoint_hint}", record)
    if len(self.streak) >= self.max_nonfinite:
      (s0, e0, b0), (s1, e1, b1) = self.streak[0], self.streak[-1]
      raise NonFiniteError(f"{len(self.streak)} non-finite steps in a row, steps {s0}-{s1} "
                           f"(epoch {e0}, batch {b0} to epoch {e1}, batch {b1}){culprit}: "
                           f"training stopped; {self.checkpoint_hint}", record)

  def epoch_means(self) -> dict[str, float]:
    # float32 means over the epoch's steps, as numpy computes them from the step values.
    return {name: float(np.mean(np.asarray(v, np.float32))) for name, v in
            self.values.items()}


# --- debug_nans: the report of a non-finite step -------------------------------------

def _json_safe(x):
  """``x`` with non-finite floats as the strings ``"NaN"``, ``"Infinity"``,
  ``"-Infinity"`` (strict JSON has no literal for them) and tuples as lists."""
  if isinstance(x, float) and not math.isfinite(x):
    return "NaN" if math.isnan(x) else ("Infinity" if x > 0 else "-Infinity")
  if isinstance(x, dict):
    return {str(k): _json_safe(v) for k, v in x.items()}
  if isinstance(x, (list, tuple)):
    return [_json_safe(v) for v in x]
  if isinstance(x, np.generic):
    return _json_safe(x.item())
  return x


def append_nonfinite_record(out: pathlib.Path, record: Record, notify) -> pathlib.Path:
  """Appends ``record`` to the JSON list in ``out/nonfinite.json`` (a resumed run adds to
  its earlier records); returns the file written.  A file that is not such a list is
  never replaced: the record goes to the first free ``nonfinite-N.json`` instead."""
  path = out / NONFINITE_FILE
  records: list = []
  if path.exists():
    try:
      records = json.loads(path.read_text())
    except (OSError, ValueError):
      records = None
    if not isinstance(records, list):
      n = 2
      while (out / f"nonfinite-{n}.json").exists():
        n += 1
      notify(f"{path}: not a list of records; leaving it as it is and writing "
             f"nonfinite-{n}.json", logging.WARNING)
      path, records = out / f"nonfinite-{n}.json", []
  records.append(_json_safe(record))
  _write_atomically(path, json.dumps(records, indent=1, allow_nan=False) + "\n")
  return path


def _culprit_phrase(report) -> str:
  """``"; first non-finite value in the forward pass of `sqrt` at f.py:3 (loss)"``."""
  if report.finite:
    return ("; loss and gradient finite when re-run (a non-finite update or optimizer "
            "state)")
  if report.phase == "input":
    return "; a non-finite input (the batch, the parameters or a closed-over value)"
  if report.phase is None:
    return "; no single equation found"
  where = f" at {report.line}" if report.line else ""
  layer = f" in {report.layer}" if report.layer else ""
  return f"; first non-finite value in the {report.phase} pass of `{report.culprit}`{layer}{where}"


# --- signals -------------------------------------------------------------------------

class _StopRequests:
  """SIGTERM and a first SIGINT ask the loop to stop after the current step; a second
  SIGINT interrupts at once (KeyboardInterrupt).  Installed only in the main thread."""

  def __init__(self, enabled: bool):
    self.signum: int | None = None
    self.previous = {}
    if enabled and threading.current_thread() is threading.main_thread():
      for sig in (signal.SIGTERM, signal.SIGINT):
        self.previous[sig] = signal.signal(sig, self._handle)

  def _handle(self, signum, frame):
    if self.signum is not None and signum == signal.SIGINT:
      raise KeyboardInterrupt
    self.signum = signum

  def close(self) -> None:
    for sig, handler in self.previous.items():
      signal.signal(sig, handler)
    self.previous = {}


# --- the loop ------------------------------------------------------------------------

class _Run:
  """One session of :func:`fit`: the epoch loop, evaluation, records, checkpoints."""

  def __init__(self, fit_args: dict, position: _Position, out, ckpt, notify, t0):
    self.a = fit_args
    self.state = position.state
    self.history = position.history
    self.position = position
    self.out, self.ckpt, self.notify, self.t0 = out, ckpt, notify, t0
    self.steps_per_epoch = fit_args["steps_per_epoch"]
    self.start_step = int(jax.device_get(self.state.step))
    scale = self.state.loss_scale
    self.log = _StepLog(fit_args["max_nonfinite"], notify, position.epoch_values,
                        None if scale is None else float(jax.device_get(scale.scale)),
                        stop_at_first=fit_args["on_nonfinite"] == "stop",
                        explain=self.explain_nonfinite if fit_args["debug_nans"] else None,
                        monitor=fit_args["monitor"])
    self.nonfinite: list[Record] = []
    self.before_step = None  # debug_nans: (step, batch, key, loss scale) of the last step
    self.losses: list[Any] = []
    self.label_bound: tuple[int, str] | None = None
    self.last_eval: dict[str, str] = {}
    self.last_plot = t0  # short runs draw once, at the end
    self.last_saved: int | None = None
    self.stop = _StopRequests(fit_args["handle_signals"])

  # checkpoints
  def meta(self, epoch_done: int) -> dict[str, Any]:
    return {"epoch": epoch_done, "step": int(self.state.step),
            "steps_per_epoch": self.steps_per_epoch, "batch_size": int(self.a["batch_size"]),
            "config": self.a["config"], "epoch_metrics": self.log.values}

  def save(self, epoch_done: int) -> None:
    if self.ckpt is None:
      return
    self.log.flush()
    if self.log.streak:
      return  # never checkpoint inside a run of non-finite steps
    self.last_saved = self.ckpt.save(self.state, self.meta(epoch_done))
    self.log.checkpoint_hint = (f"the last good checkpoint is "
                                f"{self.ckpt.directory / str(self.last_saved)}")

  def check_stop(self, epoch_done: int, boundary: bool = True) -> None:
    signum = self.stop.signum
    if processes.many():
      # A signal reaches one process, or several at different steps: they stop (and
      # save, collectively) together, at the first step that is a multiple of
      # FETCH_EVERY or an epoch's end after it (a host sync they make there anyway).
      if not boundary:
        return
      signum = processes.first_value(signum)
    if signum is None:
      return
    self.save(epoch_done)
    where = self.ckpt.directory / str(self.last_saved) if self.last_saved is not None else None
    raise Interrupted(signum, int(self.state.step), where)

  # debug_nans
  def explain_nonfinite(self, step: int, epoch: int, batch_index: int, stopping: bool):
    """Re-runs the non-finite step ``step`` with ``find_nonfinite``; logs the report and
    appends it to ``nonfinite.json``.  Returns ``(culprit phrase, record)``."""
    if self.before_step is None or self.before_step[0] != step:
      return None
    _, batch, key, loss_scale = self.before_step
    finder = getattr(self.a["train_step"], "find_nonfinite", None)
    if finder is None:
      self.notify(f"step {step}: debug_nans: the train step has no find_nonfinite "
                  f"(use make_train_step)", logging.WARNING)
      return None
    # The step was skipped, so params and optimizer state are those it started from;
    # only the step count, the key and the loss scale moved on.
    start = self.state._replace(step=self.state.step - 1, key=key, loss_scale=loss_scale)
    report, micro = finder(start, batch)
    record: Record = {"step": step, "epoch": epoch, "batch": batch_index,
                      "micro_batch": micro, "action": "stopped" if stopping else "skipped",
                      "report": report.to_dict(), "text": str(report)}
    written = ""
    if self.out is not None:
      written = f" (written to {append_nonfinite_record(self.out, record, self.notify)})"
    self.nonfinite.append(record)
    micro_text = f", micro-batch {micro}" if micro is not None else ""
    self.notify(f"step {step} (epoch {epoch}, batch {batch_index}{micro_text}): "
                f"{report}{written}", logging.WARNING)
    return _culprit_phrase(report), record

  # labels
  def check_batch_labels(self, batch, epoch: int, i: int) -> None:
    if self.label_bound is None:
      bound, why = self.a["num_classes"], ""
      width_of = getattr(self.a["train_step"], "num_outputs", None)
      if width_of is not None:
        width = width_of(self.state, batch)
        if bound is None or width < bound:
          bound, why = width, f" (the model has {width} outputs)"
      self.label_bound = (bound, why)
    bound, why = self.label_bound
    if bound is not None:
      try:
        check_labels(batch.y, bound, where=f"epoch {epoch + 1}, batch {i + 1}")
      except ValueError as e:
        raise ValueError(f"{e}{why}") from None

  # one epoch
  def train_epoch(self, epoch: int, skip: int, bar) -> None:
    a = self.a
    order_key = jax.random.fold_in(a["data_key"], epoch)
    for i, batch in enumerate(batches(a["train_ds"], a["batch_size"], key=order_key,
                                      remainder="drop")):
      if i < skip:
        continue  # done before the checkpoint this run resumed from
      self.check_batch_labels(batch, epoch, i)
      step = self.start_step + len(self.losses) + 1
      if a["debug_nans"]:
        # Copies of what the (donating) step consumes and a skipped step does not keep.
        self.before_step = (step, batch, jnp.copy(self.state.key),
                            jax.tree.map(jnp.copy, self.state.loss_scale))
      self.state, metrics = a["train_step"](self.state, batch)
      self.losses.append(metrics["loss"])
      self.log.add(step, epoch + 1, i + 1, metrics)
      if a["debug_nans"]:
        self.log.flush()  # each step is checked at once, while its batch is at hand
      bar.step(i + 1, metrics, self.last_eval)
      if a["on_step"] is not None:
        a["on_step"](step, metrics)
      if a["checkpoint_every"] and step % a["checkpoint_every"] == 0:
        self.save(epoch)
      self.check_stop(epoch, boundary=step % FETCH_EVERY == 0)
    self.log.flush()

  def finish_epoch(self, epoch: int, bar) -> Record:
    """Evaluation, the epoch's record (written before the epoch's checkpoint: a run
    killed in between resumes from an older checkpoint and redoes the same record)."""
    a = self.a
    record: Record = {"epoch": epoch + 1, "step": int(self.state.step)}
    means = self.log.epoch_means()
    record.update({("train_" + k if k != "grad_norm" else k): v for k, v in means.items()})
    if a["eval_step"] is not None and a["eval_ds"] is not None:
      scores = evaluate(a["eval_step"], self.state.params, a["eval_ds"],
                        batch_size=a["eval_batch_size"])
      scores.pop("count", None)
      record.update({f"test_{k}": v for k, v in scores.items()})
      if "test_accuracy" in record:
        self.last_eval = {"test_acc": f"{record['test_accuracy']:.3f}"}
    record["time"] = round(time.perf_counter() - self.t0, 3)
    self.history.append(record)
    if "loss" in means:
      bar.postfix({"loss": means["loss"], **({"accuracy": means["accuracy"]}
                                             if "accuracy" in means else {})},
                  self.last_eval)
    if self.out is not None:
      write_records(self.out / METRICS_FILE, self.history)
    # The epoch is complete: its checkpoint carries no per-step metrics.  (Without an
    # output directory there is no checkpointer and nothing is saved; with several
    # processes, all save together and process 0 alone writes the files.)
    self.log.values = {}
    self.save(epoch + 1)
    if (self.out is not None and a["plot"]
        and time.perf_counter() - self.last_plot >= a["plot_interval"]):
      plot_curves(self.history, self.out / CURVES_FILE, title=a["plot_title"])
      self.last_plot = time.perf_counter()
    if a["on_epoch"] is not None:
      a["on_epoch"](record)
    self.check_stop(epoch + 1)
    return record

  def run(self) -> None:
    a, spe = self.a, self.steps_per_epoch
    epochs = a["epochs"]
    bar = _Progress(a["progress"], total=epochs * spe,
                    initial=min(self.start_step, epochs * spe),
                    every=max(1, a["progress_every"]))
    try:
      for epoch in range(self.position.epoch, epochs):
        bar.set_epoch(epoch + 1, epochs)
        skip = self.position.skip if epoch == self.position.epoch else 0
        self.train_epoch(epoch, skip, bar)
        self.finish_epoch(epoch, bar)
      self.log.flush()
      self.save(min(epochs, int(self.state.step) // spe))
    finally:
      bar.close()
      self.stop.close()


def _notifier(log: Callable[[str], None] | None) -> Callable[..., None]:
  """``notify(msg, level=INFO)``: to ``log`` when given, else to the "handgrad" logger;
  with several processes, process 0 tells (the others take the same decisions and
  log them at the debug level only)."""
  if not processes.is_primary():
    return lambda msg, level=logging.INFO: logger.debug(msg)
  if log is not None:
    return lambda msg, level=logging.INFO: log(msg)
  return lambda msg, level=logging.INFO: logger.log(level, msg)


def fit(train_step: TrainStep, state: TrainState, train_ds, *, epochs: int,
        batch_size: int, data_key: jax.Array,
        eval_step: Callable | None = None, eval_ds=None, eval_batch_size: int = 1000,
        num_classes: int | None = None, out_dir: str | os.PathLike | None = None,
        resume: bool = False, overwrite: bool = False,
        checkpoint_every: int | None = None, max_to_keep: int = 3,
        max_nonfinite: int = DEFAULT_MAX_NONFINITE,
        on_nonfinite: str = "skip", debug_nans: bool = False,
        config: Mapping[str, Any] | None = None, progress: bool = True,
        progress_every: int = 10, plot: bool = True, plot_interval: float = 10.0,
        plot_title: str = "",
        on_step: Callable[[int, Metrics], None] | None = None,
        on_epoch: Callable[[Record], None] | None = None,
        monitor: Any = None,
        log: Callable[[str], None] | None = None,
        handle_signals: bool = True, mesh: Any = None) -> FitResult:
  """Trains ``state`` for ``epochs`` epochs of ``train_ds``.

  Args:
    train_step: ``train_step(state, batch) -> (state, metrics)``, e.g. from
      ``make_train_step``; it may donate its state.
    state: the initial :class:`TrainState` (with ``resume``, the template the checkpoint
      is restored into).
    train_ds: a ``handgrad.data.Dataset`` (``x [N, ...]``, int ``y [N]``).
    epochs: total number of epochs of the run (a resumed run continues up to it).
    batch_size: rows per step; the last ``N % batch_size`` rows of each shuffled
      epoch are dropped.
    data_key: the key whose ``fold_in(data_key, epoch)`` shuffles epoch ``epoch``.
    eval_step: ``eval_step(params, batch) -> sums`` from ``make_eval_step``; scores
      ``eval_ds`` after every epoch (its metrics appear as ``test_<name>``).
    eval_ds: the evaluation dataset.
    eval_batch_size: rows per evaluation batch.
    num_classes: labels are checked to lie in ``[0, num_classes)`` before each step;
      ``None`` takes ``train_ds.num_classes`` when it exists.  When the train step knows
      the model's output width (``make_train_step(classification_loss(...))``), labels
      must also be below it.
    out_dir: where ``metrics.jsonl``, ``curves.png``, ``config.json`` and
      ``checkpoints/`` go; ``None`` writes nothing (and cannot resume).  It is locked
      for the run (``.handgrad.lock``, with this process's pid and host).  With
      several processes (``jax.distributed``) every process passes the same directory,
      on a filesystem they share: process 0 locks it and writes the files, and all of
      them save and restore the checkpoints together (sharded arrays from wherever
      their pieces are).
    resume: continue from the newest intact checkpoint in ``out_dir/checkpoints`` (if
      there is none, start at step 0).
    overwrite: replace a previous run in ``out_dir``.  Without ``resume`` or
      ``overwrite``, a directory holding a run is refused (:class:`RunExistsError`) and
      left as it is.
    checkpoint_every: also save every this many steps (default: only after each
      epoch and at the end).
    max_to_keep: how many checkpoints to keep.
    max_nonfinite: stop after this many consecutive skipped non-finite steps.
    on_nonfinite: ``"skip"`` (the default): a non-finite step is skipped and the run
      goes on (until ``max_nonfinite`` in a row); ``"stop"``: the run stops at the
      first one (:class:`NonFiniteError`, one line), keeping its last good checkpoint.
    debug_nans: re-run every non-finite step (same state, batch and key) with
      ``handgrad.inspect.find_nonfinite``: the report (the first equation that made a
      NaN or inf, its source line, layer and diagnosis) is logged and appended to
      ``out_dir/nonfinite.json`` (a JSON list of records: ``step``, ``epoch``,
      ``batch``, ``micro_batch``, ``action``, ``report``, ``text``; non-finite numbers
      as the strings ``"NaN"``/``"Infinity"``).  Each step's metrics are then fetched
      right after it (one host sync per step); with ``debug_nans=False`` nothing of
      this runs and the step is the same program.
    config: JSON-able settings of the run; stored in each checkpoint and, with
      ``epochs``, in ``config.json`` once the run is accepted; a resume with different
      settings (``epochs`` aside) is refused with a ``ValueError``.
    progress: show a tqdm bar on stderr.
    progress_every: refresh the bar's loss and accuracy every this many steps (each
      refresh waits for the step to finish).
    plot: draw ``curves.png`` at the end, and after an epoch when the last drawing is
      at least ``plot_interval`` seconds old.
    plot_title: its title.
    on_step: called as ``on_step(step, metrics)`` after every step (``metrics`` still on
      the device); an exception raised there stops the run (tests use it to simulate
      a crash).
    on_epoch: called with each epoch's record.
    monitor: a ``handgrad.inspect.GradientMonitor``: the ``"grad_stats"`` of every
      step that returns them (``make_train_step(..., monitor=True, monitor_every=k)``:
      the steps numbered k, 2k, ...) are logged to it at their step number.  They are
      fetched with the other metrics, a few steps late, so monitoring adds no wait for
      the device; ``monitor.history`` is complete when ``fit`` returns.
    log: where notices go, one string each (default: the ``logging.getLogger(
      "handgrad")`` logger; warnings for skipped steps and damaged checkpoints).
    handle_signals: stop cleanly on SIGTERM and a first Ctrl-C (main thread only).
    mesh: the mesh ``train_step`` was made for (``make_train_step(..., mesh=mesh)``);
      ``state`` is placed on it first, and a resumed checkpoint is restored onto it,
      whatever mesh (or single device) it was saved from.

  Returns:
    A :class:`FitResult`.

  Raises:
    ValueError: bad arguments, a non-finite input value (naming the sample), a label
      out of range (naming the epoch and batch), or a checkpoint from a run with other
      settings or from another model.
    RunExistsError: ``out_dir`` holds a run and neither ``resume`` nor ``overwrite``.
    RunLockedError: another live process trains into ``out_dir``.
    CheckpointError: ``resume`` found checkpoints, none of them intact.
    NonFiniteError: ``max_nonfinite`` non-finite steps in a row, or the first one with
      ``on_nonfinite="stop"`` (with ``debug_nans``, its ``record`` holds the report).
    Interrupted: SIGTERM or SIGINT; the state is checkpointed first.
  """
  t0 = time.perf_counter()
  notify = _notifier(log)
  steps_per_epoch = _check_arguments(
      train_ds, epochs=epochs, batch_size=batch_size, checkpoint_every=checkpoint_every,
      resume=resume, out_dir=out_dir, max_nonfinite=max_nonfinite,
      on_nonfinite=on_nonfinite)
  if num_classes is None:
    num_classes = getattr(train_ds, "num_classes", None)
  check_finite_inputs(train_ds, "training set")
  if eval_step is not None and eval_ds is not None:
    check_finite_inputs(eval_ds, "evaluation set")
  config = dict(config or {})
  if mesh is not None:
    if getattr(train_step, "mesh", None) is not mesh:
      raise ValueError("fit(mesh=...) needs a train step made for that mesh: "
                       "make_train_step(..., mesh=mesh)")
    state = train_step.place(state)
  fit_args = dict(train_step=train_step, train_ds=train_ds, epochs=epochs,
                  batch_size=batch_size, data_key=data_key, eval_step=eval_step,
                  eval_ds=eval_ds, eval_batch_size=eval_batch_size,
                  num_classes=num_classes, checkpoint_every=checkpoint_every,
                  max_nonfinite=max_nonfinite, on_nonfinite=on_nonfinite,
                  debug_nans=bool(debug_nans), config=config, progress=progress,
                  progress_every=progress_every, plot=plot, plot_interval=plot_interval,
                  plot_title=plot_title, on_step=on_step, on_epoch=on_epoch,
                  monitor=monitor, handle_signals=handle_signals,
                  steps_per_epoch=steps_per_epoch)

  out = ckpt = lock = None  # out: the directory this process writes files to
  position = _Position(state, [], 0, 0, {})
  try:
    if out_dir is not None:
      run_dir = pathlib.Path(out_dir)
      # Process 0 (the only process of a single-process run) owns the directory: it
      # locks it, refuses a previous run, and replaces one with overwrite; its refusal
      # is every process's.
      error = None
      if processes.is_primary():
        try:
          out, lock = _open_run_dir(out_dir, resume=resume, overwrite=overwrite,
                                    notify=notify)
          if not resume:
            _replace_previous_run(out, notify)
        except Exception as e:  # noqa: BLE001 - shared with the other processes, re-raised
          error = e
      processes.share_error(error, (RunExistsError, RunLockedError, ValueError))
      ckpt = Checkpointer(run_dir / CHECKPOINT_DIR, max_to_keep=max_to_keep)
      if resume:
        position = _resume(ckpt, state, run_dir, config, steps_per_epoch, notify)
      if out is not None:
        # The run is accepted: from here on the directory is this run's.
        _write_atomically(out / CONFIG_FILE,
                          json.dumps({**config, "epochs": epochs}, indent=2) + "\n")
        write_records(out / METRICS_FILE, position.history)
    session = _Run(fit_args, position, out, ckpt, notify, t0)
    session.run()
  finally:
    if ckpt is not None:
      ckpt.close()
    if lock is not None:
      lock.release()
  if out is not None and plot and session.history:
    plot_curves(session.history, out / CURVES_FILE, title=plot_title)
  losses = session.losses
  step_losses = (np.asarray(jax.device_get(losses), np.float32) if losses
                 else np.zeros(0, np.float32))
  return FitResult(state=session.state, history=session.history, step_losses=step_losses,
                   start_step=session.start_step, wall_time=time.perf_counter() - t0,
                   out_dir=out, skipped=session.log.skipped, nonfinite=session.nonfinite)
