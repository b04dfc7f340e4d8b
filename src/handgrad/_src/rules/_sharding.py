"""Shardings for cotangents: a cotangent carries its primal's sharding.

With ``jax.make_mesh``'s Explicit axes (sharding in types) every array a rule creates
(zeros, iotas, broadcasts, contractions) must say its sharding, or JAX raises a
``ShardingTypeError``; without a mesh these return ``None`` and change nothing.
"""

from __future__ import annotations

from typing import Sequence

import jax
from jax.sharding import NamedSharding, PartitionSpec


def of(x):
  """x's sharding when it lives on a mesh (sharding in types), else None."""
  sharding = getattr(jax.typeof(x), "sharding", None)
  mesh = getattr(sharding, "mesh", None)
  return None if mesh is None or mesh.empty else sharding


def permuted(x, axes: Sequence[int]):
  """The sharding of ``transpose(x, axes)``: x's spec with its entries permuted.

  For an ``x`` without a mesh inside a mesh context: replicated on the current mesh,
  as JAX's own transposes do (``dot_general``'s).
  """
  sharding = of(x)
  if sharding is None:
    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty:
      return None
    return NamedSharding(mesh, PartitionSpec(*[None] * len(axes)))
  parts = tuple(sharding.spec) + (None,) * (len(axes) - len(sharding.spec))
  return sharding.update(spec=sharding.spec.update(partitions=tuple(parts[a] for a in axes)))
