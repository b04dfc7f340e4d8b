"""handgrad.grad differentiates real flax model code like jax.grad, leaf by leaf:
recurrent networks through nn.RNN (LSTMCell, GRUCell, OptimizedLSTMCell; lax.scan and
nn.scan underneath), a bidirectional RNN, nn.scan with nn.remat, multi-head attention
(causal self-attention, cross-attention), Dropout with an RNG, BatchNorm in training mode
with mutable batch_stats, LayerNorm, Embed, flax.nnx modules (nnx.split/merge, nnx.RNN,
nnx.scan), bfloat16 computation, a GRU's Hessian, and one jitted optax training step."""

import chex
import flax.linen as linen
import jax
import jax.flatten_util
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

import handgrad as hg
from nn_testing import agree, normal

DTYPES = [(jnp.float64, 1e-9), (jnp.float32, 2e-5)]


def _cast(tree, dtype):
  """Floating leaves of ``tree`` in ``dtype`` (flax keeps some state in float32)."""
  return jax.tree.map(
      lambda a: a.astype(dtype) if jnp.issubdtype(a.dtype, jnp.floating) else a, tree)


def _both(loss, *args, argnums=0, has_aux=False):
  """(handgrad.grad, jax.grad) of ``loss`` at ``args``, under one jit."""
  both = jax.jit(lambda *a: (hg.grad(loss, argnums, has_aux=has_aux)(*a),
                             jax.grad(loss, argnums, has_aux=has_aux)(*a)))
  return both(*args)


# ---------------------------------------------------------------------------- RNNs

CELLS = {"lstm": linen.LSTMCell, "gru": linen.GRUCell,
         "optimized_lstm": linen.OptimizedLSTMCell}


@pytest.mark.parametrize("cell", sorted(CELLS))
@pytest.mark.parametrize("dtype,tol", DTYPES)
def test_rnn_cells(cell, dtype, tol):
  with jax.enable_x64(True):
    model = linen.RNN(CELLS[cell](features=4, param_dtype=dtype))
    x = normal(0, (2, 5, 3), dtype)               # [batch, time, features]
    lengths = jnp.array([5, 3])                  # the second sequence is padded
    params = model.init(jax.random.key(0), x)["params"]

    def loss(params, x):
      return jnp.sum(jnp.sin(model.apply({"params": params}, x, seq_lengths=lengths)))

    agree(*_both(loss, params, x, argnums=(0, 1)), tol)


def test_bidirectional_and_reversed_rnn():
  with jax.enable_x64(True):
    dtype = jnp.float64
    model = linen.Bidirectional(
        linen.RNN(linen.LSTMCell(4, param_dtype=dtype)),
        linen.RNN(linen.GRUCell(3, param_dtype=dtype), unroll=2))
    reversed_ = linen.RNN(linen.OptimizedLSTMCell(4, param_dtype=dtype), reverse=True,
                          keep_order=True, return_carry=True)
    x = normal(1, (2, 6, 3), dtype)
    params = model.init(jax.random.key(1), x)["params"]
    rparams = reversed_.init(jax.random.key(2), x)["params"]

    def loss(params, rparams, x):
      out = model.apply({"params": params}, x)                  # [2, 6, 4 + 3]
      (c, h), ys = reversed_.apply({"params": rparams}, x)
      return jnp.sum(jnp.sin(out)) + jnp.sum(c * h) + jnp.sum(jnp.cos(ys))

    agree(*_both(loss, params, rparams, x, argnums=(0, 1, 2)), 1e-9)


def test_second_order_through_a_gru():
  """hg.hessian of a GRU's loss w.r.t. its flattened parameters: a scan differentiated
  twice by hand."""
  with jax.enable_x64(True):
    model = linen.RNN(linen.GRUCell(3, param_dtype=jnp.float64))
    x = normal(13, (2, 4, 3), jnp.float64)
    flat, unravel = jax.flatten_util.ravel_pytree(model.init(jax.random.key(12), x)["params"])
    loss = lambda w: jnp.sum(jnp.sin(model.apply({"params": unravel(w)}, x)))  # noqa: E731
    got, want = jax.jit(lambda w: (hg.hessian(loss)(w), jax.hessian(loss)(w)))(flat)
    agree(got, want, 1e-9)


class _Step(linen.Module):

  @linen.compact
  def __call__(self, carry, x):
    h = jnp.tanh(linen.Dense(4, param_dtype=jnp.float64)(jnp.concatenate([carry, x], -1)))
    return h, h * x[..., :1]


class _Scanned(linen.Module):

  @linen.compact
  def __call__(self, xs):
    step = linen.scan(linen.remat(_Step), variable_broadcast="params",
                      split_rngs={"params": False}, in_axes=1, out_axes=1)
    _, ys = step()(jnp.zeros((xs.shape[0], 4), xs.dtype), xs)
    return ys


