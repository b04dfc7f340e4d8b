"""What a subcommand raises to end with one line on stderr, and how errors become lines."""

from __future__ import annotations


class CommandError(Exception):
  """An error to report as one line, exit status 2."""


def one_line(error: BaseException) -> str:
  """The error's message on one line (continuation lines joined with "; ")."""
  lines = [line.strip() for line in str(error).splitlines() if line.strip()]
  return "; ".join(lines) if lines else type(error).__name__


def out_of_memory(error: BaseException) -> bool:
  """Whether ``error`` is XLA's out-of-memory error (``RESOURCE_EXHAUSTED``)."""
  return "RESOURCE_EXHAUSTED" in str(error) and type(error).__name__ in (
      "XlaRuntimeError", "JaxRuntimeError")
