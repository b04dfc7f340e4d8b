"""Gradient health: the thresholds, the statuses and the rules, defined once.

:mod:`monitor` (``check_health``), :mod:`plots` (bar colours), :mod:`exploding`
(the ranking's statuses) and the computation-graph picture (edge colours) all read
their numbers and words here, so "exploding" means one thing everywhere.  Threshold
names end in what they bound (``EXPLODING_NORM``); statuses are members of
:class:`Status` (a ``str`` enum, so ``Status.EXPLODING == "exploding"``).

This module sits at the bottom of the inspection package: it imports none of it.
"""

from __future__ import annotations

import enum
import math
from typing import NamedTuple

import jax
import numpy as np

from handgrad._src.inspect._tree import Array, in_path_order

# The seed's thresholds (its ``check_health``).
VANISHING_NORM = 1e-7  # a gradient L2 norm below this vanishes
EXPLODING_NORM = 100.0  # a gradient L2 norm above this explodes
LARGE_MAX_ABS = 10.0  # a largest |element| above this is large


class Status(str, enum.Enum):
  """The health status of one parameter's gradient (worst first)."""
  NONFINITE = "nonfinite"
  EXPLODING = "exploding"
  VANISHING = "vanishing"
  LARGE = "large"
  OK = "ok"

  def __str__(self) -> str:
    return self.value


class Rank(str, enum.Enum):
  """The seed's ranking statuses (``debug_exploding_gradients``), relative to a
  ``max_norm``: HIGH above it, EXPLODING above ten times it."""
  OK = "OK"
  HIGH = "HIGH"
  EXPLODING = "EXPLODING"

  def __str__(self) -> str:
    return self.value


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


def to_host(stats: dict[str, GradStats]) -> dict[str, GradStats]:
  """``stats`` with every field a Python float (one device-to-host transfer), in
  parameter order (``jax.jit`` hands dicts back with their keys sorted as strings)."""
  stats = jax.device_get(stats)
  return in_path_order({k: GradStats(*(float(np.asarray(f)) for f in v))
                        for k, v in stats.items()})


# --- rules -----------------------------------------------------------------------------

def norm_status(norm: float, *, vanishing: float = VANISHING_NORM,
                exploding: float = EXPLODING_NORM) -> Status:
  """The status a norm alone gives: NONFINITE, EXPLODING, VANISHING or OK."""
  if not math.isfinite(norm):
    return Status.NONFINITE
  if norm > exploding:
    return Status.EXPLODING
  if norm < vanishing:
    return Status.VANISHING
  return Status.OK


def status(s: GradStats, *, vanishing: float = VANISHING_NORM,
           exploding: float = EXPLODING_NORM, large: float = LARGE_MAX_ABS) -> Status:
  """The worst status of one parameter's (host) statistics, in the precedence
  NONFINITE, EXPLODING, VANISHING, LARGE, OK."""
  if s.finite_fraction < 1.0:
    return Status.NONFINITE
  by_norm = norm_status(s.norm, vanishing=vanishing, exploding=exploding)
  if by_norm is not Status.OK:
    return by_norm
  return Status.LARGE if s.max_abs > large else Status.OK


def classify(stats: dict[str, GradStats], *, vanishing: float = VANISHING_NORM,
             exploding: float = EXPLODING_NORM,
             large: float = LARGE_MAX_ABS) -> dict[str, Status]:
  """The worst health status of each parameter, by the rules of :func:`check_health`.

  One of ``"nonfinite"``, ``"exploding"``, ``"vanishing"``, ``"large"`` or ``"ok"``
  (:class:`Status` members, equal to those strings), in that order of precedence.
  """
  return {name: status(s, vanishing=vanishing, exploding=exploding, large=large)
          for name, s in to_host(stats).items()}


def rank_status(norm: float, max_norm: float) -> Rank:
  """The seed's rule: EXPLODING above 10·max_norm, HIGH above max_norm, else OK.

  A non-finite norm (NaN or inf) is EXPLODING; the seed's comparisons would call a
  NaN norm OK.
  """
  if not math.isfinite(norm) or norm > max_norm * 10:
    return Rank.EXPLODING
  return Rank.HIGH if norm > max_norm else Rank.OK


def fraction_str(f: float) -> str:
  """A fraction in [0, 1] with two decimals, or as many more as it takes to show its
  distance from 1, rounded down: a value below 1 never reads ``1.00``
  (``0.999999`` → ``0.999999``, ``1 - 1/4096`` → ``0.9997``)."""
  if not f < 1.0:
    return f"{f:.2f}"
  digits = min(12, max(2, math.ceil(-math.log10(1.0 - f))))
  shown = math.floor(f * 10 ** digits) / 10 ** digits
  return f"{shown:.{digits}f}"


def check_health(stats: dict[str, GradStats], *, vanishing: float = VANISHING_NORM,
                 exploding: float = EXPLODING_NORM, large: float = LARGE_MAX_ABS) -> list[str]:
  """The seed's health rules, one message per problem, or ``["All gradients healthy"]``.

  Per parameter, in this order:

  * ``[NONFINITE] name: finite=0.75`` when some elements are NaN or inf (the seed's
    rules compare NaN norms and so call them healthy; this rule is an addition).  The
    fraction is rounded down, so a gradient with any NaN never shows ``finite=1.00``;
  * ``[VANISHING] name: norm=1.00e-08`` when ``norm < vanishing``;
  * ``[EXPLODING] name: norm=1.00e+03`` when ``norm > exploding``;
  * ``[LARGE] name: max=2.00e+01`` when ``max |g| > large``.

  Args:
    stats: ``gradient_stats``'s result (device arrays or host numbers).
    vanishing, exploding, large: thresholds (the seed's 1e-7, 100 and 10).
  """
  issues = []
  for name, s in to_host(stats).items():
    if s.finite_fraction < 1.0:
      issues.append(f"[NONFINITE] {name}: finite={fraction_str(s.finite_fraction)}")
    if s.norm < vanishing:
      issues.append(f"[VANISHING] {name}: norm={s.norm:.2e}")
    if s.norm > exploding:
      issues.append(f"[EXPLODING] {name}: norm={s.norm:.2e}")
    if s.max_abs > large:
      issues.append(f"[LARGE] {name}: max={s.max_abs:.2e}")
  return issues if issues else ["All gradients healthy"]
