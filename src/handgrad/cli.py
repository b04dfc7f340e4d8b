"""The ``handgrad`` command: ``handgrad check``, ``handgrad train``, ``handgrad graph``.

Each subcommand lives in ``handgrad/_src/cli/<name>.py`` with ``add_parser`` and ``run``.
Bad arguments and unreadable inputs end with one clear line on stderr, never a traceback.
Library notices (``logging.getLogger("handgrad")``) are printed on stderr.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
from typing import Sequence

from handgrad._src.cli import check as check_cmd
from handgrad._src.cli import graph as graph_cmd
from handgrad._src.cli import train as train_cmd
from handgrad._src.cli.errors import CommandError
from handgrad._src.cli.errors import one_line
from handgrad._src.cli.errors import out_of_memory

_SUBCOMMANDS = [check_cmd, train_cmd, graph_cmd]

__all__ = ["CommandError", "build_parser", "main"]


class _Parser(argparse.ArgumentParser):
  """Bad arguments end with one line on stderr (exit status 2), not the usage text."""

  def error(self, message):
    self.exit(2, f"{self.prog}: error: {message}\n")


def _version() -> str:
  from handgrad import __version__
  return f"handgrad {__version__}"


def build_parser() -> argparse.ArgumentParser:
  parser = _Parser(prog="handgrad", description="Backpropagation by hand on JAX.")
  parser.add_argument("--version", action="version", version=_version())
  sub = parser.add_subparsers(dest="command", metavar="COMMAND")
  sub.required = True
  for module in _SUBCOMMANDS:
    module.add_parser(sub)
  return parser


class _StderrHandler(logging.Handler):
  """Writes records to whatever ``sys.stderr`` is at the time (tests capture it)."""

  def emit(self, record):
    try:
      prefix = "warning: " if record.levelno >= logging.WARNING else ""
      sys.stderr.write(f"handgrad: {prefix}{record.getMessage()}\n")
      sys.stderr.flush()
    except Exception:  # noqa: BLE001 - logging must not raise
      self.handleError(record)


def configure_logging() -> None:
  """Library notices at INFO and above go to stderr, once per process."""
  log = logging.getLogger("handgrad")
  if not any(isinstance(h, _StderrHandler) for h in log.handlers):
    log.addHandler(_StderrHandler())
  log.setLevel(logging.INFO)
  log.propagate = False


def main(argv: Sequence[str] | None = None) -> int:
  parser = build_parser()
  args = parser.parse_args(argv)
  configure_logging()
  prefix = f"handgrad {args.command}: error:"
  try:
    return int(args.run(args) or 0)
  except KeyboardInterrupt as e:
    signum = getattr(e, "signum", signal.SIGINT)
    print(f"handgrad {args.command}: {one_line(e) if str(e) else 'interrupted'}",
          file=sys.stderr)
    return 128 + int(signum)
  except (CommandError, OSError, ValueError, RuntimeError) as e:
    if out_of_memory(e):
      print(f"{prefix} out of memory on the device (RESOURCE_EXHAUSTED); use "
            f"--accumulate K to split each batch into K micro-batches, or a smaller "
            f"--batch-size", file=sys.stderr)
    else:
      print(f"{prefix} {one_line(e)}", file=sys.stderr)
    return 2


if __name__ == "__main__":
  sys.exit(main())
