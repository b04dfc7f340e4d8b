"""The training loop: epochs of shuffled batches, evaluation, logs, checkpoints, resume.

:func:`fit` runs a jitted ``train_step`` (from ``make_train_step``) over a dataset:

* epoch e visits the training set in the order ``permutation(fold_in(data_key, e))``
  in full batches (``remainder="drop"``: one shape, one compilation), so the data order
  is a function of ``(data_key, epoch)`` alone and a resumed run sees the same batches;
* every batch's labels are checked on the host before the step (``check_labels``);
* after each epoch: the evaluation set is scored, one JSON line is appended to
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
import math
import os
import pathlib
import shutil
import sys
import time
from typing import Any, Callable, Mapping, Sequence

import jax
import numpy as np

from handgrad._src.data.batching import batches, num_batches
from handgrad._src.train.checkpoint import Checkpointer
from handgrad._src.train.labels import check_labels
from handgrad._src.train.state import TrainState
from handgrad._src.train.step import Metrics, TrainStep, evaluate

METRICS_FILE = "metrics.jsonl"
CURVES_FILE = "curves.png"
CHECKPOINT_DIR = "checkpoints"

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
      session started).  After a resume in the middle of an epoch, that epoch's train
      means cover the steps run after the resume.
    step_losses: float32 ``[steps run in this session]``, the loss of every step.
    start_step: the step the session started at (0, or the resumed checkpoint's).
    wall_time: seconds spent in :func:`fit`, compilation included.
    out_dir: the output directory, or ``None``.
  """
  state: TrainState
  history: list[Record]
  step_losses: np.ndarray
  start_step: int
  wall_time: float
  out_dir: pathlib.Path | None = None

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


def _write_metrics(path: pathlib.Path, records: Sequence[Record]) -> None:
  tmp = path.with_suffix(".jsonl.tmp")
  tmp.write_text("".join(json.dumps(r) + "\n" for r in records))
  os.replace(tmp, path)


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


def _epoch_means(metrics: Sequence[Metrics]) -> dict[str, float]:
  if not metrics:
    return {}
  # The step's order (device_get would sort the keys); scalars only (the monitor's
  # per-parameter statistics are a nested dict, logged separately).
  names = [n for n, v in metrics[0].items() if not isinstance(v, Mapping)]
  host = jax.device_get([{n: m[n] for n in names} for m in metrics])
  return {name: float(np.mean([m[name] for m in host])) for name in names}


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


