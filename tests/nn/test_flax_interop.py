"""A handgrad MLP loaded with a flax model's weights gives the same outputs, and
handgrad.grad differentiates flax models (linen params, nnx state) like jax.grad."""

from typing import Sequence

import chex
import flax.linen as linen
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import handgrad as hg
from handgrad import nn

DIMS = [6, 8, 7, 3]


class LinenMLP(linen.Module):
  features: Sequence[int]
  dtype: jnp.dtype = jnp.float32

  @linen.compact
  def __call__(self, x):
    for i, f in enumerate(self.features):
      x = linen.Dense(f, dtype=self.dtype, param_dtype=self.dtype)(x)
      if i < len(self.features) - 1:
        x = linen.relu(x)
    return x


class NnxMLP(nnx.Module):

  def __init__(self, dims, *, rngs, dtype=jnp.float32):
    self.layers = nnx.List([nnx.Linear(i, o, rngs=rngs, dtype=dtype, param_dtype=dtype)
                            for i, o in zip(dims[:-1], dims[1:])])

  def __call__(self, x):
    for i, layer in enumerate(self.layers):
      x = layer(x)
      if i < len(self.layers) - 1:
        x = nnx.relu(x)
    return x


def randomize(tree, seed, everything=False):
  """Random biases (flax initialises them to zero, which would hide a bias mix-up);
  with ``everything``, random values for every leaf of an abstract (eval_shape) tree."""
  rng = np.random.default_rng(seed)
  def leaf(path, a):
    if everything or "bias" in jax.tree_util.keystr(path):
      return jnp.asarray(0.5 * rng.standard_normal(a.shape), a.dtype)
    return a
  return jax.tree_util.tree_map_with_path(leaf, tree)


def data(seed, shape, dtype=jnp.float32):
  return jnp.asarray(np.random.default_rng(seed).standard_normal(shape), dtype)


def to_handgrad(kernels_and_biases):
  return {"layers": [{"W": k, "b": b} for k, b in kernels_and_biases]}


@pytest.fixture(scope="module")
def linen_model():
  """A flax.linen MLP initialised by flax, biases randomised."""
  model = LinenMLP(DIMS[1:])
  params = jax.jit(model.init)(jax.random.key(0), data(1, (5, DIMS[0])))["params"]
  return model, randomize(params, 2)


@pytest.fixture(scope="module")
def nnx_model():
  """A flax.nnx MLP initialised by flax, biases randomised."""
  model = NnxMLP(DIMS, rngs=nnx.Rngs(0))
  nnx.update(model, randomize(nnx.state(model), 2))
  return model


# --- loading flax weights into handgrad.nn.mlp ----------------------------------------

def test_linen_weights_in_handgrad_mlp_give_same_outputs(linen_model):
  model, params = linen_model
  x = data(1, (5, DIMS[0]))
  hg_params = to_handgrad((params[f"Dense_{i}"]["kernel"], params[f"Dense_{i}"]["bias"])
                          for i in range(len(DIMS) - 1))
  assert [p for p, _ in nn.param_paths(hg_params)] == [
      "layers/0/W", "layers/0/b", "layers/1/W", "layers/1/b", "layers/2/W", "layers/2/b"]
  # the same x·W + b in the same order: identical, not merely close
  np.testing.assert_array_equal(nn.mlp.apply(hg_params, x), model.apply({"params": params}, x))


def test_nnx_weights_in_handgrad_mlp_give_same_outputs(nnx_model):
  x = data(1, (5, DIMS[0]))
  hg_params = to_handgrad((layer.kernel[...], layer.bias[...]) for layer in nnx_model.layers)
  np.testing.assert_array_equal(nn.mlp.apply(hg_params, x), nnx_model(x))


# --- handgrad.grad of flax models -----------------------------------------------------

@pytest.mark.parametrize("dtype,tol", [(jnp.float64, 1e-7), (jnp.float32, 1e-5)])
def test_hand_grad_of_linen_apply_equals_jax_grad(dtype, tol):
  with jax.enable_x64(True):
    model = LinenMLP(DIMS[1:], dtype=dtype)
    x = data(1, (5, DIMS[0]), dtype)
    # flax's parameter tree, filled with random values (no initialiser compilations)
    params = randomize(jax.eval_shape(model.init, jax.random.key(0), x)["params"], 2,
                       everything=True)
    labels = jnp.array([0, 2, 1, 1, 0])

    def loss(params, x):
      logits = model.apply({"params": params}, x)
      return -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(logits), labels[:, None], 1))

    got, want = jax.jit(lambda p, x: (hg.grad(loss, argnums=(0, 1))(p, x),
                                      jax.grad(loss, argnums=(0, 1))(p, x)))(params, x)
    chex.assert_trees_all_equal_shapes_and_dtypes(got, want)
    chex.assert_trees_all_close(got, want, rtol=tol, atol=tol)


@pytest.mark.parametrize("dtype,tol", [(jnp.float64, 1e-7), (jnp.float32, 1e-5)])
def test_hand_grad_of_nnx_model_equals_jax_grad(dtype, tol):
  with jax.enable_x64(True):
    abstract = nnx.eval_shape(lambda: NnxMLP(DIMS, rngs=nnx.Rngs(0), dtype=dtype))
    graphdef, state = nnx.split(abstract)
    state = randomize(state, 2, everything=True)
    x = data(1, (5, DIMS[0]), dtype)
    y = data(3, (5, DIMS[-1]), dtype)

    def loss(state, x):
      model = nnx.merge(graphdef, state)  # a pure function of the state
      return jnp.mean((model(x) - y) ** 2)

    got, want = jax.jit(lambda s, x: (hg.grad(loss, argnums=(0, 1))(s, x),
                                      jax.grad(loss, argnums=(0, 1))(s, x)))(state, x)
    chex.assert_trees_all_equal_shapes_and_dtypes(got, want)
    chex.assert_trees_all_close(got, want, rtol=tol, atol=tol)
    assert [p for p, _ in nn.param_paths(got[0])][:2] == ["layers/0/bias/value",
                                                          "layers/0/kernel/value"]
    if dtype == jnp.float64:  # and eagerly, as a user would call it first
      chex.assert_trees_all_close(hg.grad(loss)(state, x), want[0], rtol=tol, atol=tol)


def test_hand_grads_of_flax_and_handgrad_mlp_agree(linen_model):
  # same weights, same loss: the gradients of the two parameterisations coincide
  model, params = linen_model
  hg_params = to_handgrad((params[f"Dense_{i}"]["kernel"], params[f"Dense_{i}"]["bias"])
                          for i in range(len(DIMS) - 1))
  x, y = data(1, (5, DIMS[0])), data(3, (5, DIMS[-1]))

  @jax.jit
  def grads(params, hg_params):
    return (hg.grad(lambda p: hg.ops.mse(model.apply({"params": p}, x), y))(params),
            hg.grad(lambda p: hg.ops.mse(nn.mlp.apply(p, x), y))(hg_params))

  g_flax, g_hg = grads(params, hg_params)
  for i in range(len(DIMS) - 1):
    np.testing.assert_allclose(g_hg["layers"][i]["W"], g_flax[f"Dense_{i}"]["kernel"],
                               rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(g_hg["layers"][i]["b"], g_flax[f"Dense_{i}"]["bias"],
                               rtol=1e-5, atol=1e-6)
