"""The seed's ``plot_gradient_flow``: a bar chart of gradient norms, written to a PNG."""

from __future__ import annotations

import math
import os

from handgrad._src.inspect.health import (EXPLODING_NORM, LARGE_MAX_ABS, VANISHING_NORM,
                                          GradStats, Status, classify, to_host)

# Colour of each health status (see ``health.classify``).
COLOURS = {
    Status.OK: "tab:blue",
    Status.LARGE: "tab:orange",
    Status.VANISHING: "tab:purple",
    Status.EXPLODING: "tab:red",
    Status.NONFINITE: "black",
}


def bar_colours(stats: dict[str, GradStats], *, vanishing: float = VANISHING_NORM,
                exploding: float = EXPLODING_NORM, large: float = LARGE_MAX_ABS,
                layer_filter: str | None = None) -> list[tuple[str, str]]:
  """``[(name, colour)]`` of the bars :func:`plot_gradient_flow` draws, in order.

  A parameter is coloured by its worst status (:data:`COLOURS`); healthy ones are
  blue.  ``layer_filter`` keeps the names that contain it, as in the seed.
  """
  status = classify(stats, vanishing=vanishing, exploding=exploding, large=large)
  return [(name, COLOURS[s]) for name, s in status.items()
          if layer_filter is None or layer_filter in name]


def plot_gradient_flow(stats: dict[str, GradStats], path: str | os.PathLike, *,
                       layer_filter: str | None = None, vanishing: float = VANISHING_NORM,
                       exploding: float = EXPLODING_NORM, large: float = LARGE_MAX_ABS,
                       title: str = "Gradient flow") -> str:
  """Writes a bar chart of the gradient L2 norm of every parameter to ``path`` (PNG).

  One bar per parameter, in parameter order (input layer on the left), on a log
  scale, coloured by health status (:func:`bar_colours`), with the vanishing and
  exploding thresholds drawn as dashed lines.  A zero norm is drawn as a stub at the
  bottom of the axis and a non-finite one up to its top (black): a log axis shows
  neither.  Renders with matplotlib's Agg backend; nothing is shown on screen.

  Args:
    stats: :func:`gradient_stats`'s result (device arrays or host numbers).
    path: where to write the PNG.
    layer_filter: plot only the parameters whose path contains this string.
    vanishing, exploding, large: health thresholds (the seed's 1e-7, 100 and 10).
    title: the figure title.

  Returns:
    ``path`` as a string.
  """
  # A bare Figure renders with Agg and leaves pyplot's global state alone.
  from matplotlib.figure import Figure
  from matplotlib.patches import Patch

  host = to_host(stats)
  bars = bar_colours(host, vanishing=vanishing, exploding=exploding, large=large,
                     layer_filter=layer_filter)
  if not bars:
    raise ValueError(f"no parameter to plot (layer_filter={layer_filter!r}, "
                     f"parameters: {', '.join(host) or 'none'})")
  names = [n for n, _ in bars]
  norms = [host[n].norm for n in names]
  positive = [v for v in norms if math.isfinite(v) and v > 0]
  lo = min(positive + [vanishing]) / 10
  hi = max(positive + [exploding]) * 10
  tops = [hi if not math.isfinite(v) else (2 * lo if v <= 0 else v) for v in norms]

  fig = Figure(figsize=(max(6.0, 0.5 * len(names) + 2), 5))
  ax = fig.add_subplot()
  xs = range(len(names))
  ax.bar(xs, [t - lo for t in tops], bottom=lo, color=[c for _, c in bars])
  ax.set_yscale("log")
  ax.set_ylim(lo, hi)
  lines = [ax.axhline(vanishing, color=COLOURS[Status.VANISHING], linestyle="--", linewidth=1,
                     label=f"vanishing < {vanishing:g}"),
           ax.axhline(exploding, color=COLOURS[Status.EXPLODING], linestyle="--", linewidth=1,
                     label=f"exploding > {exploding:g}")]
  ax.set_xticks(list(xs), names, rotation=45, ha="right")
  ax.set_xlabel("Parameter")
  ax.set_ylabel("Gradient L2 norm")
  ax.set_title(title)
  used = sorted({c for _, c in bars}, key=list(COLOURS.values()).index)
  labels = {c: s.value for s, c in COLOURS.items()}
  ax.legend(handles=[Patch(color=c, label=labels[c]) for c in used] + lines, loc="best")
  fig.tight_layout()
  path = os.fspath(path)
  fig.savefig(path, format="png", dpi=100)
  return path
