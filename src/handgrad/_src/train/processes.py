"""The processes of a ``jax.distributed`` run taking every decision together.

Several processes train one model: each runs the same program on the same host values,
and every step, evaluation, checkpoint save and restore is a collective that all of
them enter.  Whatever a process finds out alone (process 0 refusing the run directory,
a checkpoint failing a check, a stop signal) is shared before anyone acts on it, so
that every process takes the same branch; an error raised on one process is raised on
all.  With a single process every function here is the identity or a no-op, and
nothing is communicated.

The values are exchanged with ``jax.experimental.multihost_utils`` (a small jitted
all-gather over every device), so they need no channel besides the devices'
collectives.
"""

from __future__ import annotations

from typing import Any, Sequence

import jax
import numpy as np

# Longest message shared between processes, in UTF-8 bytes (longer ones are cut).
MESSAGE_BYTES = 2048


def many() -> bool:
  """Whether this is one of several processes."""
  return jax.process_count() > 1


def is_primary() -> bool:
  """Whether this process writes the run's files (process 0)."""
  return jax.process_index() == 0


def _allgather(tree: Any) -> Any:
  from jax.experimental import multihost_utils
  return multihost_utils.process_allgather(tree)


def _encode(text: str) -> np.ndarray:
  raw = text.encode("utf-8")[:MESSAGE_BYTES]
  buf = np.zeros(MESSAGE_BYTES, np.uint8)
  buf[:len(raw)] = np.frombuffer(raw, np.uint8)
  return buf


def _decode(buf: np.ndarray, length: int) -> str:
  return bytes(np.asarray(buf[:length], np.uint8)).decode("utf-8", errors="ignore")


def first_message(message: str | None) -> tuple[int, str] | None:
  """``(process, message)`` of the lowest-numbered process that has a message, or
  ``None`` when none has; every process gets the same answer (collective)."""
  if not many():
    return None if message is None else (0, message)
  text = "" if message is None else message
  length = min(len(text.encode("utf-8")), MESSAGE_BYTES)
  flags, lengths, bufs = _allgather((np.int32(message is not None), np.int32(length),
                                     _encode(text)))
  for p, flag in enumerate(np.asarray(flags).reshape(-1)):
    if flag:
      return p, _decode(np.asarray(bufs)[p], int(np.asarray(lengths).reshape(-1)[p]))
  return None


def share_error(error: BaseException | None,
                kinds: Sequence[type[BaseException]] = ()) -> None:
  """Raises on every process the error of the lowest-numbered process that has one.

  The process whose error it is re-raises ``error`` itself; the others raise an error
  of the same class when it is one of ``kinds`` (each built from one message string),
  else a ``RuntimeError`` naming the process.  Nothing happens when no process has an
  error.  With a single process: raises ``error`` when given.
  """
  if not many():
    if error is not None:
      raise error
    return
  code = -1 if error is None else next(
      (i for i, k in enumerate(kinds) if type(error) is k), len(kinds))
  # An error class whose constructor takes more than its message says how it travels
  # (``to_shared`` / ``from_shared``, e.g. RunExistsError's directory and contents).
  payload = "" if error is None else (
      error.to_shared() if code < len(kinds) and hasattr(error, "to_shared") else str(error))
  text = "" if error is None else f"{code}|{type(error).__name__}|{payload}"
  found = first_message(None if error is None else text)
  if found is None:
    return
  process, shared = found
  if error is not None and process == jax.process_index():
    raise error
  code_text, name, message = shared.split("|", 2)
  code = int(code_text)
  if code < len(kinds):
    kind = kinds[code]
    raise kind.from_shared(message) if hasattr(kind, "from_shared") else kind(message)
  raise RuntimeError(f"process {process}: {name}: {message}")


def broadcast_text(text: str) -> str:
  """Process 0's ``text`` on every process (collective)."""
  if not many():
    return text
  from jax.experimental import multihost_utils
  length = np.int32(min(len(text.encode("utf-8")), MESSAGE_BYTES))
  length, buf = multihost_utils.broadcast_one_to_all((length, _encode(text)))
  return _decode(np.asarray(buf), int(length))


def any_process(flag: bool) -> bool:
  """Whether ``flag`` is true on some process (collective)."""
  if not many():
    return bool(flag)
  return bool(np.any(np.asarray(_allgather(np.int32(bool(flag))))))


def first_value(value: int | None) -> int | None:
  """The ``value`` of the lowest-numbered process that has one (collective)."""
  if not many():
    return value
  flags, values = _allgather((np.int32(value is not None),
                              np.int32(0 if value is None else value)))
  for flag, v in zip(np.asarray(flags).reshape(-1), np.asarray(values).reshape(-1)):
    if flag:
      return int(v)
  return None


def check_same(values: Sequence[int], what: str) -> None:
  """Raises ``RuntimeError`` on every process when the processes' ``values`` differ
  (e.g. each read its own copy of a directory that should be shared)."""
  if not many():
    return
  gathered = np.asarray(_allgather(np.asarray(values, np.int32)))
  if not (gathered == gathered[0]).all():
    raise RuntimeError(f"the processes disagree on {what} ({gathered.tolist()}): every "
                       f"process must see the same run directory (a shared filesystem)")


def barrier(name: str) -> None:
  """Waits until every process has reached the barrier ``name``."""
  if many():
    from jax.experimental import multihost_utils
    multihost_utils.sync_global_devices(name)


def host_value(leaf: Any) -> np.ndarray:
  """The whole value of an array on this host, as numpy.

  An array this process holds entirely is copied from its devices; a replicated one
  from one of its own copies; an array split over several processes' devices is
  gathered from all of them (collective: every process must call this for the same
  leaves in the same order).
  """
  if not isinstance(leaf, jax.Array) or leaf.is_fully_addressable:
    return np.asarray(jax.device_get(leaf))
  if leaf.is_fully_replicated:
    return np.asarray(leaf.addressable_data(0))
  from jax.experimental import multihost_utils
  return np.asarray(multihost_utils.process_allgather(leaf, tiled=True))
