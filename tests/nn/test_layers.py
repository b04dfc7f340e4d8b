"""Core layers of handgrad.nn: dense, initialisers, activations, dropout, layer norm.

Test data comes from numpy (no XLA compilation per shape) and each gradient check jits
handgrad.grad and jax.grad together, so the suite pays one compilation per check.
"""

import math

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import handgrad as hg
from handgrad import nn

F64, F32 = jnp.float64, jnp.float32
TOL = {F64: 1e-7, F32: 1e-5}


def rand(shape, dtype=F32, seed=0, scale=1.0, shift=0.0):
  return jnp.asarray(np.random.default_rng(seed).standard_normal(shape) * scale + shift,
                     dtype)


def cast(tree, dtype):
  return jax.tree.map(lambda a: jnp.asarray(np.asarray(a), dtype), tree)


def assert_hand_grad_matches(loss, args, argnums, dtype, reference=None):
  """handgrad.grad of ``loss`` equals jax.grad of ``reference`` (default ``loss``) at
  the DESIGN tolerance of ``dtype``; both run in one jitted program."""
  both = jax.jit(lambda *a: (hg.grad(loss, argnums=argnums)(*a),
                             jax.grad(reference or loss, argnums=argnums)(*a)))
  got, want = both(*args)
  chex.assert_trees_all_equal_shapes_and_dtypes(got, want)
  chex.assert_trees_all_close(got, want, rtol=TOL[dtype], atol=TOL[dtype])
  return got


# --- dense ---------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", [F64, F32])
def test_dense_hand_grad_equals_jax_grad(dtype):
  # inputs with two, one and no batch dimensions in one loss
  with jax.enable_x64(True):
    p = cast(nn.dense.init(4, 3, key=jax.random.key(0)), dtype)
    p["b"] = rand((3,), dtype, seed=1)
    xs = {"batch2": rand((2, 3, 4), dtype, 2), "batch1": rand((5, 4), dtype, 3),
          "single": rand((4,), dtype, 4)}

    def loss(p, xs):
      return sum(jnp.sum(jnp.sin(nn.dense.apply(p, x))) for x in xs.values())

    assert_hand_grad_matches(loss, (p, xs), (0, 1), dtype)


def test_dense_forward_is_affine_map():
  with jax.enable_x64(True):
    p = {"W": rand((4, 3), F64, 0), "b": rand((3,), F64, 1)}
    x = rand((5, 4), F64, 2)
    np.testing.assert_allclose(nn.dense.apply(p, x), np.asarray(x) @ p["W"] + p["b"],
                               rtol=1e-12)


def test_dense_init_shapes_dtypes_and_zero_bias():
  p = nn.dense.init(4, 3, key=jax.random.key(0))
  assert p["W"].shape == (4, 3) and p["W"].dtype == F32
  assert p["b"].shape == (3,) and p["b"].dtype == F32
  np.testing.assert_array_equal(p["b"], 0)
  with jax.enable_x64(True):
    p64 = nn.dense.init(4, 3, key=jax.random.key(0), dtype=F64)
    assert p64["W"].dtype == F64 and p64["b"].dtype == F64


def test_init_requires_keyword_key():
  with pytest.raises(TypeError, match="key"):
    nn.dense.init(3, 4)
  with pytest.raises(TypeError):
    nn.dense.init(jax.random.key(0), 3, 4)  # key passed positionally
  with pytest.raises(TypeError, match="PRNG key"):
    nn.dense.init(3, 4, key=None)
  with pytest.raises(TypeError, match="PRNG key"):
    nn.dense.init(3, 4, key=0)
  with pytest.raises(TypeError, match="key"):
    nn.layer_norm.init(4)
  with pytest.raises(TypeError, match="key"):
    nn.mlp.init([3, 4])
  with pytest.raises(TypeError, match="key"):
    nn.transformer_classifier.init()


