"""Meshes and shardings for training on many devices.

* :func:`parse_mesh` reads a mesh description such as ``"data=4,model=2"``;
* :func:`make_mesh` builds the ``jax.sharding.Mesh`` (Auto or Explicit axes);
* :func:`shard_batch` splits a batch's leading dimension along the data axis;
* :func:`replicated` and :func:`fsdp_shardings` place parameters and optimizer state:
  every device holds all of them (data parallel), or each holds ``1/n`` of every large
  enough array along the data axis (FSDP: XLA gathers them for compute and
  reduce-scatters their gradients).

These only place values; the hand backward pass is the same program on one device or
many (under ``jax.jit`` XLA partitions it from the argument shardings).
"""

from __future__ import annotations

import math
from typing import Any, Mapping

import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec as P


def parse_mesh(spec: str | Mapping[str, int]) -> dict[str, int]:
  """``"data=4,model=2"`` -> ``{"data": 4, "model": 2}`` (axis order kept).

  A mapping is checked and returned as a dict.  Raises ``ValueError`` naming the bad
  entry: an entry without ``=``, an empty or repeated axis name, a size that is not a
  positive integer.
  """
  if isinstance(spec, Mapping):
    items = [(str(k), v) for k, v in spec.items()]
  else:
    if not isinstance(spec, str) or not spec.strip():
      raise ValueError(f"mesh: expected 'axis=size,...' (e.g. 'data=4,model=2'), got {spec!r}")
    items = []
    for entry in spec.split(","):
      name, eq, size = entry.partition("=")
      if not eq:
        raise ValueError(f"mesh: entry {entry.strip()!r} of {spec!r} is not 'axis=size'")
      items.append((name.strip(), size.strip()))
  out: dict[str, int] = {}
  for name, size in items:
    if not name or not name.isidentifier():
      raise ValueError(f"mesh: axis name {name!r} in {spec!r} is not an identifier")
    if name in out:
      raise ValueError(f"mesh: axis {name!r} appears twice in {spec!r}")
    if isinstance(size, (int, np.integer)) and not isinstance(size, bool):
      n = int(size)
    elif isinstance(size, str) and size.isdigit():
      n = int(size)
    else:
      n = 0
    if n < 1:
      raise ValueError(f"mesh: size {size!r} of axis {name!r} is not a positive integer")
    out[name] = n
  return out


def make_mesh(spec: str | Mapping[str, int], *, explicit: bool = False,
              devices: Any = None) -> Mesh:
  """A mesh with the axes of ``spec`` over ``devices`` (default: every device).

  ``explicit`` gives Explicit axes (shardings are part of the types, as in
  ``jax.make_mesh``'s default); otherwise Auto axes (XLA propagates shardings).  The
  product of the sizes must equal the number of devices.
  """
  axes = parse_mesh(spec)
  devices = list(jax.devices() if devices is None else devices)
  need = math.prod(axes.values())
  if need != len(devices):
    raise ValueError(f"mesh {_describe(axes)} needs {need} devices, there are {len(devices)}"
                     " (on CPU, set XLA_FLAGS=--xla_force_host_platform_device_count=N "
                     "before importing jax)")
  kind = AxisType.Explicit if explicit else AxisType.Auto
  grid = np.array(devices, dtype=object).reshape(tuple(axes.values()))
  return Mesh(grid, tuple(axes), axis_types=(kind,) * len(axes))


def _describe(axes: Mapping[str, int]) -> str:
  return ",".join(f"{k}={v}" for k, v in axes.items())


def _axis_size(mesh: Mesh, axis: str) -> int:
  if axis not in mesh.shape:
    raise ValueError(f"mesh has no axis {axis!r}; its axes are {tuple(mesh.axis_names)}")
  return mesh.shape[axis]


