"""The second-order tests' function, shared by tests/_src/test_second_order.py and
tests/inspect/ (importable from any test directory: tests/ holds the root conftest.py)."""

import jax
import jax.numpy as jnp

import handgrad as hg


def mixed_loss(params, x, y):
  """Dense, layer norm, tanh, dense and softmax cross-entropy: a scalar of ``params``
  (W1 3×4, b1 4, g 4, beta 4, W2 4×3, b2 3), ``x`` (6, 3) and integer labels ``y`` (6,)."""
  h = hg.ops.dense(x, params["W1"], params["b1"])
  h = hg.ops.layer_norm(h, params["g"], params["beta"])
  h = jnp.tanh(h)
  return hg.ops.softmax_cross_entropy(hg.ops.dense(h, params["W2"], params["b2"]), y)


def mixed_params():
  k = jax.random.split(jax.random.key(0), 4)
  return {"W1": jax.random.normal(k[0], (3, 4)) * 0.5, "b1": jnp.full(4, 0.1),
          "g": jnp.linspace(0.8, 1.2, 4), "beta": jnp.zeros(4),
          "W2": jax.random.normal(k[1], (4, 3)) * 0.5, "b2": jnp.zeros(3)}


def mixed_batch():
  return jax.random.normal(jax.random.key(5), (6, 3)), jnp.array([0, 1, 2, 0, 1, 2])