def test_nn_scan_with_remat():
  with jax.enable_x64(True):
    model = _Scanned()
    x = normal(2, (2, 5, 3), jnp.float64)
    params = model.init(jax.random.key(3), x)["params"]
    loss = lambda p, x: jnp.sum(jnp.sin(model.apply({"params": p}, x)))  # noqa: E731
    agree(*_both(loss, params, x, argnums=(0, 1)), 1e-9)


# ----------------------------------------------------------------------- attention

@pytest.mark.parametrize("dtype,tol", DTYPES)
def test_causal_self_attention_and_cross_attention(dtype, tol):
  with jax.enable_x64(True):
    attn = linen.MultiHeadDotProductAttention(num_heads=2, param_dtype=dtype, dtype=dtype)
    q, kv = normal(3, (2, 6, 8), dtype), normal(4, (2, 4, 8), dtype)
    causal = linen.make_causal_mask(jnp.ones((2, 6)))
    self_params = attn.init(jax.random.key(4), q, mask=causal)["params"]
    cross_params = attn.init(jax.random.key(5), q, kv)["params"]

    def loss(self_params, cross_params, q, kv):
      h = attn.apply({"params": self_params}, q, mask=causal)
      out = attn.apply({"params": cross_params}, h, kv)
      return jnp.sum(jnp.sin(out))

    agree(*_both(loss, self_params, cross_params, q, kv, argnums=(0, 1, 2, 3)), tol)


# ----------------------------------- dropout, batch norm (training), layer norm, embed

class _Tagger(linen.Module):
  dtype: jnp.dtype

  @linen.compact
  def __call__(self, ids, train: bool):
    embed = linen.Embed(11, 6, param_dtype=self.dtype)
    x = embed(ids)                                              # [B, T, 6]
    x = linen.Dense(7, param_dtype=self.dtype)(x)
    x = linen.Dropout(0.3, deterministic=not train)(x)
    x = linen.LayerNorm(param_dtype=self.dtype)(x)
    x = linen.BatchNorm(use_running_average=not train, momentum=0.8,
                        param_dtype=self.dtype)(x)
    x = linen.Dense(6, param_dtype=self.dtype)(jax.nn.gelu(x))
    return embed.attend(x)                                      # tied output weights


@pytest.mark.parametrize("dtype,tol", DTYPES)
def test_dropout_batch_norm_layer_norm_embed(dtype, tol):
  with jax.enable_x64(True):
    model = _Tagger(dtype)
    ids = jnp.asarray(np.random.default_rng(5).integers(0, 11, (3, 4)))
    variables = _cast(model.init(jax.random.key(6), ids, False), dtype)
    params, stats = variables["params"], variables["batch_stats"]
    key = jax.random.key(7)

    def loss(params, key):
      logits, updates = model.apply({"params": params, "batch_stats": stats}, ids, True,
                                    rngs={"dropout": key}, mutable=["batch_stats"])
      return jnp.mean(optax.softmax_cross_entropy_with_integer_labels(logits, ids)), \
          updates["batch_stats"]

    (got, got_stats), (want, want_stats) = _both(loss, params, key, has_aux=True)
    agree(got, want, tol)
    agree(got_stats, want_stats, tol)
    # the RNG was used: another key gives another gradient
    other, _ = jax.jit(jax.grad(loss, has_aux=True))(params, jax.random.key(8))
    diff = jax.tree.map(lambda a, b: float(jnp.max(jnp.abs(a - b))), got, other)
    assert max(jax.tree.leaves(diff)) > 1e-3


# ----------------------------------------------------------------- mixed precision

class _Mixed(linen.Module):
  """float32 parameters, computation in ``dtype`` (flax's ``dtype`` argument)."""
  dtype: jnp.dtype

  @linen.compact
  def __call__(self, x):
    x = linen.Dense(16, dtype=self.dtype)(x)
    x = linen.LayerNorm(dtype=self.dtype)(x)
    x = linen.MultiHeadDotProductAttention(2, dtype=self.dtype)(
        x, mask=linen.make_causal_mask(x[..., 0]))
    x = linen.Conv(4, (3,), dtype=self.dtype)(x)
    return linen.Dense(3, dtype=self.dtype)(x).astype(jnp.float32)


def test_bfloat16_computation_is_as_accurate_as_jax_grad():
  """In bfloat16 the two gradients differ by rounding: each is compared with the float32
  model's gradient, and the hand one must be about as close to it as jax.grad's."""
  x = normal(12, (2, 5, 4), jnp.float32)
  params = _Mixed(jnp.bfloat16).init(jax.random.key(11), x)["params"]

  def loss(dtype):
    return lambda p: jnp.mean(optax.sigmoid_binary_cross_entropy(
        _Mixed(dtype).apply({"params": p}, x), 0.5))

  got, want = _both(loss(jnp.bfloat16), params)
  exact = jax.jit(jax.grad(loss(jnp.float32)))(params)
  chex.assert_trees_all_equal_shapes_and_dtypes(got, want)
  error = lambda g: max(jax.tree.leaves(  # noqa: E731
      jax.tree.map(lambda a, b: float(jnp.max(jnp.abs(a - b))), g, exact)))
  scale = max(float(jnp.max(jnp.abs(a))) for a in jax.tree.leaves(exact))
  assert error(want) < 0.05 * scale                      # bfloat16 rounding, not a bug
  assert error(got) <= 2 * error(want), (error(got), error(want))


