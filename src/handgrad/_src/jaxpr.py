"""The one place that touches JAX internals and walks jaxprs.

Everything else in handgrad reads equations, nested jaxprs, source lines and
per-release differences through the functions here, so a new JAX release is met in
this module alone.
"""

from __future__ import annotations

from typing import Any


def unwrap(jaxpr: Any):
  """The open jaxpr of a ``ClosedJaxpr`` (or the jaxpr itself)."""
  return getattr(jaxpr, "jaxpr", jaxpr)


def primitive_names(jaxpr: Any) -> list[str]:
  """The primitive names of ``jaxpr``'s equations, in order (nested jaxprs not entered).

  Rules whose primitive carries a body (``reduce_window``'s ``jaxpr``, ``scatter``'s
  ``update_jaxpr``, variadic ``reduce``'s ``computation``) read it with this to tell a
  sum, a max or a plain overwrite from anything else, and raise on anything else.
  """
  return [eqn.primitive.name for eqn in unwrap(jaxpr).eqns]


# -------------------------------------------------------------------------------------
# User source lines for inspection reports: the innermost frame outside JAX and
# outside the given library directories (handgrad's own layers and ops).

def user_frames(eqn: Any, exclude: tuple[str, ...] = ()) -> list[tuple[str, int, str]]:
  """``(file, line, function)`` of the frames of ``eqn``'s traceback, innermost first,
  that are neither JAX's nor under one of the ``exclude`` directories."""
  from jax._src import source_info_util
  try:
    frames = list(source_info_util.user_frames(eqn.source_info.traceback))
  except Exception:  # source info is best-effort
    return []
  return [(f.file_name, f.start_line, f.function_name) for f in frames
          if not any(f.file_name.startswith(d) for d in exclude)]


def user_source_line(eqn: Any, exclude: tuple[str, ...] = ()) -> str:
  """``file:line (function)`` of the innermost frame of :func:`user_frames`, or ``""``."""
  frames = user_frames(eqn, exclude)
  return f"{frames[0][0]}:{frames[0][1]} ({frames[0][2]})" if frames else ""
