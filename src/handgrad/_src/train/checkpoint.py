"""Checkpoints of a :class:`TrainState` with orbax.

A checkpoint is one directory per step under the checkpoint directory, written by
``orbax.checkpoint.CheckpointManager``: orbax writes into a temporary directory and
renames it when complete, so a run killed mid-save leaves either the previous
checkpoints or a finished new one, never a half-written one that restore would pick.
Each checkpoint holds two items:

* ``state``: the :class:`TrainState` arrays (``ocp.args.StandardSave``);
* ``meta``: a JSON dict (``ocp.args.JsonSave``), the loop's bookkeeping (epoch, the
  run's configuration) so that a resumed run can check it continues the same run.

Restoring needs a *template*, a state with the right structure, shapes and dtypes
(the freshly initialised state of the run being resumed); the restored arrays have
exactly the saved bits.
"""

from __future__ import annotations

import logging
import os
import pathlib
from typing import Any

import jax

from handgrad._src.train.state import TrainState


def quiet_orbax() -> None:
  """Silences orbax's and absl's INFO/WARNING logging (one line per save otherwise)."""
  try:
    from absl import logging as absl_logging
    absl_logging.set_verbosity(absl_logging.ERROR)
  except ImportError:  # pragma: no cover
    pass
  for name in ("absl", "orbax", "orbax.checkpoint", "jax._src.distributed"):
    logging.getLogger(name).setLevel(logging.ERROR)


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
    self.directory = pathlib.Path(directory).absolute()
    self.directory.mkdir(parents=True, exist_ok=True)
    options = ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True,
                                           enable_async_checkpointing=False)
    self._manager = ocp.CheckpointManager(self.directory, options=options)

  def all_steps(self) -> list[int]:
    """Steps of the complete checkpoints, ascending."""
    return sorted(self._manager.all_steps())

  def latest_step(self) -> int | None:
    """The newest complete checkpoint's step, or ``None`` if there is none."""
    return self._manager.latest_step()

  def save(self, state: TrainState, meta: dict[str, Any] | None = None) -> int:
    """Writes ``state`` (and ``meta``) as the checkpoint for step ``int(state.step)``.

    Saving the same step twice (e.g. an end-of-epoch save right after a periodic one)
    is a no-op.  Returns the step.
    """
    step = int(jax.device_get(state.step))
    if step in self._manager.all_steps():
      return step
    ocp = self._ocp
    self._manager.save(step, args=ocp.args.Composite(
        state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(dict(meta or {}))))
    self._manager.wait_until_finished()
    return step

  def restore(self, template: TrainState, *,
              step: int | None = None) -> tuple[TrainState, dict[str, Any]]:
    """The checkpoint at ``step`` (default: the newest) as ``(state, meta)``.

    Args:
      template: a state with the structure, shapes and dtypes of the saved one.
      step: which checkpoint; ``None`` for the newest.

    Raises:
      FileNotFoundError: there is no such checkpoint.
      ValueError: the checkpoint does not match ``template`` (another model or
        optimizer).
    """
    ocp = self._ocp
    if step is None:
      step = self.latest_step()
    if step is None or step not in self._manager.all_steps():
      raise FileNotFoundError(f"{self.directory}: no checkpoint"
                              + ("" if step is None else f" for step {step}"))
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, template)
    try:
      out = self._manager.restore(step, args=ocp.args.Composite(
          state=ocp.args.StandardRestore(abstract), meta=ocp.args.JsonRestore()))
    except (ValueError, KeyError, TypeError) as e:
      raise ValueError(f"{self.directory / str(step)}: the checkpoint does not match this "
                       f"run's model and optimizer ({type(e).__name__}: "
                       f"{str(e).splitlines()[0] if str(e) else ''})") from None
    state = out.state
    if not isinstance(state, TrainState):
      state = TrainState(*state)
    return state, dict(out.meta or {})

  def close(self) -> None:
    self._manager.wait_until_finished()
    self._manager.close()

  def __enter__(self) -> "Checkpointer":
    return self

  def __exit__(self, *exc) -> None:
    self.close()
