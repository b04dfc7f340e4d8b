"""handgrad.grad differentiates real equinox model code like jax.grad, leaf by leaf, with
respect to the array leaves of a module (eqx.partition / eqx.combine, as eqx.filter_grad
does): eqx.nn.MLP, a CNN of Conv2d, MaxPool2d, GroupNorm, LayerNorm and Dropout, padding
modes, ConvTranspose2d, an LSTMCell and a GRUCell under lax.scan, MultiheadAttention
(causal self-attention, cross-attention, dropout), Embedding, stateful BatchNorm,
filter_vmap / filter_checkpoint, filter_custom_vjp and the checkpointed while loop, and
one jitted optax training step."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import handgrad as hg
from nn_testing import agree, normal

DTYPES = [(jnp.float64, 1e-9), (jnp.float32, 2e-5)]


def _keys(seed, n):
  return jax.random.split(jax.random.key(seed), n)


def _check(loss, model, *args, tol):
  """Compares the gradients of ``loss(model, *args)`` w.r.t. the module's floating
  array leaves and the floating ``args``: handgrad.grad against jax.grad, one jit."""
  params, static = eqx.partition(model, eqx.is_inexact_array)
  f = lambda p, *a: loss(eqx.combine(p, static), *a)  # noqa: E731
  argnums = (0,) + tuple(i + 1 for i, a in enumerate(args)
                         if jnp.issubdtype(jnp.asarray(a).dtype, jnp.inexact))
  both = jax.jit(lambda *a: (hg.grad(f, argnums)(*a), jax.grad(f, argnums)(*a)))
  got, want = both(params, *args)
  agree(got, want, tol)
  return got


@pytest.mark.parametrize("dtype,tol", DTYPES)
def test_mlp(dtype, tol):
  with jax.enable_x64(True):
    mlp = eqx.nn.MLP(3, 2, 8, 2, activation=jax.nn.gelu, final_activation=jnp.tanh,
                     key=jax.random.key(0), dtype=dtype)
    loss = lambda m, x: jnp.sum(jnp.sin(jax.vmap(m)(x)))  # noqa: E731
    _check(loss, mlp, normal(0, (5, 3), dtype), tol=tol)


class _CNN(eqx.Module):
  conv1: eqx.nn.Conv2d
  pool: eqx.nn.MaxPool2d
  conv2: eqx.nn.Conv2d
  norm: eqx.nn.GroupNorm
  ln: eqx.nn.LayerNorm
  drop: eqx.nn.Dropout
  head: eqx.nn.Linear

  def __init__(self, dtype, key):
    a, b, c = jax.random.split(key, 3)
    self.conv1 = eqx.nn.Conv2d(2, 4, 3, padding="SAME", key=a, dtype=dtype)
    self.pool = eqx.nn.MaxPool2d(2, 2)
    self.conv2 = eqx.nn.Conv2d(4, 4, 2, stride=(1, 2), groups=2, key=b, dtype=dtype)
    self.norm = eqx.nn.GroupNorm(2, 4, dtype=dtype)
    self.ln = eqx.nn.LayerNorm(4, dtype=dtype)
    self.drop = eqx.nn.Dropout(0.3)
    self.head = eqx.nn.Linear(4, 3, key=c, dtype=dtype)

  def __call__(self, x, key):                   # x: [channels, height, width]
    x = self.pool(jax.nn.relu(self.conv1(x)))
    x = self.norm(self.conv2(x))
    x = jnp.mean(x, axis=(1, 2))
    return self.head(self.drop(self.ln(x), key=key))


@pytest.mark.parametrize("dtype,tol", DTYPES)
def test_cnn_with_dropout(dtype, tol):
  with jax.enable_x64(True):
    cnn = _CNN(dtype, jax.random.key(1))
    x = normal(1, (3, 2, 8, 8), dtype)
    keys = _keys(2, 3)                          # one dropout key per example
    loss = lambda m, x: jnp.sum(jnp.sin(jax.vmap(m)(x, keys)))  # noqa: E731
    _check(loss, cnn, x, tol=tol)


def test_conv_padding_modes_and_transpose():
  with jax.enable_x64(True):
    dtype, k = jnp.float64, _keys(3, 5)
    layers = [eqx.nn.Conv2d(2, 3, 3, padding=1, padding_mode=mode, key=key, dtype=dtype)
              for mode, key in zip(["ZEROS", "REFLECT", "REPLICATE", "CIRCULAR"], k)]
    up = eqx.nn.ConvTranspose2d(3, 2, 3, stride=2, padding=1, output_padding=1, key=k[4],
                                dtype=dtype)
    pools = eqx.nn.Sequential([eqx.nn.AvgPool2d(2, 1), eqx.nn.AdaptiveAvgPool2d((2, 3))])

    def loss(model, x):
      layers, up = model
      y = sum(layer(x) for layer in layers)
      return jnp.sum(jnp.sin(pools(up(y))))

    _check(loss, (layers, up), normal(3, (2, 5, 6), dtype), tol=1e-9)


@pytest.mark.parametrize("dtype,tol", DTYPES)
def test_lstm_and_gru_cells_under_scan(dtype, tol):
  with jax.enable_x64(True):
    a, b = _keys(4, 2)
    cells = (eqx.nn.LSTMCell(3, 5, key=a, dtype=dtype), eqx.nn.GRUCell(5, 4, key=b, dtype=dtype))
    xs = normal(4, (6, 3), dtype)                # [time, features]

    def loss(cells, xs):
      lstm, gru = cells

      def step(carry, x):
        (h, c), g = carry
        h, c = lstm(x, (h, c))
        g = gru(h, g)
        return ((h, c), g), g

      init = ((jnp.zeros(5, dtype), jnp.zeros(5, dtype)), jnp.zeros(4, dtype))
      _, gs = jax.lax.scan(step, init, xs)
      return jnp.sum(jnp.sin(gs))

    _check(loss, cells, xs, tol=tol)


@pytest.mark.parametrize("dtype,tol", DTYPES)
def test_multihead_attention(dtype, tol):
  with jax.enable_x64(True):
    a, b = _keys(5, 2)
    self_attn = eqx.nn.MultiheadAttention(2, 8, key=a, dtype=dtype)
    cross_attn = eqx.nn.MultiheadAttention(2, 8, 6, 6, dropout_p=0.25, key=b, dtype=dtype)
    q, kv = normal(5, (5, 8), dtype), normal(6, (4, 6), dtype)
    causal = jnp.tril(jnp.ones((5, 5), bool))
    dropout_key = jax.random.key(7)

    def loss(model, q, kv):
      self_attn, cross_attn = model
      h = self_attn(q, q, q, mask=causal)
      out = cross_attn(h, kv, kv, key=dropout_key)   # dropout on the attention weights
      return jnp.sum(jnp.sin(out))

    _check(loss, (self_attn, cross_attn), q, kv, tol=tol)


def test_embedding_and_stateful_batch_norm():
  with jax.enable_x64(True):
    dtype = jnp.float64
    embed = eqx.nn.Embedding(10, 4, key=jax.random.key(8), dtype=dtype)
    norm = eqx.nn.BatchNorm(4, axis_name="batch", mode="batch", dtype=dtype)
    ids = jnp.array([1, 3, 3, 9, 0])

    def loss(model):
      embed, norm = model
      state = eqx.nn.State(norm)               # fresh state: eqx refuses reused state
      y, _ = jax.vmap(lambda i: norm(embed(i), state), axis_name="batch",
                      out_axes=(0, None))(ids)      # training mode: batch statistics
      return jnp.sum(jnp.sin(y) * jnp.arange(4.0))

    grads = _check(loss, (embed, norm), tol=1e-9)
    assert float(jnp.max(jnp.abs(grads[0][0].weight[jnp.array([2, 4, 5, 6, 7, 8])]))) == 0.0


def test_filter_transforms():
  with jax.enable_x64(True):
    mlp = eqx.nn.MLP(3, 2, 6, 2, key=jax.random.key(9), dtype=jnp.float64)
    x = normal(9, (5, 3), jnp.float64)

    def loss(m, x):
      forward = eqx.filter_checkpoint(eqx.filter_vmap(lambda m, x: m(x), in_axes=(None, 0)))
      return jnp.sum(jnp.sin(forward(m, x)))

    _check(loss, mlp, x, tol=1e-9)
    # the same gradient as eqx.filter_grad's, as a module
    got = hg.grad(lambda p: loss(eqx.combine(p, eqx.filter(mlp, eqx.is_inexact_array,
                                                            inverse=True)), x))(
        eqx.filter(mlp, eqx.is_inexact_array))
    agree(got, eqx.filter_grad(loss)(mlp, x), 1e-9)


def test_filter_custom_vjp_and_checkpointed_while_loop():
  """eqx.filter_custom_vjp (a custom_vjp with symbolic zeros whose residuals hold Python
  bools) and the checkpointed while loop built on it (as diffrax uses)."""
  with jax.enable_x64(True):
    dtype = jnp.float64
    lin = eqx.nn.Linear(4, 4, key=jax.random.key(11), dtype=dtype)

    @eqx.filter_custom_vjp
    def scaled_tanh(vjp_arg, scale):
      return jnp.tanh(vjp_arg[0]) * vjp_arg[1] * scale

    @scaled_tanh.def_fwd
    def _(perturbed, vjp_arg, scale):
      return scaled_tanh(vjp_arg, scale), perturbed

    @scaled_tanh.def_bwd
    def _(perturbed, g, _perturbed, vjp_arg, scale):
      x, y = vjp_arg
      dx = g * (1 - jnp.tanh(x) ** 2) * y * scale if perturbed[0] else None
      dy = jnp.sum(g * jnp.tanh(x)) * scale if perturbed[1] else None
      return dx, dy

    x0 = normal(11, (4,), dtype)

    def loss(m, x0):
      def body(carry):
        i, x = carry
        return i + 1, scaled_tanh((m(x), m.bias[0]), 0.5)
      _, x = eqx.internal.while_loop(lambda c: c[0] < 5, body, (jnp.asarray(0), x0),
                                     max_steps=8, kind="checkpointed", checkpoints=2)
      return jnp.sum(jnp.sin(x))

    _check(loss, lin, x0, tol=1e-9)


def test_jitted_training_step_equals_optax_with_jax_grad():
  """Three AdamW steps of an MLP classifier through eqx.filter_jit: the hand gradient's
  module equals jax.grad's after each step (float32)."""
  model = eqx.nn.MLP(4, 3, 16, 2, key=jax.random.key(10))
  x = normal(10, (8, 4), jnp.float32)
  labels = jnp.arange(8) % 3
  opt = optax.adamw(1e-2)

  def loss(params, static):
    logits = jax.vmap(eqx.combine(params, static))(x)
    return jnp.mean(optax.softmax_cross_entropy_with_integer_labels(logits, labels))

  def step(value_and_grad):
    @eqx.filter_jit
    def run(model, state):
      params, static = eqx.partition(model, eqx.is_inexact_array)
      value, grads = value_and_grad(loss)(params, static)
      updates, state = opt.update(grads, state, params)
      return eqx.combine(optax.apply_updates(params, updates), static), state, value
    return run

  hand, ref = step(hg.value_and_grad), step(jax.value_and_grad)
  state = opt.init(eqx.filter(model, eqx.is_inexact_array))
  m_hand, s_hand, m_ref, s_ref = model, state, model, state
  for _ in range(3):
    m_hand, s_hand, v_hand = hand(m_hand, s_hand)
    m_ref, s_ref, v_ref = ref(m_ref, s_ref)
    np.testing.assert_allclose(v_hand, v_ref, rtol=1e-6)
    agree(eqx.filter(m_hand, eqx.is_inexact_array),
           eqx.filter(m_ref, eqx.is_inexact_array), 1e-5)
  assert float(v_hand) < float(loss(*eqx.partition(model, eqx.is_inexact_array)))
