"""safe_optimizer: fault injection (NaN, inf, huge gradients) inside jax.jit."""

import pickle

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from handgrad import inspect as hgi

LR = 0.1
MAX_NORM = 1.0
PATIENCE = 3


def _params():
  return {"W": jnp.arange(6.0).reshape(2, 3) / 10, "b": jnp.array([0.5, -0.5, 1.0])}


def _grad(kind):
  base = {"W": jnp.array([[0.1, -0.2, 0.0], [0.05, 0.1, -0.1]]),
          "b": jnp.array([0.1, 0.0, -0.2])}
  if kind == "normal":
    return base
  if kind == "huge":
    return jax.tree.map(lambda g: g * 1e4, base)
  if kind == "nan":
    return {"W": base["W"].at[0, 1].set(jnp.nan), "b": base["b"]}
  if kind == "inf":
    return {"W": base["W"], "b": base["b"].at[2].set(-jnp.inf)}
  raise ValueError(kind)


def _state_leaves(state):
  """Everything that a skipped step must leave unchanged."""
  return jax.tree.leaves((state.inner_state, state.learning_rate, state.explosion_count))


SCRIPT = ["normal", "huge", "nan", "inf", "huge", "huge",  # 3rd explosion: lr halves
          "normal", "huge", "normal", "huge", "nan", "huge", "huge",  # halves again
          "inf", "nan", "nan", "nan", "normal"]


def test_scripted_faults_inside_jit():
  opt = hgi.safe_optimizer(optax.sgd, learning_rate=LR, max_grad_norm=MAX_NORM,
                           patience=PATIENCE)
  params = _params()
  state = opt.init(params)

  @jax.jit
  def step(params, state, grads):
    updates, state = opt.update(grads, state, params)
    return optax.apply_updates(params, updates), state

  lr, count, skipped_total = LR, 0, 0
  lrs = []
  for kind in SCRIPT:
    g = _grad(kind)
    new_params, new_state = step(params, state, g)
    flat = np.concatenate([np.asarray(x, np.float64).ravel() for x in jax.tree.leaves(g)])
    norm = np.sqrt(np.sum(flat ** 2))
    if kind in ("nan", "inf"):
      # Skipped: params and state bit for bit unchanged, whatever came before.
      for a, b in zip(jax.tree.leaves(new_params), jax.tree.leaves(params)):
        np.testing.assert_array_equal(a, b)
      for a, b in zip(_state_leaves(new_state), _state_leaves(state)):
        np.testing.assert_array_equal(a, b)
      assert bool(new_state.last_skipped)
      skipped_total += 1
    else:
      # The seed's bookkeeping.
      count = count + 1 if norm > 10 * MAX_NORM else 0
      if count >= PATIENCE:
        lr, count = lr * 0.5, 0
      coef = min(MAX_NORM / (norm + 1e-6), 1.0)
      for p_new, p_old, gl in zip(jax.tree.leaves(new_params), jax.tree.leaves(params),
                                  jax.tree.leaves(g)):
        np.testing.assert_allclose(p_new, np.asarray(p_old) - lr * coef * np.asarray(gl),
                                   rtol=1e-5, atol=1e-7)
      assert not bool(new_state.last_skipped)
      np.testing.assert_allclose(new_state.last_norm, norm, rtol=1e-5)
    assert int(new_state.explosion_count) == count
    assert float(new_state.learning_rate) == np.float32(lr)
    assert int(new_state.num_skipped) == skipped_total
    # The inner optimizer runs with the current rate.
    assert float(new_state.inner_state.hyperparams["learning_rate"]) == np.float32(lr)
    assert all(np.all(np.isfinite(x)) for x in jax.tree.leaves(new_params))
    params, state = new_params, new_state
    lrs.append(float(state.learning_rate))
  # Halved exactly at the 3rd consecutive explosion (NaN steps do not break a streak,
  # a normal step does), and only then.
  assert lrs == [np.float32(v) for v in
                 [LR] * 5 + [LR / 2] * 7 + [LR / 4] * 6]


