"""handgrad._src.parallel on 8 CPU devices: meshes from strings, batch and FSDP
shardings, and a hand-differentiated step on them equal to jax.grad's.

Run by test_sharded_parallel.py in a subprocess on 8 CPU devices.
"""

from __future__ import annotations

import jax
import numpy as np

import handgrad as hg
from handgrad import nn, ops
from handgrad._src import parallel
from _cases import compare, main, sharding_str


def mesh_from_string():
  m = parallel.make_mesh("data=4,model=2", explicit=True)
  return {"axes": list(m.axis_names), "shape": dict(m.shape),
          "types": [t.name for t in m.axis_types]}


def mesh_needs_all_devices():
  try:
    parallel.make_mesh("data=3")
  except ValueError as e:
    return {"message": str(e)}
  return {"message": ""}


def batch_and_fsdp_placement():
  mesh = parallel.make_mesh("data=8")
  params = nn.mlp.init([16, 64, 10], key=jax.random.key(0))
  shardings = parallel.fsdp_shardings(params, mesh)
  placed = parallel.place(params, shardings)
  batch = parallel.shard_batch({"x": np.zeros((32, 16), np.float32),
                                "y": np.zeros((32,), np.int32)}, mesh)
  return {"params": {jax.tree_util.keystr(k): sharding_str(v)
                     for k, v in jax.tree_util.tree_leaves_with_path(placed)},
          "batch": {jax.tree_util.keystr(k): sharding_str(v)
                    for k, v in jax.tree_util.tree_leaves_with_path(batch)},
          "bytes_per_device": sum(l.addressable_shards[0].data.nbytes
                                  for l in jax.tree.leaves(placed))}


def shard_batch_error():
  mesh = parallel.make_mesh("data=8")
  try:
    parallel.shard_batch({"x": np.zeros((12, 3))}, mesh)
  except ValueError as e:
    return {"message": str(e)}
  return {"message": ""}


def _step_on(mesh_spec, explicit, fsdp):
  mesh = parallel.make_mesh(mesh_spec, explicit=explicit)
  params = nn.mlp.init([16, 64, 10], key=jax.random.key(0))
  x = jax.random.normal(jax.random.key(1), (64, 16))
  y = jax.random.randint(jax.random.key(2), (64,), 0, 10)
  loss = lambda p, x, y: ops.softmax_cross_entropy(nn.mlp.apply(p, x), y)
  with jax.set_mesh(mesh):
    shardings = (parallel.fsdp_shardings(params, mesh) if fsdp
                 else parallel.replicated(params, mesh))
    p = parallel.place(params, shardings)
    b = parallel.shard_batch((x, y), mesh)
    hand = jax.jit(hg.grad(loss))(p, *b)
    ref = jax.jit(jax.grad(loss))(p, *b)
  single = jax.jit(jax.grad(loss))(params, x, y)
  out = compare(hand, ref)
  out["vs_one_device"] = compare(hand, single)["err"]
  return out


def data_parallel_step_auto():
  return _step_on("data=8", False, False)


def data_parallel_step_explicit():
  return _step_on("data=8", True, False)


def fsdp_step_auto():
  return _step_on("data=8", False, True)


def data_model_mesh_step_auto():
  return _step_on("data=4,model=2", False, False)


def megatron_transformer_step():
  # data=4 x model=2: batch along data, heads and hidden units along model.
  mesh = parallel.make_mesh("data=4,model=2")
  params = nn.transformer_block.init(32, 4, 64, key=jax.random.key(0))
  x = jax.random.normal(jax.random.key(1), (8, 6, 32))
  target = jax.random.normal(jax.random.key(2), (8, 6, 32))
  loss = lambda p, x, t: ops.mse(nn.transformer_block.apply(p, x, num_heads=4, causal=True), t)
  with jax.set_mesh(mesh):
    shardings = parallel.megatron_shardings(params, mesh)
    p = parallel.place(params, shardings)
    b = parallel.shard_batch((x, target), mesh)
    hand = jax.jit(hg.grad(loss))(p, *b)
    ref = jax.jit(jax.grad(loss))(p, *b)
  single = jax.jit(jax.grad(loss))(params, x, target)
  out = compare(hand, ref)
  out["vs_one_device"] = compare(hand, single)["err"]
  out["specs"] = {jax.tree_util.keystr(k, simple=True, separator="/"): str(tuple(v.spec))
                  for k, v in jax.tree_util.tree_leaves_with_path(shardings)}
  return out


CASES = {name: fn for name, fn in dict(globals()).items()
         if callable(fn) and not name.startswith("_") and getattr(fn, "__module__", "") == __name__}

if __name__ == "__main__":
  main(CASES)
