"""One run per output directory: an exclusive lock file holding the owner's pid and host.

``RunLock(directory)`` opens ``directory/.handgrad.lock`` and takes an exclusive
``fcntl.flock`` on it, then writes ``{"pid": ..., "host": ..., "since": ...}`` into it.
The kernel releases a flock when its process dies (SIGKILL included), so a lock file left
by a dead run is *stale*: the next run takes the lock and overwrites the owner (and says
so).  A second run while the first is alive cannot take the lock and refuses with one
line naming the first run's pid and host.  The file is emptied, not removed, on release:
removing it would let a run that opened the old file and one that creates a new file
both hold "the" lock.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import pathlib
import socket
import time
from typing import Callable

LOCK_FILE = ".handgrad.lock"


class RunLockedError(RuntimeError):
  """Another live process trains into the same output directory."""


def _owner(text: str) -> dict:
  try:
    owner = json.loads(text)
    return owner if isinstance(owner, dict) else {}
  except ValueError:
    return {}


def _alive(pid) -> bool:
  try:
    os.kill(int(pid), 0)
  except (ProcessLookupError, ValueError, TypeError):
    return False
  except PermissionError:  # someone else's live process
    return True
  return True


class RunLock:
  """An exclusive lock on an output directory (a context manager).

  Args:
    directory: the run's output directory (it must exist).
    log: receives the one-line notice when a stale lock is taken over (default: the
      "handgrad" logger).

  Raises:
    RunLockedError: another live process holds the lock; the message names its pid and
      host and the lock file.
  """

  def __init__(self, directory: str | os.PathLike, *,
               log: Callable[[str], None] | None = None):
    log = log or logging.getLogger("handgrad").warning
    self.path = pathlib.Path(directory) / LOCK_FILE
    self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
      fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
      owner = _owner(self._read())
      os.close(self._fd)
      self._fd = None
      who = (f"pid {owner.get('pid', '?')} on host {owner.get('host', '?')}"
             if owner else "another process")
      raise RunLockedError(f"{self.path.parent}: another run ({who}) is training into "
                           f"this directory (lock file {self.path}); wait for it to "
                           f"finish or choose another --out") from None
    previous = _owner(self._read())
    if previous:
      state = ("no longer running" if previous.get("host") != socket.gethostname()
               or not _alive(previous.get("pid")) else "not holding it")
      log(f"taking over the stale lock {self.path} of pid {previous.get('pid', '?')} on "
          f"host {previous.get('host', '?')} ({state})")
    self._write(json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                            "since": time.strftime("%Y-%m-%dT%H:%M:%S")}) + "\n")

  def _read(self) -> str:
    os.lseek(self._fd, 0, os.SEEK_SET)
    chunks = []
    while chunk := os.read(self._fd, 4096):
      chunks.append(chunk)
    return b"".join(chunks).decode("utf-8", "replace")

  def _write(self, text: str) -> None:
    os.ftruncate(self._fd, 0)
    os.lseek(self._fd, 0, os.SEEK_SET)
    os.write(self._fd, text.encode())
    os.fsync(self._fd)

  def release(self) -> None:
    """Empties the lock file and releases the lock (idempotent)."""
    if self._fd is None:
      return
    try:
      os.ftruncate(self._fd, 0)
    finally:
      fcntl.flock(self._fd, fcntl.LOCK_UN)
      os.close(self._fd)
      self._fd = None

  def __enter__(self) -> "RunLock":
    return self

  def __exit__(self, *exc) -> None:
    self.release()
