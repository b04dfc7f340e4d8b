"""The seed's MLP and ResidualBlock in handgrad.nn, and the residual MLP."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import handgrad as hg
from handgrad import nn

from nn_testing import F32, F64, TOL, assert_hand_grad_matches, normal  # noqa: F401

SEED_DIMS = [784, 256, 128, 10]


def cast(tree, dtype, bias_seed=None):
  """``tree`` in ``dtype``; with ``bias_seed``, random biases (zeros hide bias bugs)."""
  rng = np.random.default_rng(bias_seed)
  def leaf(path, a):
    a = np.asarray(a)
    if bias_seed is not None and jax.tree_util.keystr(path).endswith("['b']"):
      a = rng.standard_normal(a.shape)
    return jnp.asarray(a, dtype)
  return jax.tree_util.tree_map_with_path(leaf, tree)


@pytest.fixture(scope="module")
def seed_mlp():
  return nn.mlp.init(SEED_DIMS, key=jax.random.key(0), init="normal")


@pytest.fixture(scope="module")
def small_mlp():
  """[6, 8, 7, 3] initialised once per activation's default initialiser."""
  return {act: nn.mlp.init([6, 8, 7, 3], key=jax.random.key(0), activation=act)
          for act in ("relu", "tanh")}


def reference_mlp(params, x, act):
  """The seed's MLP.forward written out with jnp."""
  layers = params["layers"]
  for p in layers[:-1]:
    x = act(x @ p["W"] + p["b"])
  return x @ layers[-1]["W"] + layers[-1]["b"]


# --- the seed's MLP([784, 256, 128, 10]) ----------------------------------------------

def test_seed_mlp_param_paths_and_shapes(seed_mlp):
  paths = nn.param_paths(seed_mlp)
  assert [p for p, _ in paths] == ["layers/0/W", "layers/0/b", "layers/1/W", "layers/1/b",
                                   "layers/2/W", "layers/2/b"]
  assert [leaf.shape for _, leaf in paths] == [(784, 256), (256,), (256, 128), (128,),
                                               (128, 10), (10,)]
  assert nn.count_params(seed_mlp) == 784 * 256 + 256 + 256 * 128 + 128 + 128 * 10 + 10


def test_seed_init_is_point_zero_one_randn(seed_mlp):
  # init="normal" reproduces `np.random.randn(in, out) * 0.01` with zero biases
  np.testing.assert_allclose(np.asarray(seed_mlp["layers"][0]["W"]).std(), 0.01, rtol=0.02)
  for layer in seed_mlp["layers"]:
    np.testing.assert_array_equal(layer["b"], 0)


def test_seed_mlp_forward_and_hand_grad_float32(seed_mlp):
  params = cast(seed_mlp, F32, bias_seed=1)
  x = jnp.asarray(np.random.default_rng(1).uniform(size=(8, 784)), F32)
  labels = jnp.arange(8) % 10
  logits = jax.jit(nn.mlp.apply)(params, x)
  assert logits.shape == (8, 10)
  np.testing.assert_allclose(logits, jax.jit(reference_mlp, static_argnums=2)(
      params, x, jax.nn.relu), rtol=1e-5, atol=1e-6)

  def loss(params, x):
    return hg.ops.softmax_cross_entropy(nn.mlp.apply(params, x), labels)

  assert_hand_grad_matches(loss, (params, x), 0, F32)


@pytest.mark.parametrize("activation,dtype", [
    ("relu", F64), ("sigmoid", F64), ("tanh", F64), ("gelu", F64), ("relu", F32),
    ("tanh", F32)])
def test_mlp_hand_grad_equals_jax_grad(small_mlp, activation, dtype):
  with jax.enable_x64(True):
    init = "tanh" if activation in ("sigmoid", "tanh") else "relu"  # Glorot or He
    params = cast(small_mlp[init], dtype, bias_seed=1)
    x = normal(1, (5, 6), dtype)
    y = normal(2, (5, 3), dtype)

    def loss(params, x):
      return hg.ops.mse(nn.mlp.apply(params, x, activation=activation), y)

    assert_hand_grad_matches(loss, (params, x), (0, 1), dtype)


