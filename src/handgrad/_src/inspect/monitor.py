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
from jax import lax

from handgrad._src.inspect import plots
from handgrad._src.inspect._tree import Array, PyTree, named_leaves, upcast
from handgrad._src.inspect.health import (EXPLODING_NORM, LARGE_MAX_ABS, VANISHING_NORM,
                                          GradStats, check_health, to_host)


# The one-pass variance is kept when Σ(g - mean)² is at least this fraction of Σg²
# (|mean| below about 10 standard deviations); otherwise it is recomputed in two passes.
_ONE_PASS_MIN = 1e-2


def _sum_sq(g: Array) -> Array:
  """Σg², written as ``optax.tree.norm`` (hence ``handgrad.train``'s ``global_norm``)
  writes it, on the same array: in a training step that also computes the global norm,
  XLA's common-subexpression elimination makes the two one reduction."""
  return jnp.sum(jnp.square(g.real) + jnp.square(g.imag))


def _sums(g: Array) -> tuple[Array, Array, Array]:
  """``(Σg, Σg², max |g|)`` of a non-empty float array: three reductions of ``g``."""
  return jnp.sum(g), _sum_sq(g), jnp.max(jnp.abs(g))


def _centred_sum(g: Array, total: Array, sum_sq: Array) -> Array:
  """The one-pass ``Σ(g - mean)² = Σg² - mean·Σg`` (rounding error about ``eps·Σg²``)."""
  return sum_sq - total * (total / g.size)


def _one_pass_ok(g: Array, total: Array, sum_sq: Array) -> Array:
  """Whether the one-pass centred sum and the finite fraction 1 are exact enough: Σg²
  finite (no NaN or inf element, no overflow) and ``Σ(g - mean)²`` at least
  ``_ONE_PASS_MIN`` of ``Σg²`` (``|mean|`` below about 10 standard deviations)."""
  return jnp.isfinite(sum_sq) & (_centred_sum(g, total, sum_sq) >= _ONE_PASS_MIN * sum_sq)


def _careful(g: Array, total: Array, sum_sq: Array) -> tuple[Array, Array]:
  """``(Σ(g - mean)², finite fraction)`` when ``_one_pass_ok`` fails: the two-pass
  centred sum where the one-pass one lost its digits, and the counted fraction."""
  one_pass = _centred_sum(g, total, sum_sq)
  keep = (one_pass >= _ONE_PASS_MIN * sum_sq) | ~jnp.isfinite(sum_sq)
  two_pass = jnp.sum(jnp.square(g - total / g.size))
  return jnp.where(keep, one_pass, two_pass), jnp.mean(jnp.isfinite(g).astype(g.dtype))


def _stats(g: Array, total, sum_sq, max_abs, centred, finite) -> GradStats:
  n, dt = g.size, g.dtype
  # A NaN element makes Σg² NaN (its terms are >= 0); XLA:CPU's vectorised max
  # reduction can drop a NaN of a long array, so max_abs takes it from Σg².
  max_abs = jnp.where(jnp.isnan(sum_sq), jnp.nan, max_abs)
  if n > 1:
    # ddof=1 as in torch.Tensor.std(); the clamp (which keeps NaN) guards a rounding
    # below 0 for constant data.
    std = jnp.sqrt(jnp.maximum(centred, 0) / (n - 1))
  else:  # with one element the 0/0 is NaN, as in PyTorch
    std = jnp.full((), jnp.nan, dt)
  return GradStats(total / n, std, max_abs, jnp.sqrt(sum_sq), finite)


def _empty_stats(dt) -> GradStats:
  nan, zero = jnp.full((), jnp.nan, dt), jnp.zeros((), dt)
  return GradStats(nan, nan, zero, zero, jnp.ones((), dt))


def leaf_stats(g: Array) -> GradStats:
  """:class:`GradStats` of one array, computed in at least float32 (see
  :func:`gradient_stats`)."""
  return _stats_of([upcast(jnp.asarray(g))])[0]


