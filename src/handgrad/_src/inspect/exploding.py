"""Which parameters explode (the seed's ``debug_exploding_gradients``)."""

from __future__ import annotations

import math
from typing import NamedTuple

import jax
import numpy as np

from handgrad._src.inspect._tree import (Array, PyTree, in_path_order, l2_norm,
                                         named_leaves)
from handgrad._src.inspect.health import GradStats, Rank
from handgrad._src.inspect.health import rank_status as status

# The seed's recommendations ("권장 사항") when the largest gradient explodes.
RECOMMENDATIONS = (
    "Lower the learning rate (to 1/10 of the current one)",
    "Apply gradient clipping: handgrad.inspect.clip_grad_norm(grads, max_norm=1.0) "
    "(torch.nn.utils.clip_grad_norm_), or optax.clip_by_global_norm(1.0) in the "
    "optimizer chain",
    "Check the initialisation (He or Xavier)",
    "Add BatchNorm/LayerNorm",
)


class GradRank(NamedTuple):
  """One row of :func:`rank_gradients`: a parameter, its gradient L2 norm, its status."""
  path: str
  norm: float
  status: str


def gradient_norms(grads: PyTree) -> dict[str, Array]:
  """``{path: L2 norm}`` of every floating-point leaf (float32 or wider); jit-safe."""
  return {path: l2_norm([g]) for path, g in named_leaves(grads)}


def rank_gradients(grads: PyTree, max_norm: float = 1.0,
                   top_k: int | None = 10) -> list[GradRank]:
  """The ``top_k`` parameters by gradient L2 norm, largest first, with their status.

  Args:
    grads: a gradient pytree, or the result of ``gradient_stats`` (whose norms are
      used, so a jitted step can return the statistics alone).
    max_norm: the norm above which a gradient is HIGH (10× it: EXPLODING).
    top_k: how many rows to return (``None``: all).

  Returns:
    :class:`GradRank` rows; non-finite norms rank first.  Ties keep parameter order.
  """
  if isinstance(grads, dict) and grads and all(isinstance(v, GradStats)
                                               for v in grads.values()):
    norms = {k: v.norm for k, v in grads.items()}
  else:
    norms = gradient_norms(grads)
  norms = in_path_order({k: float(np.asarray(v))
                         for k, v in jax.device_get(norms).items()})

  def key(item):
    v = item[1]
    return -math.inf if not math.isfinite(v) else -v

  ranked = sorted(norms.items(), key=key)
  if top_k is not None:
    ranked = ranked[:top_k]
  return [GradRank(k, v, status(v, max_norm)) for k, v in ranked]


def explain_exploding(ranking: list[GradRank]) -> str:
  """The seed's printout: the ranking, then recommendations if the top one explodes."""
  lines = ["=== gradient norm ranking ==="]
  for i, r in enumerate(ranking, 1):
    lines.append(f"{i}. {r.path}: {r.norm:.4f} [{r.status}]")
  if ranking and ranking[0].status == Rank.EXPLODING:
    lines += ["", "=== recommendations ==="]
    lines += [f"{i}. {rec}" for i, rec in enumerate(RECOMMENDATIONS, 1)]
  return "\n".join(lines)