# ---------------------------------------------------------------------------- nnx

class _NnxBlock(nnx.Module):

  def __init__(self, dtype, rngs):
    self.lin = nnx.Linear(3, 8, param_dtype=dtype, rngs=rngs)
    self.bn = nnx.BatchNorm(8, param_dtype=dtype, rngs=rngs)
    self.drop = nnx.Dropout(0.2, rngs=rngs)
    self.ln = nnx.LayerNorm(8, param_dtype=dtype, rngs=rngs)
    self.attn = nnx.MultiHeadAttention(num_heads=2, in_features=8, qkv_features=8,
                                       decode=False, dtype=dtype, param_dtype=dtype,
                                       rngs=rngs)
    self.rnn = nnx.RNN(nnx.LSTMCell(8, 4, param_dtype=dtype, rngs=rngs))
    self.out = nnx.Linear(4, 1, param_dtype=dtype, rngs=rngs)

  def __call__(self, x):
    x = self.ln(self.drop(self.bn(nnx.relu(self.lin(x)))))
    x = x + self.attn(x, mask=nnx.make_causal_mask(x[..., 0]))
    return self.out(self.rnn(x))


class _NnxRecurrence(nnx.Module):

  def __init__(self, rngs):
    self.lin = nnx.Linear(3, 3, param_dtype=jnp.float64, rngs=rngs)

  def __call__(self, x):
    @nnx.scan(in_axes=(nnx.Carry, None), out_axes=nnx.Carry, length=4)
    def body(c, lin):
      return jnp.tanh(lin(c))
    return body(x, self.lin)


# nnx.MultiHeadAttention calls jax.nn.dot_product_attention, whose softmax is always
# computed in float32: in float64 the two gradients agree to float32 rounding only.
@pytest.mark.parametrize("dtype,tol", [(jnp.float64, 1e-6), (jnp.float32, 2e-5)])
def test_nnx_block(dtype, tol):
  with jax.enable_x64(True):
    model = _NnxBlock(dtype, nnx.Rngs(0, dropout=1))
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    rest = _cast(rest, dtype)                                 # batch stats: float32
    x = normal(9, (2, 5, 3), dtype)

    def loss(params, x):
      model = nnx.merge(graphdef, params, rest, copy=True)   # a pure function of params
      y = model(x)                                            # training mode: batch stats
      return jnp.sum(jnp.sin(y)), nnx.state(model, nnx.BatchStat)

    (got, got_stats), (want, want_stats) = _both(loss, params, x, argnums=(0, 1),
                                                 has_aux=True)
    agree(got, want, tol)
    agree(got_stats, want_stats, tol)


def test_nnx_scan():
  with jax.enable_x64(True):
    graphdef, params = nnx.split(_NnxRecurrence(nnx.Rngs(2)))
    x = normal(10, (2, 3), jnp.float64)
    loss = lambda p, x: jnp.sum(jnp.sin(nnx.merge(graphdef, p, copy=True)(x)))  # noqa: E731
    agree(*_both(loss, params, x, argnums=(0, 1)), 1e-9)


# ---------------------------------------------------------------- a training step

def test_jitted_training_step_equals_optax_with_jax_grad():
  """Three Adam steps of an LSTM classifier: the hand gradient's parameters equal
  jax.grad's after each step (float32)."""
  model = linen.RNN(linen.LSTMCell(6))
  head = linen.Dense(3)
  x = normal(11, (4, 5, 2), jnp.float32)
  labels = jnp.array([0, 2, 1, 2])
  params = {"rnn": model.init(jax.random.key(9), x)["params"],
            "head": head.init(jax.random.key(10), jnp.zeros((1, 6)))["params"]}
  opt = optax.adam(1e-2)

  def loss(params, x, labels):
    h = model.apply({"params": params["rnn"]}, x)[:, -1]
    logits = head.apply({"params": params["head"]}, h)
    return jnp.mean(optax.softmax_cross_entropy_with_integer_labels(logits, labels))

  def step(grad_fn):
    @jax.jit
    def run(params, state):
      value, grads = grad_fn(loss)(params, x, labels)
      updates, state = opt.update(grads, state, params)
      return optax.apply_updates(params, updates), state, value
    return run

  hand, ref = step(hg.value_and_grad), step(jax.value_and_grad)
  p_hand, s_hand = params, opt.init(params)
  p_ref, s_ref = params, opt.init(params)
  for _ in range(3):
    p_hand, s_hand, v_hand = hand(p_hand, s_hand)
    p_ref, s_ref, v_ref = ref(p_ref, s_ref)
    np.testing.assert_allclose(v_hand, v_ref, rtol=1e-6)
    agree(p_hand, p_ref, 1e-5)
  assert float(v_hand) < float(loss(params, x, labels))   # it trained