def test_same_key_same_params_different_key_different_params():
  a = nn.dense.init(4, 3, key=jax.random.key(1))
  b = nn.dense.init(4, 3, key=jax.random.key(1))
  c = nn.dense.init(4, 3, key=jax.random.key(2))
  legacy = nn.dense.init(4, 3, key=jax.random.PRNGKey(1))  # raw uint32 keys work too
  np.testing.assert_array_equal(a["W"], b["W"])
  assert not np.allclose(a["W"], c["W"])
  assert legacy["W"].shape == (4, 3)


# --- initialiser statistics on a large layer ------------------------------------------

FAN_IN, FAN_OUT = 1000, 500  # 500k weights: the sample std is within ~0.3% of the truth


def test_he_init_std():
  W = np.asarray(nn.dense.init(FAN_IN, FAN_OUT, key=jax.random.key(0), init="he")["W"])
  assert abs(W.mean()) < 0.01 * math.sqrt(2 / FAN_IN)
  np.testing.assert_allclose(W.std(), math.sqrt(2 / FAN_IN), rtol=0.01)


def test_glorot_init_bounds_and_variance():
  key = jax.random.key(0)
  W = np.asarray(nn.dense.init(FAN_IN, FAN_OUT, key=key, init="glorot")["W"])
  limit = math.sqrt(6 / (FAN_IN + FAN_OUT))
  assert np.abs(W).max() <= limit
  assert np.abs(W).max() > 0.99 * limit  # uniform: the bounds are reached
  np.testing.assert_allclose(W.var(), 2 / (FAN_IN + FAN_OUT), rtol=0.01)
  # "xavier" is the same initialiser
  np.testing.assert_array_equal(nn.dense.init(FAN_IN, FAN_OUT, key=key, init="xavier")["W"],
                                W)


def test_seed_normal_init_std():
  W = np.asarray(nn.dense.init(FAN_IN, FAN_OUT, key=jax.random.key(0), init="normal")["W"])
  np.testing.assert_allclose(W.std(), 0.01, rtol=0.01)
  assert abs(W.mean()) < 1e-4


def test_he_is_the_default():
  key = jax.random.key(3)
  np.testing.assert_array_equal(nn.dense.init(4, 3, key=key)["W"],
                                nn.dense.init(4, 3, key=key, init="he")["W"])


def test_callable_initializer_and_unknown_scheme():
  p = nn.dense.init(4, 3, key=jax.random.key(0), init=jax.nn.initializers.zeros)
  np.testing.assert_array_equal(p["W"], 0)
  with pytest.raises(ValueError, match="unknown initialiser 'kaiming'"):
    nn.dense.init(4, 3, key=jax.random.key(0), init="kaiming")


# --- shape errors --------------------------------------------------------------------

P43 = {"W": np.ones((4, 3), np.float32), "b": np.zeros((3,), np.float32)}


def test_dense_input_mismatch_names_path_param_and_shapes():
  with pytest.raises(ValueError,
                     match=r"^enc/fc: input has 5 features but W has shape \(4, 3\)"):
    nn.dense.apply(P43, jnp.ones((2, 5)), path="enc/fc")


def test_dense_bias_mismatch_names_path_param_and_shapes():
  p = dict(P43, b=np.zeros((4,), np.float32))
  with pytest.raises(ValueError,
                     match=r"^dense: parameter 'b' has shape \(4,\), expected \(3,\)"):
    nn.dense.apply(p, jnp.ones((2, 4)))


def test_missing_parameter_names_layer():
  with pytest.raises(KeyError, match="head: missing parameter 'b'"):
    nn.dense.apply({"W": P43["W"]}, jnp.ones((1, 4)), path="head")


def test_check_shape_message():
  with pytest.raises(ValueError, match=r"^a/0: parameter 'W' has shape \(2, 3\), "
                                       r"expected \(3, 3\)"):
    nn.check_shape("a/0", "W", (3, 3), (2, 3))
  nn.check_shape("a/0", "W", (3, 3), (3, 3))  # equal shapes pass


def test_layer_norm_param_mismatch():
  p = {"gamma": np.ones(8, np.float32), "beta": np.zeros(8, np.float32)}
  with pytest.raises(ValueError, match=r"^blocks/0/ln1: parameter 'gamma' has shape "
                                       r"\(8,\), expected \(6,\)"):
    nn.layer_norm.apply(p, jnp.ones((2, 6)), path="blocks/0/ln1")