def fit(train_step: TrainStep, state: TrainState, train_ds, *, epochs: int,
        batch_size: int, data_key: jax.Array,
        eval_step: Callable | None = None, eval_ds=None, eval_batch_size: int = 1000,
        num_classes: int | None = None, out_dir: str | os.PathLike | None = None,
        resume: bool = False, checkpoint_every: int | None = None, max_to_keep: int = 3,
        config: Mapping[str, Any] | None = None, progress: bool = True,
        progress_every: int = 10, plot: bool = True, plot_interval: float = 10.0,
        plot_title: str = "",
        on_step: Callable[[int, Metrics], None] | None = None,
        on_epoch: Callable[[Record], None] | None = None,
        log: Callable[[str], None] | None = None) -> FitResult:
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
      ``None`` takes ``train_ds.num_classes`` when it exists.
    out_dir: where ``metrics.jsonl``, ``curves.png`` and ``checkpoints/`` go; ``None``
      writes nothing (and cannot resume).
    resume: continue from the newest checkpoint in ``out_dir/checkpoints`` (if there
      is none, start at step 0).  Without it, an existing run in ``out_dir`` is
      replaced.
    checkpoint_every: also save every this many steps (default: only after each
      epoch and at the end).
    max_to_keep: how many checkpoints to keep.
    config: JSON-able settings of the run; stored in each checkpoint, and a resume
      with different settings (``epochs`` aside) is refused with a ``ValueError``.
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
    log: where notices go (default: stderr).

  Returns:
    A :class:`FitResult`.

  Raises:
    ValueError: bad arguments, a label out of range (naming the epoch and batch), or a
      checkpoint from a run with other settings.
  """
  t0 = time.perf_counter()
  log = log or (lambda msg: print(msg, file=sys.stderr))
  if isinstance(epochs, bool) or not isinstance(epochs, (int, np.integer)) or epochs < 0:
    raise ValueError(f"epochs must be an int >= 0, got {epochs!r}")
  steps_per_epoch = num_batches(len(train_ds), batch_size, "drop")
  if steps_per_epoch == 0:
    raise ValueError(f"the batch size {batch_size} is larger than the training set "
                     f"({len(train_ds)} samples): no full batch")
  if checkpoint_every is not None and checkpoint_every < 1:
    raise ValueError(f"checkpoint_every must be >= 1, got {checkpoint_every}")
  if num_classes is None:
    num_classes = getattr(train_ds, "num_classes", None)
  if resume and out_dir is None:
    raise ValueError("resume needs an output directory holding the checkpoints")
  config = dict(config or {})

  out = ckpt = None
  history: list[Record] = []
  if out_dir is not None:
    out = pathlib.Path(out_dir)
    if out.exists() and not out.is_dir():
      raise ValueError(f"{out}: the output path exists and is not a directory")
    out.mkdir(parents=True, exist_ok=True)
    if not resume and (out / CHECKPOINT_DIR).exists():
      # A fresh run replaces the previous one (whose steps would clash with its own).
      log(f"starting afresh: removing the previous run's checkpoints in "
          f"{out / CHECKPOINT_DIR} (pass resume=True / --resume to continue it)")
      shutil.rmtree(out / CHECKPOINT_DIR)
    ckpt = Checkpointer(out / CHECKPOINT_DIR, max_to_keep=max_to_keep)
    if resume:
      if ckpt.latest_step() is None:
        log(f"no checkpoint in {ckpt.directory}; starting from step 0")
      else:
        state, meta = ckpt.restore(state)
        _check_resumable(meta, config, steps_per_epoch, ckpt.directory)
        history = [r for r in read_metrics(out / METRICS_FILE)
                   if r.get("step", math.inf) <= int(state.step)]
        epoch_at, batch_at = divmod(int(state.step), steps_per_epoch)
        log(f"resuming from {ckpt.directory / str(int(state.step))}: step "
            f"{int(state.step)}, epoch {epoch_at + 1}, batch {batch_at + 1}")
    _write_metrics(out / METRICS_FILE, history)

  start_step = int(jax.device_get(state.step))
  start_epoch, skip = divmod(start_step, steps_per_epoch)

  def meta(epoch_done: int) -> dict[str, Any]:
    return {"epoch": epoch_done, "step": int(state.step), "steps_per_epoch": steps_per_epoch,
            "batch_size": int(batch_size), "config": config}

  bar = _Progress(progress, total=epochs * steps_per_epoch,
                  initial=min(start_step, epochs * steps_per_epoch),
                  every=max(1, progress_every))
  losses: list[Any] = []
  last_eval: dict[str, str] = {}
  last_plot = t0  # short runs draw once, at the end
  try:
    for epoch in range(start_epoch, epochs):
      bar.set_epoch(epoch + 1, epochs)
      order_key = jax.random.fold_in(data_key, epoch)
      epoch_metrics: list[Metrics] = []
      for i, batch in enumerate(batches(train_ds, batch_size, key=order_key,
                                        remainder="drop")):
        if epoch == start_epoch and i < skip:
          continue  # done before the checkpoint this run resumed from
        if num_classes is not None:
          check_labels(batch.y, num_classes, where=f"epoch {epoch + 1}, batch {i + 1}")
        state, metrics = train_step(state, batch)
        epoch_metrics.append(metrics)
        losses.append(metrics["loss"])
        step = start_step + len(losses)
        bar.step(i + 1, metrics, last_eval)
        if on_step is not None:
          on_step(step, metrics)
        if ckpt is not None and checkpoint_every and step % checkpoint_every == 0:
          ckpt.save(state, meta(epoch))
      record: Record = {"epoch": epoch + 1, "step": int(state.step)}
      means = _epoch_means(epoch_metrics)
      record.update({("train_" + k if k != "grad_norm" else k): v for k, v in means.items()})
      if eval_step is not None and eval_ds is not None:
        scores = evaluate(eval_step, state.params, eval_ds, batch_size=eval_batch_size)
        scores.pop("count", None)
        record.update({f"test_{k}": v for k, v in scores.items()})
        if "test_accuracy" in record:
          last_eval = {"test_acc": f"{record['test_accuracy']:.3f}"}
      record["time"] = round(time.perf_counter() - t0, 3)
      history.append(record)
      if epoch_metrics:
        bar.postfix(epoch_metrics[-1], last_eval)
      if out is not None:
        # The record first, then the checkpoint: a run killed in between resumes from
        # the previous checkpoint, drops this record (its step is newer) and redoes it.
        with open(out / METRICS_FILE, "a") as f:
          f.write(json.dumps(record) + "\n")
        ckpt.save(state, meta(epoch + 1))
        if plot and time.perf_counter() - last_plot >= plot_interval:
          plot_curves(history, out / CURVES_FILE, title=plot_title)
          last_plot = time.perf_counter()
      if on_epoch is not None:
        on_epoch(record)
    if ckpt is not None:
      ckpt.save(state, meta(min(epochs, int(state.step) // steps_per_epoch)))
  finally:
    bar.close()
    if ckpt is not None:
      ckpt.close()
  if out is not None and plot and history:
    plot_curves(history, out / CURVES_FILE, title=plot_title)
  step_losses = (np.asarray(jax.device_get(losses), np.float32) if losses
                 else np.zeros(0, np.float32))
  return FitResult(state=state, history=history, step_losses=step_losses,
                   start_step=start_step, wall_time=time.perf_counter() - t0, out_dir=out)