def test_whole_loop_in_one_scan():
  opt = hgi.safe_optimizer(optax.sgd, learning_rate=LR, max_grad_norm=MAX_NORM,
                           patience=PATIENCE)
  grads = jax.tree.map(lambda *gs: jnp.stack(gs), *[_grad(k) for k in SCRIPT])

  @jax.jit
  def run(params):
    def body(carry, g):
      params, state = carry
      updates, state = opt.update(g, state, params)
      return (optax.apply_updates(params, updates), state), state.learning_rate
    return jax.lax.scan(body, (params, opt.init(params)), grads)

  (params, state), lrs = run(_params())
  np.testing.assert_array_equal(np.asarray(lrs)[[4, 5, 12]],
                                np.float32([LR, LR / 2, LR / 4]))
  assert int(state.num_skipped) == 7
  assert all(np.all(np.isfinite(x)) for x in jax.tree.leaves(params))


def test_apply_if_finite_applies_the_nth_nan_safe_optimizer_never_does():
  params = _params()
  nan = _grad("nan")
  ref = optax.apply_if_finite(optax.sgd(LR), max_consecutive_errors=2)
  safe = hgi.safe_optimizer(optax.sgd, learning_rate=LR)
  p_ref, s_ref = params, ref.init(params)
  p_safe, s_safe = params, safe.init(params)
  for _ in range(5):
    u, s_ref = ref.update(nan, s_ref, p_ref)
    p_ref = optax.apply_updates(p_ref, u)
    u, s_safe = safe.update(nan, s_safe, p_safe)
    p_safe = optax.apply_updates(p_safe, u)
  assert np.isnan(np.asarray(p_ref["W"])).any()  # the 3rd NaN update went through
  for a, b in zip(jax.tree.leaves(p_safe), jax.tree.leaves(params)):
    np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("mode", ["factory", "direction"])
def test_matches_plain_adam_when_nothing_goes_wrong(mode):
  inner = optax.adam if mode == "factory" else optax.scale_by_adam()
  safe = hgi.safe_optimizer(inner, learning_rate=1e-2, max_grad_norm=10.0)
  ref = optax.adam(1e-2)
  params = _params()
  p1, s1 = params, safe.init(params)
  p2, s2 = params, ref.init(params)
  for i in range(4):
    g = jax.tree.map(lambda x: x * (i + 1), _grad("normal"))
    u1, s1 = safe.update(g, s1, p1)
    u2, s2 = ref.update(g, s2, p2)
    p1, p2 = optax.apply_updates(p1, u1), optax.apply_updates(p2, u2)
  # float32 round-off only (inject_hyperparams holds the rates as arrays).
  for a, b in zip(jax.tree.leaves(p1), jax.tree.leaves(p2)):
    np.testing.assert_allclose(a, b, rtol=2e-5, atol=1e-7)


def test_direction_mode_halves_its_own_scale():
  safe = hgi.safe_optimizer(optax.identity(), learning_rate=1.0, max_grad_norm=1.0,
                            patience=1)
  params = _params()
  state = safe.init(params)
  u, state = safe.update(_grad("huge"), state, params)
  # One explosion with patience 1: this very step uses lr 0.5 on the clipped gradient.
  assert float(state.learning_rate) == 0.5
  np.testing.assert_allclose(optax.tree.norm(u), 0.5, rtol=1e-5)


def test_state_is_checkpointable():
  opt = hgi.safe_optimizer(optax.adam, learning_rate=LR, patience=2)
  params = _params()
  state = opt.init(params)
  for kind in ["huge", "normal", "huge", "huge", "nan"]:
    u, state = opt.update(_grad(kind), state, params)
    params = optax.apply_updates(params, u)
  blob = pickle.dumps(jax.device_get((params, state)))
  p2, s2 = jax.tree.map(jnp.asarray, pickle.loads(blob))
  assert isinstance(s2, hgi.SafeOptimizerState)
  assert float(s2.learning_rate) == np.float32(LR / 2) and bool(s2.last_skipped)
  u1, s1 = opt.update(_grad("normal"), state, params)
  u2, s2 = jax.jit(opt.update)(_grad("normal"), s2, p2)
  for a, b in zip(jax.tree.leaves((u1, s1)), jax.tree.leaves((u2, s2))):
    np.testing.assert_allclose(a, b, rtol=1e-6)


def test_bad_arguments():
  with pytest.raises(ValueError, match="patience"):
    hgi.safe_optimizer(optax.sgd, learning_rate=0.1, patience=0)
  with pytest.raises(ValueError, match="max_grad_norm"):
    hgi.safe_optimizer(optax.sgd, learning_rate=0.1, max_grad_norm=0.0)
  with pytest.raises(TypeError, match="factory"):
    hgi.safe_optimizer(0.1, learning_rate=0.1)