# --- activations ---------------------------------------------------------------------

ACTS = {
    "relu": (nn.relu, jax.nn.relu),
    "sigmoid": (nn.sigmoid, jax.nn.sigmoid),
    "tanh": (nn.tanh, jnp.tanh),
    "gelu": (nn.gelu, jax.nn.gelu),
    "gelu_exact": (lambda x: nn.gelu(x, approximate=False),
                   lambda x: jax.nn.gelu(x, approximate=False)),
    "softmax": (nn.softmax, jax.nn.softmax),
    "softmax_axis0": (lambda x: nn.softmax(x, axis=0), lambda x: jax.nn.softmax(x, axis=0)),
}


@pytest.mark.parametrize("dtype", [F64, F32])
def test_activation_values_and_hand_grads(dtype):
  with jax.enable_x64(True):
    x = rand((4, 5), dtype, scale=3.0).at[1].set(0.0)  # a row of exact zeros (kinks)
    w = rand((4, 5), dtype, seed=1)
    values = jax.jit(lambda x: {n: (f(x), ref(x)) for n, (f, ref) in ACTS.items()})(x)
    for name, (got, want) in values.items():
      np.testing.assert_allclose(got, want, rtol=TOL[dtype], atol=TOL[dtype], err_msg=name)

    # Reference: jax.grad of the JAX function, so kink conventions are JAX's own.
    # All activations in one jitted program; compared one by one.
    @jax.jit
    def grads(x):
      return {n: (hg.grad(lambda x: jnp.sum(f(x) * w))(x),
                  jax.grad(lambda x: jnp.sum(ref(x) * w))(x)) for n, (f, ref) in ACTS.items()}

    for name, (got, want) in grads(x).items():
      assert got.dtype == want.dtype == dtype, name
      np.testing.assert_allclose(got, want, rtol=TOL[dtype], atol=TOL[dtype], err_msg=name)


def test_relu_slope_at_zero_is_zero_like_jax_nn_relu():
  assert hg.grad(nn.relu)(0.0) == jax.grad(jax.nn.relu)(0.0) == 0.0


def test_jax_grad_through_ops_relu_agrees_with_hand_rule_at_zero():
  # relu'(0) = 0 on both sides: the op's forward is jax.nn.relu (a custom_jvp).
  assert jax.grad(nn.relu)(0.0) == hg.grad(nn.relu)(0.0) == 0.0


# --- dropout -------------------------------------------------------------------------

def test_dropout_same_key_same_mask_other_key_other_mask():
  x = jnp.ones((64, 64))
  a = nn.dropout(x, 0.5, key=jax.random.key(0))
  b = nn.dropout(x, 0.5, key=jax.random.key(0))
  c = nn.dropout(x, 0.5, key=jax.random.key(1))
  np.testing.assert_array_equal(a, b)
  assert not np.array_equal(a != 0, c != 0)


@pytest.mark.parametrize("rate", [0.1, 0.5, 0.8])
def test_dropout_scaling_keeps_expectation(rate):
  x = jnp.full((400, 500), 2.0)
  y = np.asarray(nn.dropout(x, rate, key=jax.random.key(0)))
  kept = y != 0
  np.testing.assert_allclose(y[kept], 2.0 / (1 - rate), rtol=1e-6)
  np.testing.assert_allclose(kept.mean(), 1 - rate, atol=0.005)
  np.testing.assert_allclose(y.mean(), 2.0, rtol=0.02)


def test_dropout_deterministic_is_identity_and_rate_zero_is_identity():
  x = rand((4, 5))
  np.testing.assert_array_equal(nn.dropout(x, 0.7, deterministic=True), x)
  np.testing.assert_array_equal(
      nn.dropout(x, 0.7, key=jax.random.key(0), deterministic=True), x)
  np.testing.assert_array_equal(nn.dropout(x, 0.0, key=jax.random.key(0)), x)


