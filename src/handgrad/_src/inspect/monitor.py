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

import math
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from handgrad._src.inspect._tree import (Array, PyTree, in_path_order, named_leaves,
                                         upcast)

# The seed's thresholds (``check_health``).
VANISHING = 1e-7
EXPLODING = 100.0
LARGE = 10.0


class GradStats(NamedTuple):
  """Statistics of one gradient array; every field is a scalar (float32 or wider).

  ``std`` is the unbiased sample standard deviation (``ddof=1``), like
  ``torch.Tensor.std()``: it is NaN for a gradient with a single element, as in
  PyTorch and ``np.std(g, ddof=1)``.  Every statistic is taken over all elements, so a
  NaN or inf gradient element shows in ``mean``/``std``/``max_abs``/``norm`` as it
  does in PyTorch; ``finite_fraction`` says how many elements were finite.
  """
  mean: Array
  std: Array
  max_abs: Array
  norm: Array
  finite_fraction: Array


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


def to_host(stats: dict[str, GradStats]) -> dict[str, GradStats]:
  """``stats`` with every field a Python float (one device-to-host transfer), in
  parameter order (``jax.jit`` hands dicts back with their keys sorted as strings)."""
  stats = jax.device_get(stats)
  return in_path_order({k: GradStats(*(float(np.asarray(f)) for f in v))
                        for k, v in stats.items()})


# --- health ----------------------------------------------------------------------------

def check_health(stats: dict[str, GradStats], *, vanishing: float = VANISHING,
                 exploding: float = EXPLODING, large: float = LARGE) -> list[str]:
  """The seed's health rules, one message per problem, or ``["All gradients healthy"]``.

  Per parameter, in this order:

  * ``[NONFINITE] name: finite=0.75`` when some elements are NaN or inf (the seed's
    rules compare NaN norms and so call them healthy; this rule is an addition);
  * ``[VANISHING] name: norm=1.00e-08`` when ``norm < vanishing``;
  * ``[EXPLODING] name: norm=1.00e+03`` when ``norm > exploding``;
  * ``[LARGE] name: max=2.00e+01`` when ``max |g| > large``.

  Args:
    stats: the result of :func:`gradient_stats` (device arrays or host numbers).
    vanishing, exploding, large: thresholds (the seed's 1e-7, 100 and 10).
  """
  issues = []
  for name, s in to_host(stats).items():
    if s.finite_fraction < 1.0:
      issues.append(f"[NONFINITE] {name}: finite={s.finite_fraction:.2f}")
    if s.norm < vanishing:
      issues.append(f"[VANISHING] {name}: norm={s.norm:.2e}")
    if s.norm > exploding:
      issues.append(f"[EXPLODING] {name}: norm={s.norm:.2e}")
    if s.max_abs > large:
      issues.append(f"[LARGE] {name}: max={s.max_abs:.2e}")
  return issues if issues else ["All gradients healthy"]


def classify(stats: dict[str, GradStats], *, vanishing: float = VANISHING,
             exploding: float = EXPLODING, large: float = LARGE) -> dict[str, str]:
  """The worst health status of each parameter.

  One of ``"nonfinite"``, ``"exploding"``, ``"vanishing"``, ``"large"`` or ``"ok"``
  (in that order of precedence), by the rules of :func:`check_health`.
  """
  out = {}
  for name, s in to_host(stats).items():
    if s.finite_fraction < 1.0 or not math.isfinite(s.norm):
      out[name] = "nonfinite"
    elif s.norm > exploding:
      out[name] = "exploding"
    elif s.norm < vanishing:
      out[name] = "vanishing"
    elif s.max_abs > large:
      out[name] = "large"
    else:
      out[name] = "ok"
  return out


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

  def __init__(self, *, vanishing: float = VANISHING, exploding: float = EXPLODING,
               large: float = LARGE, max_history: int | None = None):
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
    from handgrad._src.inspect.plots import plot_gradient_flow
    return plot_gradient_flow(self.latest, path, layer_filter=layer_filter, title=title,
                              **self.thresholds)
