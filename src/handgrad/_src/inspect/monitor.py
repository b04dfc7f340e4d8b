"""Per-parameter gradient statistics (the seed's ``GradientMonitor``), computed on device.

PyTorch's monitor reads ``param.grad`` after ``loss.backward()``, one ``.item()`` per
number.  Here :func:`gradient_stats` is a pure function of the gradient pytree, so it
runs inside the jitted training step and returns a small pytree of scalars;
:class:`GradientMonitor` keeps the host-side history and applies the seed's health
rules::

    @jax.jit
    def step(params, x, y):
      grads = hg.grad(loss)(params, x, y)
      return update(params, grads), inspect.gradient_stats(grads)

    monitor = inspect.GradientMonitor()
    params, stats = step(params, x, y)
    monitor.log(stats)
    for issue in monitor.check_health():
      print(issue)
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from handgrad._src.inspect import plots
from handgrad._src.inspect._tree import Array, PyTree, named_leaves, upcast
from handgrad._src.inspect.health import (EXPLODING_NORM, LARGE_MAX_ABS, VANISHING_NORM,
                                          GradStats, check_health, to_host)


def leaf_stats(g: Array) -> GradStats:
  """:class:`GradStats` of one array, computed in at least float32."""
  g = upcast(jnp.asarray(g))
  n = g.size
  if n == 0:
    nan = jnp.full((), jnp.nan, g.dtype)
    zero = jnp.zeros((), g.dtype)
    return GradStats(nan, nan, zero, zero, jnp.ones((), g.dtype))
  mean = jnp.mean(g)
  # ddof=1 as in torch.Tensor.std(); with one element the 0/0 is NaN, as in PyTorch.
  std = jnp.sqrt(jnp.sum(jnp.square(g - mean)) / (n - 1)) if n > 1 else jnp.full(
      (), jnp.nan, g.dtype)
  max_abs = jnp.max(jnp.abs(g))
  norm = jnp.sqrt(jnp.sum(jnp.square(g)))
  finite = jnp.mean(jnp.isfinite(g).astype(g.dtype))
  return GradStats(mean, std, max_abs, norm, finite)


def gradient_stats(grads: PyTree) -> dict[str, GradStats]:
  """``{path: GradStats}`` for every floating-point leaf of ``grads``.

  Jit-safe: call it inside the jitted step and return its result (a pytree of
  scalars).  Paths are :func:`handgrad.nn.param_paths`'s (``"layers/0/W"``), in tree
  flattening order.

  Args:
    grads: a gradient pytree (e.g. from ``handgrad.grad``), any float dtypes.

  Returns:
    A dict from parameter path to its :class:`GradStats`.
  """
  return {path: leaf_stats(g) for path, g in named_leaves(grads)}


# --- history -------------------------------------------------------------------------

class GradientMonitor:
  """Host-side history of :func:`gradient_stats` results (the seed's ``GradientMonitor``).

  ``log(stats)`` moves one step's statistics to the host and appends them;
  :meth:`check_health` and :meth:`plot_gradient_flow` look at the latest entry.

  Args:
    vanishing, exploding, large: the health thresholds (the seed's 1e-7, 100, 10).
    max_history: keep at most this many entries (the oldest are dropped); ``None``
      keeps everything.
  """

  def __init__(self, *, vanishing: float = VANISHING_NORM,
               exploding: float = EXPLODING_NORM, large: float = LARGE_MAX_ABS,
               max_history: int | None = None):
    self.thresholds = dict(vanishing=vanishing, exploding=exploding, large=large)
    self.max_history = max_history
    self.history: list[dict[str, GradStats]] = []
    self.steps: list[int] = []
    self._stats_fn: Callable[[PyTree], Any] = jax.jit(gradient_stats)

  def log(self, stats: dict[str, GradStats], step: int | None = None) -> dict[str, GradStats]:
    """Appends one step's statistics (device arrays are fetched); returns them as floats."""
    host = to_host(stats)
    self.history.append(host)
    if step is None:
      step = self.steps[-1] + 1 if self.steps else 0
    self.steps.append(int(step))
    if self.max_history is not None and len(self.history) > self.max_history:
      del self.history[0], self.steps[0]
    return host

  def log_gradients(self, grads: PyTree, step: int | None = None) -> dict[str, GradStats]:
    """The seed's ``log_gradients``: computes :func:`gradient_stats` (jitted) and logs it."""
    return self.log(self._stats_fn(grads), step)

  @property
  def latest(self) -> dict[str, GradStats]:
    if not self.history:
      raise ValueError("GradientMonitor has no history yet: call log(stats) first")
    return self.history[-1]

  def series(self, name: str, field: str = "norm") -> np.ndarray:
    """One statistic of one parameter over the logged steps, as a float64 array."""
    if field not in GradStats._fields:
      raise ValueError(f"unknown statistic {field!r}; expected one of {GradStats._fields}")
    return np.array([getattr(h[name], field) if name in h else np.nan
                     for h in self.history], dtype=np.float64)

  def check_health(self) -> list[str]:
    """:func:`check_health` of the latest entry (``["No history"]`` before any)."""
    if not self.history:
      return ["No history"]
    return check_health(self.latest, **self.thresholds)

  def plot_gradient_flow(self, path: str, *, layer_filter: str | None = None,
                         title: str = "Gradient flow") -> str:
    """:func:`handgrad.inspect.plot_gradient_flow` of the latest entry; returns ``path``."""
    return plots.plot_gradient_flow(self.latest, path, layer_filter=layer_filter, title=title,
                              **self.thresholds)