@pytest.mark.parametrize("rate", [-0.1, 1.0, 1.5])
def test_dropout_rate_validation(rate):
  with pytest.raises(ValueError, match=r"rate must be in \[0, 1\)"):
    nn.dropout(jnp.ones(3), rate, key=jax.random.key(0))


def test_dropout_needs_key_and_static_rate():
  with pytest.raises(TypeError, match="key"):
    nn.dropout(jnp.ones(3), 0.5)
  with pytest.raises(TypeError, match="rate"):
    nn.dropout(jnp.ones(3), jnp.asarray(0.5), key=jax.random.key(0))


def test_dropout_hand_grad_flows_through_kept_units_only():
  with jax.enable_x64(True):
    x = rand((6, 7), F64)
    key = jax.random.key(4)
    loss = lambda x: jnp.sum(jnp.sin(nn.dropout(x, 0.3, key=key)))
    g = np.asarray(assert_hand_grad_matches(loss, (x,), 0, F64))
    kept = np.asarray(jax.jit(lambda x: nn.dropout(x, 0.3, key=key))(x)) != 0
    assert 0 < kept.sum() < kept.size
    np.testing.assert_array_equal(g[~kept], 0)
    np.testing.assert_allclose(g[kept], np.cos(np.asarray(x)[kept] / 0.7) / 0.7,
                               rtol=1e-12)


# --- layer norm ----------------------------------------------------------------------

def test_layer_norm_init():
  p = nn.layer_norm.init(6, key=jax.random.key(0))
  np.testing.assert_array_equal(p["gamma"], np.ones(6))
  np.testing.assert_array_equal(p["beta"], np.zeros(6))


@pytest.mark.parametrize("dtype", [F64, F32])
def test_layer_norm_matches_formula_and_hand_grad(dtype):
  with jax.enable_x64(True):
    p = {"gamma": rand((6,), dtype, 1, shift=1.0), "beta": rand((6,), dtype, 2)}
    x = rand((2, 3, 6), dtype, 3, scale=2.0, shift=1.0)
    xn = np.asarray(x, np.float64)
    mu = xn.mean(-1, keepdims=True)
    var = ((xn - mu) ** 2).mean(-1, keepdims=True)
    want = (xn - mu) / np.sqrt(var + 1e-5) * np.asarray(p["gamma"]) + np.asarray(p["beta"])
    np.testing.assert_allclose(jax.jit(nn.layer_norm.apply)(p, x), want, rtol=TOL[dtype],
                               atol=TOL[dtype])
    w = rand(x.shape, dtype, 4)
    loss = lambda p, x: jnp.sum(nn.layer_norm.apply(p, x) * w)
    assert_hand_grad_matches(loss, (p, x), (0, 1), dtype)


# --- paths, counting, named scopes --------------------------------------------------

def test_param_paths_and_count_params_on_nested_tree():
  tree = {"b": [{"W": np.ones((2, 3))}, {"W": np.ones((4,))}], "a": np.ones(())}
  assert [p for p, _ in nn.param_paths(tree)] == ["a", "b/0/W", "b/1/W"]
  assert nn.count_params(tree) == 1 + 6 + 4


def test_apply_runs_under_named_scope_of_its_path():
  jaxpr = jax.make_jaxpr(lambda p, x: nn.dense.apply(p, x, path="enc/fc"))(P43,
                                                                           jnp.ones((1, 4)))
  dense_eqns = [e for e in jaxpr.jaxpr.eqns if e.params.get("name") == "hg.dense"]
  assert len(dense_eqns) == 1  # one hand-differentiated node
  assert str(dense_eqns[0].source_info.name_stack) == "enc/fc"


def test_user_named_scope_encloses_layer_paths():
  def f(p, x):
    with jax.named_scope("model"):
      return nn.mlp.apply(p, x)
  p = {"layers": [P43]}
  jaxpr = jax.make_jaxpr(f)(p, jnp.ones((1, 4)))
  stacks = [str(e.source_info.name_stack) for e in jaxpr.jaxpr.eqns
            if e.params.get("name") == "hg.dense"]
  assert stacks == ["model/layers/0"]