@pytest.mark.parametrize("activation,ref", [("relu", jax.nn.relu),
                                            ("sigmoid", jax.nn.sigmoid),
                                            ("tanh", jnp.tanh)])
def test_mlp_forward_matches_reference(small_mlp, activation, ref):
  with jax.enable_x64(True):
    params = cast(small_mlp["relu"], F64, bias_seed=1)
    x = normal(1, (5, 6), F64)
    got = jax.jit(lambda p, x: nn.mlp.apply(p, x, activation=activation))(params, x)
    want = jax.jit(lambda p, x: reference_mlp(p, x, ref))(params, x)
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)


def test_mlp_no_activation_after_last_layer(small_mlp):
  # Negative logits survive: a ReLU after the last layer would clip them to zero.
  params = cast(small_mlp["relu"], F32)
  params["layers"][2]["b"] = jnp.array([-10.0, -20.0, -30.0])
  out = nn.mlp.apply(params, jnp.zeros((2, 6)))
  np.testing.assert_allclose(out, [[-10.0, -20.0, -30.0]] * 2)


def test_mlp_default_init_follows_activation(small_mlp):
  key = jax.random.key(0)
  xavier = nn.mlp.init([6, 8, 7, 3], key=key, init="xavier")
  he = nn.mlp.init([6, 8, 7, 3], key=key, init="he")
  chex.assert_trees_all_equal(small_mlp["tanh"], xavier)
  chex.assert_trees_all_equal(small_mlp["relu"], he)


def test_mlp_rejects_unknown_activation_and_too_few_dims(small_mlp):
  with pytest.raises(ValueError, match="unknown activation 'swish'"):
    nn.mlp.init([3, 4], key=jax.random.key(0), activation="swish")
  with pytest.raises(ValueError, match="unknown activation 'swish'"):
    nn.mlp.apply(small_mlp["relu"], jnp.ones((1, 6)), activation="swish")
  with pytest.raises(ValueError, match="at least"):
    nn.mlp.init([3], key=jax.random.key(0))


def test_mlp_input_mismatch_names_layer_and_shapes(seed_mlp):
  with pytest.raises(ValueError,
                     match=r"^layers/0: input has 100 features but W has shape \(784, 256\)"):
    nn.mlp.apply(seed_mlp, jnp.ones((2, 100)))


def test_mlp_inner_mismatch_names_layer_and_shapes(seed_mlp):
  # layer 0 produces 300 features but layer 1 was built for 256
  params = {"layers": [{"W": np.zeros((784, 300), np.float32),
                        "b": np.zeros((300,), np.float32)}, *seed_mlp["layers"][1:]]}
  with pytest.raises(ValueError,
                     match=r"^layers/1: input has 300 features but W has shape \(256, 128\)"):
    nn.mlp.apply(params, jnp.ones((2, 784)))


def test_mlp_bias_mismatch_names_path_and_param(small_mlp):
  params = cast(small_mlp["relu"], F32)
  params["layers"][1]["b"] = jnp.zeros((8,))
  with pytest.raises(ValueError,
                     match=r"^layers/1: parameter 'b' has shape \(8,\), expected \(7,\)"):
    nn.mlp.apply(params, jnp.ones((2, 6)))


def test_mlp_layers_run_under_their_param_paths(small_mlp):
  jaxpr = jax.make_jaxpr(nn.mlp.apply)(small_mlp["relu"], jnp.ones((2, 6)))
  stacks = [str(e.source_info.name_stack) for e in jaxpr.jaxpr.eqns
            if e.params.get("name") in ("hg.dense", "hg.relu")]
  assert stacks == ["layers/0", "layers/0", "layers/1", "layers/1", "layers/2"]


# --- the seed's ResidualBlock --------------------------------------------------------

@pytest.fixture(scope="module")
def block_params():
  return nn.residual_block.init(8, key=jax.random.key(0))


