"""Checkpoints of a :class:`TrainState` with orbax, validated when they are read back.

A checkpoint is one directory per step under the checkpoint directory, written by
``orbax.checkpoint.CheckpointManager``: orbax writes into a temporary directory and
renames it when complete, so a run killed mid-save leaves either the previous
checkpoints or a finished new one, never a half-written one under a step's name.  Each
checkpoint holds two items:

* ``state``: the :class:`TrainState` arrays (``ocp.args.StandardSave``);
* ``meta``: a JSON dict (``ocp.args.JsonSave``), the loop's bookkeeping (epoch, the
  run's configuration) plus an integrity record written at save time: the path, shape
  and dtype of every leaf and a SHA-256 of their bytes.

Restoring needs a *template*, a state with the right structure, shapes and dtypes
(the freshly initialised state of the run being resumed).  :meth:`Checkpointer.restore`
checks, in this order: the metadata reads; the saved leaves are the template's (else the
checkpoint is from another model or optimizer: ``ValueError``); the arrays read; tree
structure, shapes and dtypes equal the template's; every float leaf is finite; the
checksum matches.  Any failure after the first match is *damage*
(:class:`CheckpointError`, one line saying what was wrong), and
:meth:`Checkpointer.restore_intact` falls back to the newest intact checkpoint.

While a save runs, SIGINT and SIGTERM are held back and delivered when it has finished
(Ctrl-C during a save neither breaks orbax's writer threads nor leaves its temporary
directory behind); a failed save removes its temporary directory and raises one line
(``OSError`` with ``ENOSPC`` for a full disk).

With several processes (``jax.distributed``) every process makes a ``Checkpointer``
on the same directory (a filesystem all of them share) and calls :meth:`save` and
:meth:`restore` together: orbax writes each array's pieces from the processes that hold
them (so FSDP- and Megatron-sharded parameters and optimizer state, which no process
holds whole, are saved as they are) and process 0 writes the metadata and renames the
finished directory.  The integrity record is that of the *global* values, whatever
the mesh: for each leaf in turn, every process gathers the whole value on its host
(one leaf at a time), so every process computes the same SHA-256, a checkpoint checks
the same on any mesh and any number of processes, and one saved by several processes
restores in one and the other way round.  Every check's outcome is shared
(``processes.share_error``): when one process finds a checkpoint damaged, all of them
raise the same error and fall back to the same older checkpoint.  Process 0 alone
removes the temporary directories of killed saves and sets damaged checkpoints aside,
the others waiting for it.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import logging
import os
import pathlib
import shutil
import signal
import threading
from typing import Any, Callable, Iterator

import jax
import numpy as np

from handgrad._src.train import processes
from handgrad._src.train.state import TrainState

INTEGRITY_KEY = "_integrity"
logger = logging.getLogger("handgrad")
TMP_MARKER = ".orbax-checkpoint-tmp"


class CheckpointError(ValueError):
  """A checkpoint that cannot be read back as saved (damaged, truncated, tampered)."""


def quiet_orbax() -> None:
  """Silences orbax's and absl's logging: one line per save otherwise, and a failed
  save's tracebacks (the error is raised as one line instead)."""
  try:
    from absl import logging as absl_logging
    absl_logging.set_verbosity(absl_logging.FATAL)
  except ImportError:  # pragma: no cover
    pass
  for name in ("absl", "orbax", "orbax.checkpoint", "jax._src.distributed"):
    logging.getLogger(name).setLevel(logging.CRITICAL)


# --- integrity record ----------------------------------------------------------------

def _leaves(tree: Any) -> list[tuple[str, Any]]:
  flat, _ = jax.tree_util.tree_flatten_with_path(tree)
  return [(jax.tree_util.keystr(kp, simple=True, separator="/"), leaf) for kp, leaf in flat]


def _signature(tree: Any) -> list[list]:
  """``[[path, shape, dtype], ...]`` of every leaf (a template's leaves may be abstract)."""
  return [[path, list(np.shape(leaf)), str(np.dtype(leaf.dtype))] for path, leaf in
          _leaves(tree)]


