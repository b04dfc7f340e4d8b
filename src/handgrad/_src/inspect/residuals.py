"""What the hand backward pass keeps from its forward pass (the residuals)."""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

import jax
import numpy as np

from handgrad._src import api
from handgrad._src import jaxpr as hj


class Residual(NamedTuple):
  """One value the backward pass reads from the forward pass."""
  shape: tuple[int, ...]
  dtype: str
  source: str  # "argument 0 (params['W'])" or "output of dot_general at file:line"

  @property
  def nbytes(self) -> int:
    return int(np.prod(self.shape, dtype=np.int64)) * np.dtype(self.dtype).itemsize


def saved_residuals(fun: Callable, *args: Any) -> list[Residual]:
  """What the hand backward pass of scalar ``fun`` keeps from its forward pass.

  Like ``jax.ad_checkpoint.saved_residuals`` for ``jax.grad``: every array that a
  backward-pass equation reads from the forward pass — arguments and forward outputs.
  Inside a ``jax.checkpoint`` region only the region's inputs and the values its policy
  saves are read; the rest is recomputed in the backward pass.
  """
  flat_args, in_tree = jax.tree.flatten(args)
  paths = [jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_flatten_with_path(args)[0]]

  def full(*flat):
    return api.grad(fun, tuple(range(len(args))))(*jax.tree.unflatten(in_tree, flat))

  closed = jax.make_jaxpr(full)(*flat_args)
  out = []
  for v, arg, producer in hj.backward_reads(closed.jaxpr):
    if arg is not None:
      src = f"argument {paths[arg]}"
    else:
      loc = hj.source_line(producer)
      src = (f"output of {producer.primitive.name}"
             + (f" '{producer.params['name']}'" if "name" in producer.params else "")
             + (f" at {loc}" if loc else ""))
    out.append(Residual(tuple(v.aval.shape), str(v.aval.dtype), src))
  return out


def print_saved_residuals(fun: Callable, *args: Any) -> None:
  """Prints ``saved_residuals`` one per line, like ``jax.ad_checkpoint.print_saved_residuals``."""
  total = 0
  for r in saved_residuals(fun, *args):
    total += r.nbytes
    print(f"{r.dtype}{list(r.shape)}  {r.source}")
  print(f"total {total:,} bytes")
