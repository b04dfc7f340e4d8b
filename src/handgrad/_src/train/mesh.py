"""Training on a device mesh: where the train state and the batches live.

``make_train_step(..., mesh=mesh, sharding=...)`` runs the same step (the same hand
backward pass) on every device of ``mesh``; only the placement differs:

* ``"data"``: data parallel.  Every batch is split along the mesh's ``data`` axis, the
  parameters and the optimizer state are replicated; XLA all-reduces the gradients.
* ``"fsdp"``: the batch as above; parameters and optimizer state split along ``data``
  (``parallel.fsdp_shardings``: every leaf of at least 1024 elements on its largest
  divisible dimension); XLA gathers each parameter for compute and reduce-scatters its
  gradient.
* ``"megatron"``: the batch along ``data``; the transformer's attention heads and
  feed-forward hidden units split along ``model`` (``parallel.megatron_shardings``),
  the optimizer state with its parameters; the other leaves replicated.

The meshes have Auto axes: XLA partitions the jitted step from the argument and result
shardings, and a sharded step computes the single-device step's numbers up to the order
of float32 reductions.  With several processes (``jax.distributed``), every process runs
the same program on the same host values; :func:`put` builds the global arrays from
them, each process placing only its own devices' pieces.  Their checkpoints are saved
and restored by all processes together, each writing and reading the pieces its
devices hold (``checkpoint.Checkpointer``).
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from handgrad._src import parallel

STRATEGIES = ("data", "fsdp", "megatron")
DATA_AXIS = "data"
MODEL_AXIS = "model"


def check_strategy(mesh: Mesh, sharding: str) -> None:
  """Raises ``ValueError`` for an unknown strategy or a mesh without the axes it needs."""
  if sharding not in STRATEGIES:
    raise ValueError(f"unknown sharding {sharding!r}; choose one of {', '.join(STRATEGIES)}")
  if not isinstance(mesh, Mesh):
    raise TypeError(f"mesh must be a jax.sharding.Mesh (handgrad.train.make_mesh("
                    f"'data=8')), got {type(mesh).__name__}")
  need = (DATA_AXIS, MODEL_AXIS) if sharding == "megatron" else (DATA_AXIS,)
  for axis in need:
    if axis not in mesh.shape:
      raise ValueError(f"sharding {sharding!r} needs a mesh axis {axis!r}; the mesh has "
                       f"{tuple(mesh.axis_names)}")


def state_shardings(state: Any, mesh: Mesh, sharding: str = "data") -> Any:
  """The ``NamedSharding`` of every leaf of ``state`` (a ``TrainState``) for a strategy.

  The optimizer state's moments have their parameter's shape (FSDP chooses by shape)
  and path suffix (Megatron chooses by path), so they land where their parameter is;
  the step count, the key and other small leaves are replicated.
  """
  check_strategy(mesh, sharding)
  if sharding == "data":
    return parallel.replicated(state, mesh)
  if sharding == "fsdp":
    return parallel.fsdp_shardings(state, mesh, axis=DATA_AXIS)
  return parallel.megatron_shardings(state, mesh, axis=MODEL_AXIS)


def put(tree: Any, shardings: Any) -> Any:
  """``tree``'s leaves as global arrays with ``shardings`` (a matching tree, or one
  sharding for every leaf).

  Every process holds the whole value of each leaf (the same on every process: the
  same seed, the same data order); each places the pieces its own devices hold
  (``jax.make_array_from_callback``), so this works on one process and on many.
  """
  if isinstance(shardings, jax.sharding.Sharding):
    shardings = jax.tree.map(lambda _: shardings, tree)

  def one(leaf, s):
    if isinstance(leaf, jax.Array) and leaf.sharding == s:
      return leaf
    if jax.process_count() == 1:
      return jax.device_put(leaf, s)
    host = np.asarray(leaf)
    return jax.make_array_from_callback(host.shape, s, lambda index: host[index])

  return jax.tree.map(one, tree, shardings)


def batch_sharding(mesh: Mesh) -> NamedSharding:
  """Batches: the leading dimension split along ``data``, replicated along other axes."""
  return NamedSharding(mesh, P(DATA_AXIS))


def check_batch(batch: Any, mesh: Mesh) -> None:
  n = mesh.shape[DATA_AXIS]
  for path, leaf in jax.tree_util.tree_flatten_with_path(batch)[0]:
    shape = np.shape(leaf)
    if not shape or shape[0] % n:
      raise ValueError(f"batch leaf {jax.tree_util.keystr(path)} has shape {shape}: its "
                       f"batch size must be a multiple of the mesh's data axis ({n})")


def on_mesh(train_step: Callable, mesh: Mesh, sharding: str, *, donate: bool) -> Callable:
  """``train_step`` (not jitted) jitted for ``mesh``: the state enters and leaves with
  :func:`state_shardings`, the batch split along ``data``, the metrics replicated.

  A state or batch not yet placed so is placed on the call (host arrays, or arrays
  on other devices or another mesh, e.g. restored from a checkpoint).
  """
  check_strategy(mesh, sharding)
  compiled: dict[Any, tuple[Any, Callable]] = {}
  replicated = NamedSharding(mesh, P())

  def step(state, batch):
    treedef = jax.tree.structure(state)
    if treedef not in compiled:
      shardings = state_shardings(state, mesh, sharding)
      compiled[treedef] = shardings, jax.jit(
          train_step, in_shardings=(shardings, batch_sharding(mesh)),
          out_shardings=(shardings, replicated), donate_argnums=(0,) if donate else ())
    shardings, jitted = compiled[treedef]
    check_batch(batch, mesh)
    return jitted(put(state, shardings), put(batch, batch_sharding(mesh)))

  step.mesh, step.sharding = mesh, sharding
  step.place = lambda state: put(state, state_shardings(state, mesh, sharding))
  return step


def eval_on_mesh(eval_fn: Callable, mesh: Mesh) -> Callable:
  """``eval_fn(params, batch)`` jitted for ``mesh``: the evaluation batch (padded, of any
  size) replicated, the parameters where they are, the sums replicated."""
  replicated = NamedSharding(mesh, P())
  jitted = jax.jit(eval_fn, out_shardings=replicated)

  def step(params, batch):
    return jitted(params, put(batch, replicated))

  return step


def make_mesh(spec: str | dict[str, int]) -> Mesh:
  """A mesh with Auto axes over every device (of every process), e.g. ``"data=8"`` or
  ``"data=4,model=2"``; the sizes must multiply to the number of devices."""
  return parallel.make_mesh(spec, explicit=False)