def shard_batch(batch: Any, mesh: Mesh, axis: str = "data") -> Any:
  """Every leaf of ``batch`` placed on ``mesh``, its leading dimension split along
  ``axis`` (the other axes replicate it).  The leading dimension must divide evenly."""
  n = _axis_size(mesh, axis)

  def put(path, leaf):
    shape = np.shape(leaf)
    if not shape:
      raise ValueError(f"shard_batch: leaf {jax.tree_util.keystr(path)} is a scalar; "
                       "a batch leaf needs a leading batch dimension")
    if shape[0] % n:
      raise ValueError(f"shard_batch: leaf {jax.tree_util.keystr(path)} has batch size "
                       f"{shape[0]}, not divisible by mesh axis {axis!r} of size {n}")
    return jax.device_put(leaf, NamedSharding(mesh, P(axis)))

  return jax.tree_util.tree_map_with_path(put, batch)


def replicated(tree: Any, mesh: Mesh) -> Any:
  """The shardings that place every leaf of ``tree`` whole on every device."""
  return jax.tree.map(lambda _: NamedSharding(mesh, P()), tree)


def fsdp_shardings(tree: Any, mesh: Mesh, axis: str = "data", min_size: int = 1024) -> Any:
  """FSDP shardings for parameters (or optimizer state) shaped like ``tree``.

  A leaf with at least ``min_size`` elements is split along ``axis`` on its largest
  dimension divisible by the axis size (the first such on ties); smaller leaves
  (biases, scalars such as Adam's step count) and leaves with no divisible dimension
  are replicated.  Under ``jax.jit`` XLA gathers each sharded parameter where it is used
  and reduce-scatters its gradient.
  """
  n = _axis_size(mesh, axis)

  def spec(leaf):
    shape = np.shape(leaf)
    if math.prod(shape) < min_size:
      return NamedSharding(mesh, P())
    dims = [d for d in range(len(shape)) if shape[d] % n == 0]
    if not dims:
      return NamedSharding(mesh, P())
    d = max(dims, key=lambda k: (shape[k], -k))
    return NamedSharding(mesh, P(*([None] * d), axis))

  return jax.tree.map(spec, tree)


def place(tree: Any, shardings: Any) -> Any:
  """``tree`` put on devices with ``shardings`` (a matching tree)."""
  return jax.tree.map(jax.device_put, tree, shardings)


# Megatron-style tensor parallelism for handgrad.nn's transformer blocks: the
# projections into the heads and into the feed-forward hidden layer are split by
# columns (each device computes some heads / hidden units), the projections back by
# rows (partial sums, one all-reduce per sub-layer); everything else is replicated.
_COLUMN = ("attn/q", "attn/k", "attn/v", "ffn/fc1")
_ROW = ("attn/o", "ffn/fc2")


def megatron_shardings(params: Any, mesh: Mesh, axis: str = "model") -> Any:
  """Tensor-parallel shardings for parameters of ``handgrad.nn`` transformer blocks
  (paths ``…/attn/{q,k,v,o}/{W,b}``, ``…/ffn/{fc1,fc2}/{W,b}``), split along ``axis``.

  Column-parallel layers (q, k, v, fc1) split ``W`` [in, out] and ``b`` [out] along
  ``out``; row-parallel layers (o, fc2) split ``W`` along ``in`` and replicate ``b``;
  other leaves are replicated.  The head count and the hidden size must divide by the
  axis size (a split dimension that does not raises ``ValueError`` naming the leaf).
  """
  n = _axis_size(mesh, axis)

  def spec(path, leaf):
    name = jax.tree_util.keystr(path, simple=True, separator="/")
    layer, _, kind = name.rpartition("/")
    shape = np.shape(leaf)
    split = None
    if any(layer.endswith(c) for c in _COLUMN):
      split = len(shape) - 1 if kind in ("W", "b") else None
    elif any(layer.endswith(r) for r in _ROW) and kind == "W":
      split = 0
    if split is None:
      return NamedSharding(mesh, P())
    if shape[split] % n:
      raise ValueError(f"megatron_shardings: {name} has size {shape[split]} along the split "
                       f"dimension {split}, not divisible by mesh axis {axis!r} of size {n}")
    return NamedSharding(mesh, P(*([None] * split), axis))

  return jax.tree_util.tree_map_with_path(spec, params)