def test_residual_block_structure(block_params):
  assert [p for p, _ in nn.param_paths(block_params)] == [
      "linear1/W", "linear1/b", "linear2/W", "linear2/b"]
  assert block_params["linear1"]["W"].shape == block_params["linear2"]["W"].shape == (8, 8)


def test_residual_block_equals_formula(block_params):
  with jax.enable_x64(True):
    params = cast(block_params, F64, bias_seed=3)
    x = normal(1, (4, 8), F64)
    l1, l2 = (jax.tree.map(np.asarray, params[n]) for n in ("linear1", "linear2"))
    xn = np.asarray(x)
    want = np.maximum((np.maximum(xn @ l1["W"] + l1["b"], 0) @ l2["W"] + l2["b"]) + xn, 0)
    np.testing.assert_allclose(jax.jit(nn.residual_block.apply)(params, x), want,
                               rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("dtype", [F64, F32])
def test_residual_block_hand_grad_equals_jax_grad(block_params, dtype):
  with jax.enable_x64(True):
    params = cast(block_params, dtype, bias_seed=3)
    x = normal(1, (4, 8), dtype)
    loss = lambda p, x: jnp.sum(jnp.sin(nn.residual_block.apply(p, x)))
    assert_hand_grad_matches(loss, (params, x), (0, 1), dtype)


def test_residual_block_skip_passes_blame_when_branch_is_dead(block_params):
  # Zero weights: the branch contributes nothing, yet dL/dx = relu'(x) · g via the skip.
  with jax.enable_x64(True):
    params = jax.tree.map(lambda a: jnp.zeros(a.shape, F64), block_params)
    x = jnp.array([[1.0, -2.0, 3.0, -4.0, 5.0, 6.0, -7.0, 8.0]], F64)
    g = hg.grad(lambda x: jnp.sum(nn.residual_block.apply(params, x)))(x)  # eager
    np.testing.assert_array_equal(g, [[1, 0, 1, 0, 1, 1, 0, 1]])


def test_residual_block_output_width_mismatch(block_params):
  params = dict(block_params, linear2={"W": np.zeros((8, 5), np.float32),
                                       "b": np.zeros((5,), np.float32)})
  with pytest.raises(ValueError, match=r"^rb/linear2: parameter 'W' has shape \(8, 5\), "
                                       r"expected \(8, 8\)"):
    nn.residual_block.apply(params, jnp.ones((2, 8)), path="rb")


# --- residual MLP --------------------------------------------------------------------

@pytest.fixture(scope="module")
def res_mlp():
  return nn.residual_mlp.init(6, 8, 3, 2, key=jax.random.key(0))


def test_residual_mlp_structure_and_forward(res_mlp):
  assert [p for p, _ in nn.param_paths(res_mlp)] == [
      "blocks/0/linear1/W", "blocks/0/linear1/b", "blocks/0/linear2/W",
      "blocks/0/linear2/b", "blocks/1/linear1/W", "blocks/1/linear1/b",
      "blocks/1/linear2/W", "blocks/1/linear2/b", "input/W", "input/b", "output/W",
      "output/b"]
  with jax.enable_x64(True):
    params = cast(res_mlp, F64, bias_seed=2)
    x = normal(1, (4, 6), F64)

    @jax.jit
    def reference(params, x):
      h = x @ params["input"]["W"] + params["input"]["b"]
      for bp in params["blocks"]:
        h = nn.residual_block.apply(bp, h)  # checked against its formula above
      return h @ params["output"]["W"] + params["output"]["b"]

    np.testing.assert_allclose(jax.jit(nn.residual_mlp.apply)(params, x),
                               reference(params, x), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("activation", ["relu", "sigmoid"])
def test_residual_mlp_hand_grad_equals_jax_grad(res_mlp, activation):
  with jax.enable_x64(True):
    params = cast(res_mlp, F64, bias_seed=2)
    x = normal(1, (4, 6), F64)
    labels = jnp.array([0, 1, 2, 1])
    loss = lambda p, x: hg.ops.softmax_cross_entropy(
        nn.residual_mlp.apply(p, x, activation=activation), labels)
    assert_hand_grad_matches(loss, (params, x), (0, 1), F64)