def _scan(tree: Any) -> tuple[str, str | None]:
  """``(sha256, problem)`` of ``tree``'s global values: the SHA-256 of every leaf's path,
  dtype, shape and bytes in order, and the first float leaf holding a NaN or inf
  (``None`` when all are finite).

  One leaf at a time is brought to the host (``processes.host_value``: gathered from
  every process when it is split over several), so the digest is that of the values,
  independent of the mesh and of the number of processes (collective with several).
  """
  digest = hashlib.sha256()
  problem = None
  for path, leaf in _leaves(tree):
    a = np.ascontiguousarray(processes.host_value(leaf))
    digest.update(f"{path}|{a.dtype.str}|{a.shape}|".encode())
    digest.update(a.tobytes())
    if problem is None and np.issubdtype(a.dtype, np.inexact) and not np.all(np.isfinite(a)):
      problem = (f"{path} holds non-finite values "
                 f"({int(np.sum(~np.isfinite(a)))} of {a.size})")
  return digest.hexdigest(), problem


def _first_difference(saved: list, now: list) -> str:
  for s, n in zip(saved, now):
    if s != n:
      return (f"{s[0]}: saved {tuple(s[1])} {s[2]}, this run's "
              f"{n[0]}: {tuple(n[1])} {n[2]}")
  longer, what = (saved, "saved") if len(saved) > len(now) else (now, "this run's")
  extra = longer[min(len(saved), len(now))]
  return f"{len(saved)} saved leaves, {len(now)} in this run's state ({what} {extra[0]})"


def _one_line(e: BaseException) -> str:
  text = str(e).strip().splitlines()
  return f"{type(e).__name__}: {text[0] if text else ''}".strip().rstrip(":")


def _is_disk_full(e: BaseException) -> bool:
  seen = set()
  while e is not None and id(e) not in seen:
    seen.add(id(e))
    if getattr(e, "errno", None) == errno.ENOSPC or "No space left on device" in str(e):
      return True
    e = e.__cause__ or e.__context__
  return False


@contextlib.contextmanager
def signals_deferred() -> Iterator[None]:
  """Holds SIGINT and SIGTERM back inside the block, then re-raises them (main thread
  only; elsewhere a no-op)."""
  if threading.current_thread() is not threading.main_thread():
    yield
    return
  pending: list[int] = []
  previous = {}
  for sig in (signal.SIGINT, signal.SIGTERM):
    previous[sig] = signal.signal(sig, lambda signum, frame: pending.append(signum))
  try:
    yield
  finally:
    for sig, handler in previous.items():
      signal.signal(sig, handler)
    for sig in dict.fromkeys(pending):
      signal.raise_signal(sig)


# Errors a check may raise, re-raised as such on every process (share_error).
_KINDS = (CheckpointError, FileNotFoundError, ValueError)


def _together(check: Callable[[], None]) -> None:
  """Runs ``check`` here; with several processes, raises on every process the error
  of the lowest-numbered process whose check failed (so all take the same branch)."""
  if not processes.many():
    check()
    return
  error = None
  try:
    check()
  except _KINDS as e:
    error = e
  processes.share_error(error, _KINDS)


