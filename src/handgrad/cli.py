"""The ``handgrad`` command: ``handgrad check``, ``handgrad train``, ...

Each subcommand lives in ``handgrad/_src/cli/<name>.py`` with ``add_parser`` and ``run``.
Bad arguments and unreadable inputs end with one clear line on stderr, never a traceback.
"""

from __future__ import annotations

import argparse
import sys
from typing import Sequence

from handgrad._src.cli import check as check_cmd
from handgrad._src.cli import graph as graph_cmd
from handgrad._src.cli import train as train_cmd

_SUBCOMMANDS = [check_cmd, train_cmd, graph_cmd]


class CommandError(Exception):
  """An error to report as one line, exit status 2."""


class _Parser(argparse.ArgumentParser):
  """Bad arguments end with one line on stderr (exit status 2), not the usage text."""

  def error(self, message):
    self.exit(2, f"{self.prog}: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
  parser = _Parser(prog="handgrad", description="Backpropagation by hand on JAX.")
  sub = parser.add_subparsers(dest="command", metavar="COMMAND")
  sub.required = True
  for module in _SUBCOMMANDS:
    module.add_parser(sub)
  return parser


def main(argv: Sequence[str] | None = None) -> int:
  parser = build_parser()
  args = parser.parse_args(argv)
  try:
    return int(args.run(args) or 0)
  except KeyboardInterrupt:
    print("handgrad: interrupted", file=sys.stderr)
    return 130
  except (CommandError, OSError, ValueError) as e:
    print(f"handgrad {args.command}: error: {e}", file=sys.stderr)
    return 2


if __name__ == "__main__":
  sys.exit(main())
