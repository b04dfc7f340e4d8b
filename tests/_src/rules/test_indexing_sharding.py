"""Cotangents carry their primal's sharding: under a mesh with Explicit axes
(sharding in types) every hand rule below gives jax.grad's gradient and sharding.
A one-device mesh is enough: shardings are part of the types, and a rule that makes
an array without one fails with a ShardingTypeError."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax
from jax.sharding import AxisType, NamedSharding, PartitionSpec as P

import handgrad as hg

W = np.ones((6, 3), np.float32)

CASES = {
    "dot_general": lambda x: jnp.sum(jnp.sin(x @ W)),
    "dot_general, batched": lambda x: jnp.sum(jnp.sin(jnp.einsum("bi,bj->bij", x, x))),
    "reduce_sum": lambda x: jnp.sum(jnp.sin(x).sum(1)),
    "reduce_max": lambda x: jnp.sum(jnp.max(x, 1)),
    "gather": lambda x: jnp.sum(jnp.sin(x[:, jnp.array([0, 2, 2])])),
    "dynamic_slice": lambda x: jnp.sum(jnp.sin(lax.dynamic_slice_in_dim(x, -8, 2, 1))),
    "pad": lambda x: jnp.sum(jnp.sin(jnp.pad(x, ((0, 0), (1, 1))))),
    "stack": lambda x: jnp.sum(jnp.sin(jnp.stack([x, x], 1))),
    "unstack": lambda x: sum(jnp.sum(jnp.sin(t)) for t in jnp.unstack(x, axis=1)),
    "top_k": lambda x: jnp.sum(jnp.sin(lax.top_k(x, 2)[0])),
    "scatter-max": lambda x: jnp.sum(jnp.sin(x.at[:, jnp.array([0, 0, 1])].max(1.0))),
    "cumsum": lambda x: jnp.sum(jnp.sin(jnp.cumsum(x, 1))),
    "cummax": lambda x: jnp.sum(jnp.sin(lax.cummax(x, 1))),
    "concatenate": lambda x: jnp.sum(jnp.sin(jnp.concatenate([x, x], 1))),
    "tile": lambda x: jnp.sum(jnp.sin(jnp.tile(x, (1, 2)))),
    "slice and rev": lambda x: jnp.sum(jnp.sin(x[:, 5:0:-2]) * jnp.arange(3.0)),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_cotangent_keeps_the_operand_sharding(name):
  f = CASES[name]
  mesh = jax.make_mesh((1,), ("x",), axis_types=(AxisType.Explicit,))
  x = np.arange(24.0, dtype=np.float32).reshape(4, 6) / 7
  with jax.set_mesh(mesh):
    x = jax.device_put(x, NamedSharding(mesh, P("x", None)))
    both = jax.jit(lambda x: (hg.grad(f)(x), jax.grad(f)(x)))
    hand, ref = both(x)
  np.testing.assert_allclose(np.asarray(hand), np.asarray(ref), rtol=1e-6, atol=1e-6)
  assert jax.typeof(hand).sharding.spec == jax.typeof(ref).sharding.spec