def _stats_of(arrays: list[Array]) -> list[GradStats]:
  """:class:`GradStats` of each array (already upcast), with one ``lax.cond`` for all."""
  full = [g for g in arrays if g.size]
  sums = [_sums(g) for g in full]
  careful = []
  if full:
    ok = jnp.stack([_one_pass_ok(g, t, s) for g, (t, s, _m) in zip(full, sums)])

    def one_pass(operands):
      return [(_centred_sum(g, t, s), jnp.ones((), g.dtype))
              for g, (t, s, _m) in zip(*operands)]

    def recompute(operands):
      return [_careful(g, t, s) for g, (t, s, _m) in zip(*operands)]

    careful = lax.cond(jnp.all(ok), one_pass, recompute, (full, sums))
  done = iter([_stats(g, t, s, m, c, f)
               for g, (t, s, m), (c, f) in zip(full, sums, careful)])
  return [next(done) if g.size else _empty_stats(g.dtype) for g in arrays]


def gradient_stats(grads: PyTree) -> dict[str, GradStats]:
  """``{path: GradStats}`` for every floating-point leaf of ``grads``.

  Jit-safe: call it inside the jitted step and return its result (a pytree of
  scalars).  Paths are :func:`handgrad.nn.param_paths`'s (``"layers/0/W"``), in tree
  flattening order.  Every statistic is computed in at least float32.

  Cost: three reductions read each leaf, ``Σg``, ``Σg²`` and ``max |g|``, and the
  statistics are arithmetic on them.  ``Σg²`` is written as ``optax.tree.norm`` writes
  it, so in a training step that also takes the gradients' global norm (``make_train_
  step`` does) XLA computes it once for both.  The variance is the one-pass
  ``Σ(g - mean)² = Σg² - mean·Σg`` and the finite fraction is 1 when ``Σg²`` is finite;
  one ``lax.cond`` for the whole tree recomputes, only when some leaf needs it, the
  centred sum in two passes (a leaf whose mean is large against its spread, where the
  one-pass sum loses its digits: ``std`` stays within about ``1e-5`` relative of the
  two-pass value) and the finite fraction by counting (a leaf with a NaN or inf).
  A NaN or inf element shows in ``mean``/``std``/``max_abs``/``norm`` as in PyTorch.
  On XLA:CPU each reduction is its own pass over the leaf; the cost is measured in
  ``bench/diagnostics.py`` (``make_train_step(monitor=True, monitor_every=k)`` pays
  it on one step in k).

  Args:
    grads: a gradient pytree (e.g. from ``handgrad.grad``), any float dtypes.

  Returns:
    A dict from parameter path to its :class:`GradStats`.
  """
  named = named_leaves(grads)
  stats = _stats_of([upcast(jnp.asarray(g)) for _, g in named])
  return {path: st for (path, _), st in zip(named, stats)}


def gradient_stats_every(grads: PyTree, step: Array, every: int, *,
                         stats: Callable[[PyTree], Any] | None = None) -> Any:
  """:func:`gradient_stats` on steps ``step % every == 0``, NaN statistics otherwise.

  The choice is made on the device with ``lax.cond``: the step compiles once and
  returns the same pytree on every step.  It measured slower than choosing between two
  compiled steps on the host (:class:`EveryKSteps`, what ``make_train_step(...,
  monitor_every=k)`` does; ``bench/diagnostics.py``), so use it only where the step
  number is traced, e.g. inside a ``lax.scan`` over steps::

    metrics["grad_stats"] = gradient_stats_every(grads, state.step + 1, every)

  and log only the monitored steps (``GradientMonitor.log`` when
  ``step % every == 0``).

  Args:
    grads: the gradient pytree.
    step: the step number, an integer scalar (traced inside ``jit``).
    every: monitor one step in ``every`` (``every=1``: every step, no ``cond``).
    stats: the statistics ``grads -> pytree`` (default :func:`gradient_stats`).
  """
  if isinstance(every, bool) or not isinstance(every, (int, np.integer)) or every < 1:
    raise ValueError(f"gradient_stats_every needs every >= 1, got {every!r}")
  fn = gradient_stats if stats is None else stats
  if every == 1:
    return fn(grads)
  shapes = jax.eval_shape(fn, grads)

  def skipped(_):
    return jax.tree.map(lambda s: jnp.full(s.shape, jnp.nan, s.dtype), shapes)

  return lax.cond(jnp.asarray(step) % every == 0, fn, skipped, grads)


