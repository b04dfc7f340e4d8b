"""Programs on a mesh of 8 CPU devices (Explicit and Auto axes) that handgrad must
differentiate like jax.grad: the seed MLP with a data-sharded batch, a model axis,
custom_jvp functions whose tangents the engine instantiates, ``jax.sharding.reshard``.

Run by test_sharded_programs.py in a subprocess on 8 CPU devices.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax.sharding import AxisType, NamedSharding, PartitionSpec as P

import handgrad as hg
from handgrad import nn, ops
from _cases import compare, main


def _mesh(shape, names, kind):
  return jax.make_mesh(shape, names, axis_types=(kind,) * len(names))


def _both(f, *args, argnums=0):
  hand = jax.jit(hg.grad(f, argnums=argnums))(*args)
  ref = jax.jit(jax.grad(f, argnums=argnums))(*args)
  return compare(hand, ref)


def _seed_loss(params, x, y):
  return ops.softmax_cross_entropy(nn.mlp.apply(params, x), y)


def _seed(mesh, spec=P("data")):
  key = jax.random.key(0)
  params = nn.mlp.init([16, 32, 10], key=key)
  x = jax.random.normal(jax.random.key(1), (64, 16))
  y = jax.random.randint(jax.random.key(2), (64,), 0, 10)
  with jax.set_mesh(mesh):
    xs = jax.device_put(x, NamedSharding(mesh, spec))
    ys = jax.device_put(y, NamedSharding(mesh, spec))
    return _both(_seed_loss, params, xs, ys)


def seed_mlp_explicit_data():
  return _seed(_mesh((8,), ("data",), AxisType.Explicit))


def seed_mlp_auto_data():
  return _seed(_mesh((8,), ("data",), AxisType.Auto))


def seed_mlp_explicit_data_model_mesh():
  # Batch along data of a 4x2 mesh; parameters replicated.
  return _seed(_mesh((4, 2), ("data", "model"), AxisType.Explicit))


def seed_mlp_sharded_params_explicit():
  # Column-sharded first layer (model axis), batch along data: the dense rule's
  # cotangents take W's, b's and x's shardings.
  mesh = _mesh((4, 2), ("data", "model"), AxisType.Explicit)
  key = jax.random.key(0)
  params = nn.mlp.init([16, 32, 10], key=key)
  x = jax.random.normal(jax.random.key(1), (64, 16))
  y = jax.random.randint(jax.random.key(2), (64,), 0, 10)
  with jax.set_mesh(mesh):
    put = lambda a, s: jax.device_put(a, NamedSharding(mesh, s))
    layers = params["layers"]
    params = {"layers": [{"W": put(layers[0]["W"], P(None, "model")),
                          "b": put(layers[0]["b"], P("model"))},
                         {"W": put(layers[1]["W"], P()), "b": put(layers[1]["b"], P())}]}

    def loss(params, x, y):
      h = jax.nn.relu(ops.dense(x, params["layers"][0]["W"], params["layers"][0]["b"]))
      h = jax.sharding.reshard(h, P("data", None))  # gather the hidden units
      return ops.softmax_cross_entropy(
          ops.dense(h, params["layers"][1]["W"], params["layers"][1]["b"]), y)
    return _both(loss, params, put(x, P("data")), put(y, P("data")))


def custom_jvp_tangent_zeros_explicit():
  # jax.nn.relu and logsumexp are custom_jvp functions: the engine instantiates their
  # tangents, which must carry the primal's sharding.
  mesh = _mesh((4, 2), ("data", "model"), AxisType.Explicit)
  x = jax.random.normal(jax.random.key(3), (8, 6))
  with jax.set_mesh(mesh):
    xs = jax.device_put(x, NamedSharding(mesh, P("data", "model")))

    def loss(x):
      return jnp.sum(jax.nn.relu(x) * 2) + jnp.sum(jax.nn.logsumexp(x, axis=0) ** 2)
    return _both(loss, xs)


def reshard_explicit():
  mesh = _mesh((8,), ("data",), AxisType.Explicit)
  x = jax.random.normal(jax.random.key(4), (16, 8))
  with jax.set_mesh(mesh):
    xs = jax.device_put(x, NamedSharding(mesh, P("data")))

    def loss(x):
      y = jax.sharding.reshard(jnp.sin(x), P(None, "data"))
      z = jax.sharding.reshard(y * y, P())
      return jnp.sum(z * x)
    return _both(loss, xs)


def reshard_two_axes():
  mesh = _mesh((4, 2), ("a", "b"), AxisType.Explicit)
  x = jax.random.normal(jax.random.key(5), (8, 4))
  with jax.set_mesh(mesh):
    xs = jax.device_put(x, NamedSharding(mesh, P("a", "b")))

    def loss(x):
      return jnp.sum(jnp.tanh(jax.sharding.reshard(x, P("b", "a"))) ** 2)
    return _both(loss, xs)


CASES = {name: fn for name, fn in dict(globals()).items()
         if callable(fn) and not name.startswith("_") and getattr(fn, "__module__", "") == __name__}

if __name__ == "__main__":
  main(CASES)
