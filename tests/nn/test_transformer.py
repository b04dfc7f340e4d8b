"""Attention, feed-forward, the pre-norm transformer block and the classifier."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import handgrad as hg
from handgrad import nn

from nn_testing import F32, F64, TOL, assert_hand_grad_matches, normal  # noqa: F401


def with_random_biases(params, seed, dtype=F64):
  """``params`` in ``dtype`` with random biases and layer-norm shifts and scales
  (the zeros and ones of a fresh init would hide bugs in their handling)."""
  rng = np.random.default_rng(seed)
  def leaf(path, a):
    a = np.asarray(a)
    name = getattr(path[-1], "key", None)
    if name in ("b", "beta"):
      a = 0.1 * rng.standard_normal(a.shape)
    elif name == "gamma":
      a = 1 + 0.1 * rng.standard_normal(a.shape)
    return jnp.asarray(a, dtype)
  return jax.tree_util.tree_map_with_path(leaf, params)


@pytest.fixture(scope="module")
def mha_params():
  return nn.multi_head_attention.init(8, 2, key=jax.random.key(0))


@pytest.fixture(scope="module")
def block_params():
  return nn.transformer_block.init(8, 2, 16, key=jax.random.key(0))


@pytest.fixture(scope="module")
def small_classifier():
  return nn.transformer_classifier.init(key=jax.random.key(0), dim=8, num_heads=2,
                                        hidden=16)


def ref_dense(p, x):
  return x @ p["W"] + p["b"]


def ref_attention(q, k, v, causal):
  """softmax(q·kᵀ/√D)·v per head, [B, T, H, D] layout.  Written out: in float64
  jax.nn.dot_product_attention agrees with an exact computation only to ~1e-7."""
  logits = jnp.einsum("bthd,bshd->bhts", q, k) / np.sqrt(q.shape[-1])
  if causal:
    t = q.shape[1]
    logits = jnp.where(jnp.tril(jnp.ones((t, t), bool)), logits, -jnp.inf)
  return jnp.einsum("bhts,bshd->bthd", jax.nn.softmax(logits, axis=-1), v)


def ref_mha(p, x, num_heads, causal):
  def split(t):
    return t.reshape(t.shape[:-1] + (num_heads, t.shape[-1] // num_heads))
  q, k, v = (split(ref_dense(p[n], x)) for n in "qkv")
  return ref_dense(p["o"], ref_attention(q, k, v, causal).reshape(x.shape))


def ref_ln(p, x, eps=1e-5):
  mu = x.mean(-1, keepdims=True)
  var = ((x - mu) ** 2).mean(-1, keepdims=True)
  return (x - mu) / jnp.sqrt(var + eps) * p["gamma"] + p["beta"]


def ref_block(p, x, num_heads, causal=False):
  x = x + ref_mha(p["attn"], ref_ln(p["ln1"], x), num_heads, causal)
  h = jax.nn.gelu(ref_dense(p["ffn"]["fc1"], ref_ln(p["ln2"], x)))
  return x + ref_dense(p["ffn"]["fc2"], h)


# --- multi-head attention ------------------------------------------------------------

def test_mha_forward_matches_reference(mha_params):
  with jax.enable_x64(True):
    p = with_random_biases(mha_params, 1)
    x = normal(2, (3, 5, 8), F64)

    @jax.jit
    def both(p, x):
      return {c: (nn.multi_head_attention.apply(p, x, num_heads=2, causal=c),
                  ref_mha(p, x, 2, c)) for c in (False, True)}

    for causal, (got, want) in both(p, x).items():
      np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-12, err_msg=f"{causal=}")


def test_mha_hand_grad_equals_jax_grad(mha_params):
  with jax.enable_x64(True):
    p = with_random_biases(mha_params, 1)
    x = normal(2, (3, 5, 8), F64)
    w = normal(3, (2, 3, 5, 8), F64)

    def loss(p, x):  # causal and full attention in one loss
      return sum(jnp.sum(nn.multi_head_attention.apply(p, x, num_heads=2, causal=c) * w[c])
                 for c in (0, 1))

    assert_hand_grad_matches(loss, (p, x), (0, 1), F64)


def test_mha_params_and_head_validation(mha_params):
  assert sorted(mha_params) == ["k", "o", "q", "v"]
  assert all(mha_params[n]["W"].shape == (8, 8) and mha_params[n]["b"].shape == (8,)
             for n in mha_params)
  with pytest.raises(ValueError, match="dim 10 is not divisible by num_heads 3"):
    nn.multi_head_attention.init(10, 3, key=jax.random.key(0))
  with pytest.raises(ValueError, match=r"^attn: 8 features do not split into num_heads=3"):
    nn.multi_head_attention.apply(mha_params, jnp.ones((1, 2, 8)), num_heads=3)
  with pytest.raises(TypeError, match="num_heads"):
    nn.multi_head_attention.apply(mha_params, jnp.ones((1, 2, 8)))  # num_heads is required
  with pytest.raises(ValueError, match=r"^blocks/1/attn/q: input has 10 features but W "
                                       r"has shape \(8, 8\)"):
    nn.multi_head_attention.apply(mha_params, jnp.ones((1, 2, 10)), num_heads=2,
                                  path="blocks/1/attn")


def test_causal_attention_ignores_the_future(mha_params):
  x = normal(1, (1, 6, 8))
  x2 = jnp.concatenate([x[:, :4], normal(2, (1, 2, 8))], axis=1)  # change positions 4, 5
  apply = jax.jit(lambda x: nn.multi_head_attention.apply(mha_params, x, num_heads=2,
                                                          causal=True))
  a, b = apply(x), apply(x2)
  np.testing.assert_allclose(a[:, :4], b[:, :4], rtol=1e-6, atol=1e-6)
  assert not np.allclose(a[:, 4:], b[:, 4:])


# --- feed-forward --------------------------------------------------------------------

def test_feed_forward_matches_formula_and_hand_grad(block_params):
  with jax.enable_x64(True):
    p = with_random_biases(block_params["ffn"], 1)
    assert p["fc1"]["W"].shape == (8, 16) and p["fc2"]["W"].shape == (16, 8)
    x = normal(2, (2, 3, 8), F64)
    acts = {"gelu": jax.nn.gelu, "relu": jax.nn.relu}

    @jax.jit
    def both(p, x):
      return {a: (nn.feed_forward.apply(p, x, activation=a),
                  ref_dense(p["fc2"], ref(ref_dense(p["fc1"], x)))) for a, ref in acts.items()}

    for act, (got, want) in both(p, x).items():
      np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12, err_msg=act)

    def loss(p, x):
      return sum(jnp.sum(jnp.sin(nn.feed_forward.apply(p, x, activation=a))) for a in acts)

    assert_hand_grad_matches(loss, (p, x), (0, 1), F64)


# --- transformer block ---------------------------------------------------------------

def test_block_forward_matches_reference(block_params):
  assert sorted(block_params) == ["attn", "ffn", "ln1", "ln2"]
  with jax.enable_x64(True):
    p = with_random_biases(block_params, 1)
    x = normal(2, (2, 5, 8), F64)
    got = jax.jit(lambda p, x: nn.transformer_block.apply(p, x, num_heads=2))(p, x)
    want = jax.jit(lambda p, x: ref_block(p, x, 2))(p, x)
    np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-12)


def test_block_hand_grad_equals_jax_grad_float32(block_params):
  p = with_random_biases(block_params, 1, F32)
  x, w = normal(2, (2, 5, 8)), normal(3, (2, 5, 8))
  loss = lambda p, x: jnp.sum(nn.transformer_block.apply(p, x, num_heads=2) * w)
  assert_hand_grad_matches(loss, (p, x), (0, 1), F32)


def test_block_remat_same_outputs_and_same_hand_grads(block_params):
  with jax.enable_x64(True):
    p = with_random_biases(block_params, 1)
    x, w = normal(2, (2, 5, 8), F64), normal(3, (2, 5, 8), F64)

    def loss(p, x, remat):
      return jnp.sum(nn.transformer_block.apply(p, x, num_heads=2, causal=True,
                                                remat=remat) * w)

    # remat=True really checkpoints the two residual branches
    remat_names = ("checkpoint", "remat2", "remat")
    jaxpr = jax.make_jaxpr(lambda p, x: loss(p, x, True))(p, x)
    assert sum(e.primitive.name in remat_names for e in jaxpr.jaxpr.eqns) == 2
    jaxpr = jax.make_jaxpr(lambda p, x: loss(p, x, False))(p, x)
    assert not any(e.primitive.name in remat_names for e in jaxpr.jaxpr.eqns)

    @jax.jit
    def run(p, x):
      return {"value": (loss(p, x, True), loss(p, x, False)),
              "hand": (hg.grad(loss, argnums=(0, 1))(p, x, True),
                       hg.grad(loss, argnums=(0, 1))(p, x, False)),
              "jax": jax.grad(loss, argnums=(0, 1))(p, x, True)}

    out = run(p, x)
    np.testing.assert_allclose(*out["value"], rtol=1e-12)
    chex.assert_trees_all_close(*out["hand"], rtol=1e-7, atol=1e-7)
    chex.assert_trees_all_close(out["hand"][0], out["jax"], rtol=1e-7, atol=1e-7)


def test_block_layers_run_under_their_param_paths(block_params):
  x = jnp.ones((2, 5, 8))
  jaxpr = jax.make_jaxpr(lambda p, x: nn.transformer_block.apply(
      p, x, num_heads=2, path="blocks/1"))(block_params, x)
  stacks = {e.params["name"].split("[")[0] + "@" + str(e.source_info.name_stack)
            for e in jaxpr.jaxpr.eqns if e.primitive.name == "jit"}
  assert stacks == {
      "hg.layer_norm@blocks/1/ln1", "hg.dense@blocks/1/attn/q", "hg.dense@blocks/1/attn/k",
      "hg.dense@blocks/1/attn/v", "hg.attention_weights@blocks/1/attn",
      "hg.dense@blocks/1/attn/o", "hg.layer_norm@blocks/1/ln2", "hg.dense@blocks/1/ffn/fc1",
      "hg.dense@blocks/1/ffn/fc2"}


# --- transformer classifier ----------------------------------------------------------

def test_classifier_default_config_shapes_on_mnist_batch():
  # Shapes only (jax.eval_shape: nothing is compiled); the numbers are checked on a
  # narrower classifier below.
  p = jax.eval_shape(lambda key: nn.transformer_classifier.init(key=key), jax.random.key(0))
  logits = jax.eval_shape(nn.transformer_classifier.apply, p,
                          jax.ShapeDtypeStruct((3, 784), F32))
  assert logits.shape == (3, 10) and logits.dtype == F32
  shapes = {path: leaf.shape for path, leaf in nn.param_paths(p)}
  assert shapes["embed/W"] == (28, 64) and shapes["pos"] == (28, 64)
  assert shapes["blocks/1/attn/q/W"] == (64, 64) and shapes["ln_f/gamma"] == (64,)
  assert shapes["blocks/0/ffn/fc1/W"] == (64, 256)  # hidden = 4·dim
  assert shapes["head/W"] == (64, 10) and shapes["head/b"] == (10,)
  assert {path.split("/")[1] for path in shapes if path.startswith("blocks/")} == {"0", "1"}


def test_classifier_forward_matches_reference(small_classifier):
  with jax.enable_x64(True):
    p = with_random_biases(small_classifier, 1)
    x = normal(2, (2, 784), F64)

    @jax.jit
    def reference(p, x):
      h = ref_dense(p["embed"], x.reshape(2, 28, 28)) + p["pos"]
      for bp in p["blocks"]:
        h = ref_block(bp, h, 2)
      return ref_dense(p["head"], ref_ln(p["ln_f"], h).mean(axis=1))

    @jax.jit
    def ours(p, x):  # the image flattened [B, 784] and as rows [B, 28, 28]
      return (nn.transformer_classifier.apply(p, x, num_heads=2),
              nn.transformer_classifier.apply(p, x.reshape(2, 28, 28), num_heads=2))

    flat, rows = ours(p, x)
    assert flat.shape == (2, 10)
    np.testing.assert_allclose(flat, reference(p, x), rtol=1e-10, atol=1e-12)
    np.testing.assert_array_equal(rows, flat)


def test_classifier_hand_grad_equals_jax_grad(small_classifier):
  with jax.enable_x64(True):
    p = with_random_biases(small_classifier, 1)
    x = jnp.asarray(np.random.default_rng(2).uniform(size=(3, 784)), F64)
    labels = jnp.array([3, 7, 0])

    def loss(p, x):
      logits = nn.transformer_classifier.apply(p, x, num_heads=2)
      return hg.ops.softmax_cross_entropy(logits, labels)

    assert_hand_grad_matches(loss, (p, x), (0, 1), F64)


def test_classifier_input_shape_error(small_classifier):
  with pytest.raises(ValueError, match=r"input has shape \(2, 700\), expected \[B, 784\] "
                                       r"or \[B, 28, 28\]"):
    nn.transformer_classifier.apply(small_classifier, jnp.ones((2, 700)), num_heads=2)
