"""Precision policies and dynamic loss scaling."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import handgrad as hg
from handgrad._src import check
from handgrad._src.train import mixed_precision as mp


def mlp_apply(params, x):
  h = hg.ops.relu(hg.ops.dense(x, params["W1"], params["b1"]))
  return hg.ops.dense(h, params["W2"], params["b2"])


def make_params(key=0):
  k = jax.random.split(jax.random.key(key), 2)
  return {"W1": jax.random.normal(k[0], (12, 16)) * 0.3, "b1": jnp.zeros(16),
          "W2": jax.random.normal(k[1], (16, 5)) * 0.3, "b2": jnp.zeros(5)}


def batch():
  return jax.random.uniform(jax.random.key(3), (8, 12)), jnp.arange(8) % 5


@pytest.mark.parametrize("name,dtype", [("bf16", jnp.bfloat16), ("fp16", jnp.float16)])
def test_policy_runs_in_low_precision_and_returns_float32(name, dtype):
  policy = mp.get_policy(name)
  params, (x, y) = make_params(), batch()
  seen = []

  def apply(p, x):
    seen.append(p["W1"].dtype)
    return mlp_apply(p, x)

  out = policy.apply(apply)(params, x)
  assert seen == [dtype] and out.dtype == jnp.float32


def max_err(tree, ref):
  return max(float(jnp.max(jnp.abs(a.astype(jnp.float32) - b.astype(jnp.float32))))
             for a, b in zip(jax.tree.leaves(tree), jax.tree.leaves(ref)))


def assert_as_accurate_as_jax(hand, jax_low, ref32, dtype):
  """In low precision the hand and JAX backward passes round differently (different
  but equally valid orders of operations), so they are compared by their error against
  the same computation in float32: the hand pass must be as accurate as jax.vjp, up to
  one unit in the last place of the compute dtype."""
  ulp = float(jnp.finfo(dtype).eps)
  assert max_err(hand, ref32) <= 1.5 * max_err(jax_low, ref32) + ulp, \
      (max_err(hand, ref32), max_err(jax_low, ref32))


@pytest.mark.parametrize("name", ["bf16", "fp16"])
def test_hand_gradients_under_a_policy_are_as_accurate_as_jax(name):
  policy = mp.get_policy(name)
  params, (x, y) = make_params(), batch()
  loss = lambda p: hg.ops.softmax_cross_entropy(policy.apply(mlp_apply)(p, x), y)
  loss32 = lambda p: hg.ops.softmax_cross_entropy(mlp_apply(p, x), y)
  hand = hg.grad(loss)(params)
  assert all(g.dtype == jnp.float32 for g in jax.tree.leaves(hand))
  assert_as_accurate_as_jax(hand, jax.grad(loss)(params), jax.grad(loss32)(params),
                            policy.compute_dtype)


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16])
def test_layer_rules_keep_cotangent_dtype_equal_to_primal(dtype):
  x = jax.random.normal(jax.random.key(0), (4, 6)).astype(dtype)
  W = (jax.random.normal(jax.random.key(1), (6, 3)) * 0.3).astype(dtype)
  b = jnp.zeros(3, dtype)
  for fn in (lambda x, W, b: hg.ops.relu(hg.ops.dense(x, W, b)),
             lambda x, W, b: hg.ops.softmax(hg.ops.dense(x, W, b)),
             lambda x, W, b: hg.ops.layer_norm(x, jnp.ones(6, dtype), jnp.zeros(6, dtype))):
    out, vjp_fn = hg.vjp(fn, x, W, b)
    ct = check.random_cotangents(out)
    cts = vjp_fn(ct)
    assert [c.dtype for c in cts] == [dtype] * 3
    up = lambda t: jax.tree.map(lambda a: a.astype(jnp.float32), t)
    ref32 = jax.vjp(fn, *up((x, W, b)))[1](up(ct))
    assert_as_accurate_as_jax(cts, jax.vjp(fn, x, W, b)[1](ct), ref32, dtype)


def test_loss_scale_grows_backs_off_and_has_a_floor():
  scaler = mp.DynamicLossScale(initial_scale=2.0 ** 15, growth_interval=3, min_scale=1.0)
  state = scaler.init()
  adjust = jax.jit(scaler.adjust)
  for _ in range(2):
    state = adjust(state, jnp.asarray(True))
  assert float(state.scale) == 2.0 ** 15 and int(state.good_steps) == 2
  state = adjust(state, jnp.asarray(True))
  assert float(state.scale) == 2.0 ** 16 and int(state.good_steps) == 0
  state = adjust(state, jnp.asarray(False))
  assert float(state.scale) == 2.0 ** 15 and int(state.good_steps) == 0
  for _ in range(40):
    state = adjust(state, jnp.asarray(False))
  assert float(state.scale) == 1.0


def test_scale_then_unscale_recovers_float16_gradients_that_would_underflow():
  scaler = mp.DynamicLossScale()
  state = scaler.init()
  w = jnp.full((4,), 1e-4, jnp.float16)
  loss = lambda w: jnp.sum(w * w) * jnp.float16(1e-4)   # d/dw = 2e-8: below float16's range
  plain = hg.grad(loss)(w)
  scaled = scaler.unscale(state, hg.grad(lambda w: scaler.scale(state, loss(w)))(w).astype(jnp.float32))
  assert float(jnp.max(jnp.abs(plain))) == 0.0
  np.testing.assert_allclose(np.asarray(scaled), 2e-8, rtol=1e-2)


def test_guarded_update_skips_non_finite_steps_bit_exactly():
  params = make_params()
  opt = optax.chain(optax.clip_by_global_norm(1.0), optax.adam(1e-2))
  opt_state = opt.init(params)
  step = jax.jit(lambda g, s, p: mp.guarded_update(opt, g, s, p))
  good = jax.tree.map(jnp.ones_like, params)
  p1, s1, finite = step(good, opt_state, params)
  assert bool(finite) and not np.array_equal(p1["W1"], params["W1"])
  for bad_value in (jnp.nan, jnp.inf, -jnp.inf):
    bad = jax.tree.map(lambda g: g.at[(0,) * g.ndim].set(bad_value), good)
    p2, s2, finite = step(bad, s1, p1)
    assert not bool(finite)
    jax.tree.map(np.testing.assert_array_equal, (p2, s2), (p1, s1))


def test_float16_training_survives_injected_overflow():
  policy, scaler = mp.get_policy("fp16"), mp.DynamicLossScale(initial_scale=2.0 ** 15)
  params, (x, y) = make_params(), batch()
  opt = optax.sgd(0.1)

  @jax.jit
  def step(params, opt_state, ls, inject):
    def loss(p):
      logits = policy.apply(mlp_apply)(p, x)
      l = hg.ops.softmax_cross_entropy(logits, y)
      return scaler.scale(ls, l * jnp.where(inject, jnp.float32(1e38), 1.0))
    grads = scaler.unscale(ls, hg.grad(loss)(params))
    params, opt_state, finite = mp.guarded_update(opt, grads, opt_state, params)
    return params, opt_state, scaler.adjust(ls, finite), finite

  opt_state, ls = opt.init(params), scaler.init()
  history = []
  for i in range(12):
    before = params
    params, opt_state, ls, finite = step(params, opt_state, ls, jnp.asarray(i in (3, 4, 7)))
    history.append((bool(finite), float(ls.scale)))
    if i in (3, 4, 7):
      jax.tree.map(np.testing.assert_array_equal, params, before)
    assert all(bool(jnp.all(jnp.isfinite(p))) for p in jax.tree.leaves(params))
  assert [f for f, _ in history] == [i not in (3, 4, 7) for i in range(12)]
  assert history[3][1] == 2.0 ** 14 and history[4][1] == 2.0 ** 13


def test_unknown_precision_is_a_clear_error():
  with pytest.raises(ValueError, match="unknown precision 'fp8'"):
    mp.get_policy("fp8")