class Checkpointer:
  """Saves and restores :class:`TrainState` checkpoints in ``directory``.

  Args:
    directory: where the step directories go (created if missing).
    max_to_keep: how many of the newest checkpoints to keep; older ones are deleted
      after a newer one is complete.

  Saving is synchronous: when :meth:`save` returns, the checkpoint is on disk, so the
  caller may donate the state's buffers to the next step right away.
  """

  def __init__(self, directory: str | os.PathLike, *, max_to_keep: int = 3):
    import orbax.checkpoint as ocp

    self._ocp = ocp
    self.max_to_keep = max_to_keep
    self.directory = pathlib.Path(directory).absolute()
    self.directory.mkdir(parents=True, exist_ok=True)
    self._remove_tmp_dirs()
    self._manager = self._new_manager()

  def _new_manager(self):
    ocp = self._ocp
    # With several processes, all of them save and restore together; process 0 is
    # orbax's primary host (it writes the metadata and finalises each step directory).
    options = ocp.CheckpointManagerOptions(max_to_keep=self.max_to_keep, create=True,
                                           enable_async_checkpointing=False)
    return ocp.CheckpointManager(self.directory, options=options)

  def _remove_tmp_dirs(self) -> None:
    """Temporary directories of saves that never finished (a killed run); process 0
    removes them while the others wait."""
    if processes.is_primary():
      for path in self.directory.glob(f"*{TMP_MARKER}*"):
        shutil.rmtree(path, ignore_errors=True)
    processes.barrier("handgrad-checkpoint-tmp")  # the same name on every host

  def all_steps(self) -> list[int]:
    """Steps of the complete checkpoints, ascending."""
    return sorted(self._manager.all_steps())

  def latest_step(self) -> int | None:
    """The newest complete checkpoint's step, or ``None`` if there is none."""
    return self._manager.latest_step()

  def save(self, state: TrainState, meta: dict[str, Any] | None = None) -> int:
    """Writes ``state`` (and ``meta``) as the checkpoint for step ``int(state.step)``.

    Saving the same step twice (e.g. an end-of-epoch save right after a periodic one)
    is a no-op.  Returns the step.  With several processes, every process calls it
    with the same state and meta.

    Raises:
      OSError: the disk is full (``errno.ENOSPC``) or another OS error, in one line.
      CheckpointError: orbax failed otherwise.
    """
    step = int(jax.device_get(state.step))
    if step in self._manager.all_steps():
      return step
    ocp = self._ocp
    sha256, _ = _scan(state)
    meta = {**dict(meta or {}), INTEGRITY_KEY: {"leaves": _signature(state),
                                                 "sha256": sha256}}
    error = None
    with signals_deferred():
      try:
        self._manager.save(step, args=ocp.args.Composite(
            state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)))
        self._manager.wait_until_finished()
      except Exception as e:  # noqa: BLE001 - orbax raises bare Exceptions
        where = f"{self.directory}: cannot write the checkpoint of step {step}"
        if _is_disk_full(e):
          error = OSError(errno.ENOSPC, f"{where}: no space left on device")
        elif isinstance(e, OSError):
          error = OSError(e.errno, f"{where}: {e.strerror or _one_line(e)}")
        else:
          error = CheckpointError(f"{where}: {_one_line(e)}")
      if processes.many():
        # A save that failed on one process failed for all: none goes on as if saved.
        try:
          processes.share_error(error, (CheckpointError, OSError))
        except (CheckpointError, OSError) as shared:
          error = shared
      if error is not None:
        self._remove_tmp_dirs()
        raise error
    return step

  def restore(self, template: TrainState, *,
              step: int | None = None) -> tuple[TrainState, dict[str, Any]]:
    """The checkpoint at ``step`` (default: the newest) as ``(state, meta)``, validated.

    Args:
      template: a state with the structure, shapes and dtypes of the saved one.
      step: which checkpoint; ``None`` for the newest.

    Raises:
      FileNotFoundError: there is no such checkpoint.
      ValueError: the checkpoint does not match ``template`` (another model or
        optimizer).
      CheckpointError: the checkpoint is damaged (one line saying how).

    The arrays are restored with the template's shardings (the run's mesh, whatever
    mesh saved them).  With several processes every process calls it with the same
    arguments, and every process raises the same error.
    """
    ocp = self._ocp
    if step is None:
      step = self.latest_step()
    where = self.directory / str(step)
    meta = integrity = None

    def read_meta():
      nonlocal meta, integrity
      if step is None or step not in self._manager.all_steps():
        raise FileNotFoundError(f"{self.directory}: no checkpoint"
                                + ("" if step is None else f" for step {step}"))
      try:
        meta = dict(self._read_item(step, "meta", ocp.args.JsonRestore()) or {})
      except Exception as e:  # noqa: BLE001
        raise CheckpointError(f"{where}: unreadable metadata ({_one_line(e)})") from None
      integrity = meta.pop(INTEGRITY_KEY, None)
      wanted = _signature(template)
      if integrity is not None and integrity.get("leaves") != wanted:
        raise ValueError(f"{where}: the checkpoint does not match this run's model and "
                         f"optimizer ({_first_difference(integrity.get('leaves') or [], wanted)})")

    _together(read_meta)
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, template)
    state = None

    def read_state():
      nonlocal state
      try:
        state = self._read_item(step, "state", ocp.args.StandardRestore(abstract))
      except (ValueError, KeyError, TypeError) as e:
        if integrity is not None:
          raise CheckpointError(f"{where}: unreadable state ({_one_line(e)})") from None
        raise ValueError(f"{where}: the checkpoint does not match this run's model and "
                         f"optimizer ({_one_line(e)})") from None
      except Exception as e:  # noqa: BLE001 - orbax/tensorstore raise bare Exceptions
        raise CheckpointError(f"{where}: unreadable state ({_one_line(e)})") from None
      if not isinstance(state, TrainState):
        state = TrainState(*state)
      self._check_tree(where, template, state)

    _together(read_state)
    # Collective with several processes (the values are gathered), then shared.
    sha256, problem = _scan(state)
    _together(lambda: self._check_values(where, integrity, sha256, problem))
    return state, meta

  def _read_item(self, step: int, name: str, args) -> Any:
    """One item of a step's checkpoint, read by this process alone.

    Read with the item's handler rather than ``CheckpointManager.restore``, which
    ends with a barrier among the processes: a process failing to read its pieces
    (a truncated file) would leave the others waiting there, out of step with the
    collectives that share its error.  Each process reads what its devices need; the
    outcome is shared afterwards (:func:`_together`).
    """
    ocp = self._ocp
    handler = (ocp.StandardCheckpointHandler() if name == "state"
               else ocp.JsonCheckpointHandler())
    try:
      return handler.restore(self.directory / str(step) / name, args=args)
    finally:
      handler.close()

  @staticmethod
  def _check_tree(where, template, state) -> None:
    if jax.tree.structure(state) != jax.tree.structure(template):
      raise CheckpointError(f"{where}: the restored tree's structure differs from the "
                            f"saved one")
    for (path, got), (_, want) in zip(_leaves(state), _leaves(template)):
      if np.shape(got) != np.shape(want) or np.dtype(got.dtype) != np.dtype(want.dtype):
        raise CheckpointError(f"{where}: {path} restored as {np.shape(got)} {got.dtype}, "
                              f"saved as {np.shape(want)} {np.dtype(want.dtype)}")

  @staticmethod
  def _check_values(where, integrity, sha256: str, problem: str | None) -> None:
    if problem is not None:
      raise CheckpointError(f"{where}: {problem}")
    if integrity is not None and integrity.get("sha256") != sha256:
      raise CheckpointError(f"{where}: the checksum of the restored arrays differs from "
                            f"the one written at save time")

  def restore_intact(self, template: TrainState, *,
                     warn: Callable[[str], None] | None = None
                     ) -> tuple[TrainState, dict[str, Any], int] | None:
    """The newest checkpoint that passes :meth:`restore`'s checks, as ``(state, meta,
    step)``; ``None`` when there is no checkpoint at all.

    Each damaged newer checkpoint is reported to ``warn`` (default: the "handgrad"
    logger) in one line and moved to
    ``<directory>.damaged/<step>`` (kept for inspection, out of the way of the steps
    that will be saved again).

    Raises:
      ValueError: a checkpoint is from another model or optimizer.
      CheckpointError: checkpoints exist but none is intact (one line listing why).
    """
    warn = warn or logger.warning
    steps = self.all_steps()
    if not steps:
      return None
    problems = []
    for step in reversed(steps):
      try:
        state, meta = self.restore(template, step=step)
      except CheckpointError as e:
        problems.append(str(e))
        continue
      if problems:
        warn(f"{problems[-1]}; falling back to the newest intact checkpoint, step {step}"
             if len(problems) == 1 else
             f"{len(problems)} damaged checkpoints ({'; '.join(problems)}); falling back "
             f"to the newest intact one, step {step}")
        self._set_aside([s for s in steps if s > step])
      return state, meta, step
    raise CheckpointError(f"{self.directory}: no intact checkpoint to resume from: "
                          + "; ".join(problems))

  def _set_aside(self, steps: list[int]) -> None:
    aside = self.directory.with_name(self.directory.name + ".damaged")
    if processes.is_primary():
      aside.mkdir(exist_ok=True)
      for step in steps:
        target = aside / str(step)
        n = 1
        while target.exists():
          target, n = aside / f"{step}.{n}", n + 1
        os.replace(self.directory / str(step), target)
    processes.barrier("handgrad-checkpoint-aside")
    self._manager.close()
    self._manager = self._new_manager()

  def close(self) -> None:
    self._manager.wait_until_finished()
    self._manager.close()

  def __enter__(self) -> "Checkpointer":
    return self

  def __exit__(self, *exc) -> None:
    self.close()