class EveryKSteps:
  """Runs ``monitored`` on the steps whose number is a multiple of ``every``, ``plain``
  on the others: the host chooses between two compiled steps.

  Steps are numbered from 1, as ``handgrad.train.fit`` and ``handgrad train --monitor
  N`` number them: with ``every=10`` steps 10, 20, ... are monitored.  The statistics
  then cost nothing on the ``every - 1`` other steps, which run the plain step's own
  program (measured against :func:`gradient_stats_every`'s in-step ``lax.cond`` in
  ``bench/diagnostics.py``: this measures better on XLA:CPU).  Both steps take and
  return the same state; ``monitored`` returns the statistics with its metrics.

  The step number comes from one of two places:

  * ``steps_done=None``: a host-side count of calls, ``start`` steps already done (the
    first call is step ``start + 1``);
  * ``steps_done=lambda state: state.step``: the state's own count of steps done.  The
    steps must return ``(state, ...)``.  The count is read from the device (one sync)
    only when the state passed in is not the one the previous call returned, e.g.
    the first call, a resumed or a replaced state; otherwise it is the previous
    call's number plus one, known on the host, and nothing waits for the device.
    When the count is traced (the steps called under an outer ``jax.jit`` or
    ``lax.scan``) no host choice is possible: ``traced(state, *args)`` runs instead
    (e.g. a step using :func:`gradient_stats_every`); without it that is an error.

  Args:
    plain, monitored: the two steps (``jax.jit``-ed), ``step(state, *args)``.
    every: monitor the steps whose number is a multiple of ``every`` (>= 1).
    start: with ``steps_done=None``, the number of steps already done.
    steps_done: ``state -> number of steps done`` (an integer scalar), or ``None``.
    traced: the step to run when ``steps_done(state)`` is traced.

  ``last_monitored`` says whether the latest call ran ``monitored``.
  """

  def __init__(self, plain: Callable, monitored: Callable, every: int, start: int = 0, *,
               steps_done: Callable[[Any], Any] | None = None,
               traced: Callable | None = None):
    if isinstance(every, bool) or not isinstance(every, (int, np.integer)) or every < 1:
      raise ValueError(f"EveryKSteps needs every >= 1, got {every!r}")
    self.plain, self.monitored, self.every = plain, monitored, int(every)
    self.steps_done, self.traced = steps_done, traced
    self.count = int(start)
    self.last_monitored = False
    self._returned: Any = None  # steps_done(state) of the state the last call returned

  def _number(self, state) -> int | None:
    """The number of the step about to run; ``None`` when it is traced."""
    if self.steps_done is None:
      return self.count + 1
    done = self.steps_done(state)
    if self._returned is not None and done is self._returned:
      return self.count + 1
    if isinstance(done, jax.core.Tracer):
      return None
    if isinstance(done, jax.Array) and not done.is_fully_addressable:
      done = done.addressable_data(0)  # the same on every process
    return int(np.asarray(done)) + 1

  def __call__(self, state, *args):
    number = self._number(state)
    if number is None:
      if self.traced is None:
        raise ValueError("EveryKSteps: the state's step count is traced (called under "
                         "jax.jit or lax.scan), so the host cannot choose the step; pass "
                         "traced=... or call it outside jit")
      self.last_monitored = False
      return self.traced(state, *args)
    self.last_monitored = number % self.every == 0
    out = (self.monitored if self.last_monitored else self.plain)(state, *args)
    self.count = number
    if self.steps_done is not None:
      self._returned = self.steps_done(out[0])
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
