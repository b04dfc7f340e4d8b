"""DOT text to a picture: Graphviz's ``dot`` when installed, else ``graphviz-pure``.

``graphviz-pure`` is a self-contained port of Graphviz's ``dot`` command that installs
from the package index with handgrad, so pictures work on a machine that has only
Python.  It writes PNG and SVG (not PDF), so those are the formats offered.  A renderer
that fails raises :class:`RenderError`, one line quoting the renderer's own message.
"""

from __future__ import annotations

import pathlib
import shutil
import subprocess
import sys
import sysconfig

#: Output formats offered: both renderers write these (graphviz-pure has no ``pdf``).
FORMATS = ("png", "svg")
#: Renderer choices: the system's Graphviz ``dot``, or the pip-installed ``graphviz-pure``.
RENDERERS = ("auto", "dot", "graphviz-pure")


class RenderError(RuntimeError):
  """No renderer was found, or it failed; the one-line message quotes the renderer."""


def check_format(format: str) -> None:
  if format not in FORMATS:
    raise ValueError(f"format must be one of {', '.join(FORMATS)}, got {format!r}")


def _graphviz_pure() -> str | None:
  """The ``graphviz-pure`` executable: on PATH, or in this interpreter's scripts folder
  (where pip put it, also when a virtual environment's ``bin`` is not on PATH)."""
  found = shutil.which("graphviz-pure")
  if found:
    return found
  for folder in (sysconfig.get_path("scripts"), str(pathlib.Path(sys.executable).parent)):
    found = shutil.which("graphviz-pure", path=folder)
    if found:
      return found
  return None


def find_renderer(renderer: str = "auto") -> tuple[str, str]:
  """``(name, executable)`` of the renderer to use; raises :class:`RenderError` if none."""
  if renderer not in RENDERERS:
    raise ValueError(f"renderer must be one of {', '.join(RENDERERS)}, got {renderer!r}")
  if renderer in ("auto", "dot"):
    exe = shutil.which("dot")
    if exe:
      return "dot", exe
  if renderer in ("auto", "graphviz-pure"):
    exe = _graphviz_pure()
    if exe:
      return "graphviz-pure", exe
  missing = {"auto": "neither Graphviz's `dot` nor `graphviz-pure` is installed",
             "dot": "Graphviz's `dot` is not installed",
             "graphviz-pure": "`graphviz-pure` is not installed"}[renderer]
  raise RenderError(f"cannot render the graph: {missing} (pip install graphviz-pure, "
                    f"or install Graphviz)")


def _renderer_message(stderr: bytes) -> str:
  """The renderer's error on one line: its ``Error`` lines, else its last line."""
  lines = [l.strip() for l in stderr.decode("utf-8", "replace").splitlines() if l.strip()]
  errors = [l for l in lines if l.lower().startswith("error")]
  return "; ".join(errors or lines[-1:]) or "no message"


def render(source: str, format: str = "svg", *, renderer: str = "auto",
           name: str = "<graph>") -> bytes:
  """The picture of the DOT text ``source`` in ``format`` (``png`` or ``svg``), as bytes.

  ``name`` names the graph in errors.  Raises :class:`RenderError` with the renderer's
  own message (on one line) when it exits non-zero or writes nothing.
  """
  check_format(format)
  tool, exe = find_renderer(renderer)
  try:
    proc = subprocess.run([exe, f"-T{format}"], input=source.encode("utf-8"),
                          capture_output=True)
  except OSError as e:
    raise RenderError(f"cannot render {name}: {tool} ({exe}) did not run: {e}") from None
  if proc.returncode != 0 or not proc.stdout:
    raise RenderError(f"cannot render {name} as {format}: {tool} exited with status "
                      f"{proc.returncode}: {_renderer_message(proc.stderr)}")
  return proc.stdout
