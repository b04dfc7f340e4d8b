"""The jitted train step: state pytree, donation, backends, accumulation, freezing,
detach, label checks."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from handgrad import nn
from handgrad import ops
from handgrad import train
from handgrad.data import Dataset
from handgrad.data import batches
from handgrad.data import load_mnist

DIMS = [784, 32, 10]
# Float32 step-level tolerance: the hand and JAX backward passes sum the same products
# in possibly different orders, a few ulps (~1e-7 relative) apart.
RTOL, ATOL = 1e-5, 1e-6


@pytest.fixture(scope="module")
def mnist():
  return load_mnist()


@pytest.fixture(scope="module")
def big_batch(mnist):
  train_ds, _ = mnist
  return next(batches(train_ds, 64, key=jax.random.key(3)))


@functools.lru_cache(maxsize=None)
def _init(seed, dims):
  return jax.jit(lambda k: nn.mlp.init(list(dims), key=k))(jax.random.key(seed))


def init_params(seed=0, dims=DIMS):
  """Fresh containers over cached arrays (a step donates only its own copy)."""
  return jax.tree.map(lambda x: x, _init(seed, tuple(dims)))


LOSS = train.classification_loss(nn.mlp.apply)


def assert_trees_close(a, b, rtol=RTOL, atol=ATOL):
  la, ta = jax.tree.flatten(a)
  lb, tb = jax.tree.flatten(b)
  assert ta == tb
  for x, y in zip(la, lb):
    np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=rtol, atol=atol)


@jax.jit
def _reference(params, x, y):
  def loss(p):
    logits = nn.mlp.apply(p, x)
    return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
  value, g = jax.value_and_grad(loss)(params)
  return value, g, optax.tree.norm(g)


def reference(params, batch):
  """(loss, gradient, gradient norm) of the batch by jax.grad, from the definition,
  as numpy arrays."""
  return jax.device_get(_reference(params, batch.x, batch.y))


def reference_grads(params, batch):
  return reference(params, batch)[1]


def sub(a, b, scale=1.0):
  """``a - scale·b`` leaf by leaf, in numpy (no eager JAX ops to compile)."""
  return jax.tree.map(lambda x, y: np.asarray(x) - np.float32(scale) * np.asarray(y), a, b)


# --- the state -----------------------------------------------------------------------

def test_train_state_is_a_pytree_with_raw_key():
  tx = optax.adam(1e-3)
  state = train.TrainState.create(init_params(), tx, key=jax.random.key(7))
  assert state.step.dtype == jnp.int32 and int(state.step) == 0
  assert state.key.dtype == jnp.uint32
  np.testing.assert_array_equal(state.key, jax.random.key_data(jax.random.key(7)))
  assert jax.random.key_data(state.rng()).tolist() == state.key.tolist()
  leaves = jax.tree.leaves(state)
  assert all(isinstance(x, jax.Array) for x in leaves)
  same = jax.tree.map(lambda x: x, state)
  assert isinstance(same, train.TrainState)
  # int seeds and legacy uint32 keys are accepted too
  a = train.TrainState.create(init_params(), tx, key=7)
  b = train.TrainState.create(init_params(), tx, key=jax.random.PRNGKey(7))
  np.testing.assert_array_equal(a.key, b.key)
  with pytest.raises(TypeError, match="PRNG key"):
    train.TrainState.create(init_params(), tx, key="seven")


def test_step_counts_splits_key_and_donates(big_batch):
  tx = optax.sgd(0.1)
  state = train.TrainState.create(init_params(), tx, key=0)
  step = train.make_train_step(LOSS, tx)
  old = state
  old_key = np.asarray(state.key).copy()
  state, metrics = step(state, big_batch)
  assert int(state.step) == 1
  assert not np.array_equal(state.key, old_key)
  assert old.params["layers"][0]["W"].is_deleted()  # donated
  assert set(metrics) == {"loss", "accuracy", "skipped", "grad_norm"}
  assert all(m.dtype == jnp.float32 and m.shape == () for m in metrics.values())
  # donate=False keeps the input alive
  keep = train.make_train_step(LOSS, tx, donate=False)
  s2, _ = keep(state, big_batch)
  assert not state.params["layers"][0]["W"].is_deleted() and int(s2.step) == 2


@pytest.mark.parametrize("backend", train.BACKENDS)
def test_one_sgd_step_is_minus_lr_times_the_gradient(big_batch, backend):
  params = init_params()
  loss, g, norm = reference(params, big_batch)
  tx = optax.sgd(0.5)
  state = train.TrainState.create(params, tx, key=0)
  state, metrics = train.make_train_step(LOSS, tx, backend=backend)(state, big_batch)
  assert_trees_close(state.params, sub(params, g, 0.5))
  np.testing.assert_allclose(metrics["grad_norm"], norm, rtol=RTOL)
  np.testing.assert_allclose(metrics["loss"], loss, rtol=RTOL)


def test_bad_arguments():
  tx = optax.sgd(0.1)
  with pytest.raises(ValueError, match="backend 'torch'"):
    train.make_train_step(LOSS, tx, backend="torch")
  for k in (0, -2, 1.5, True):
    with pytest.raises(ValueError, match="accumulate"):
      train.make_train_step(LOSS, tx, accumulate=k)


def test_loss_without_aux(big_batch):
  def loss(params, batch, key):
    del key
    return LOSS(params, batch, None)[0]
  tx = optax.sgd(0.1)
  state = train.TrainState.create(init_params(), tx, key=0)
  _, metrics = train.make_train_step(loss, tx, has_aux=False)(state, big_batch)
  assert set(metrics) == {"loss", "skipped", "grad_norm"}
  with pytest.raises(TypeError, match="has_aux=False"):
    state = train.TrainState.create(init_params(), tx, key=0)
    train.make_train_step(loss, tx)(state, big_batch)


def test_loss_gets_a_fresh_key_every_step(big_batch):
  seen = []

  def loss(params, batch, key):
    loss, aux = LOSS(params, batch, key)
    return loss, {**aux, "u": jax.random.uniform(key)}

  tx = optax.sgd(0.0)
  state = train.TrainState.create(init_params(), tx, key=0)
  step = train.make_train_step(loss, tx)
  for _ in range(3):
    state, m = step(state, big_batch)
    seen.append(float(m["u"]))
  assert len(set(seen)) == 3


# --- accumulation --------------------------------------------------------------------

@pytest.mark.parametrize("backend,k", [("hand", 2), ("hand", 8), ("jax", 4)])
def test_accumulated_gradient_equals_big_batch(big_batch, backend, k):
  """k micro-batches of 64/k rows give the 64-row batch's gradient and loss."""
  params = init_params()
  tx = optax.sgd(1.0)  # update = -gradient
  big = train.make_train_step(LOSS, tx, backend=backend, donate=False)
  acc = train.make_train_step(LOSS, tx, backend=backend, accumulate=k, donate=False)
  state = train.TrainState.create(params, tx, key=0)
  s1, m1 = big(state, big_batch)
  s2, m2 = acc(state, big_batch)
  assert_trees_close(s2.params, s1.params)
  assert_trees_close(sub(params, s2.params), reference_grads(params, big_batch))
  for name in ("loss", "accuracy", "grad_norm"):
    np.testing.assert_allclose(m2[name], m1[name], rtol=RTOL, atol=ATOL)


def test_accumulation_needs_a_divisible_batch(big_batch):
  tx = optax.sgd(0.1)
  state = train.TrainState.create(init_params(), tx, key=0)
  step = train.make_train_step(LOSS, tx, accumulate=3)
  with pytest.raises(ValueError, match="multiple of accumulate=3"):
    step(state, big_batch)


def test_accumulation_with_clipping_and_momentum_matches_big_batch(big_batch):
  """Clipping sees the accumulated gradient, so it clips exactly as the big batch's.

  (Momentum rather than Adam: Adam divides by √v, which turns rounding-level
  differences in near-zero gradient entries into visible ones.)"""
  tx = train.make_optimizer("momentum", 0.1, clip_norm=0.1)
  state = train.TrainState.create(init_params(), tx, key=0)
  big = train.make_train_step(LOSS, tx, donate=False)
  acc = train.make_train_step(LOSS, tx, accumulate=4, donate=False)
  a, b = state, state
  for _ in range(5):
    a, _ = big(a, big_batch)
    b, _ = acc(b, big_batch)
  assert_trees_close(b.params, a.params)


# --- frozen parameters and detach ----------------------------------------------------

FREEZE_SPECS = {
    "prefix": "layers/0",
    "predicate": lambda path: path.startswith("layers/0"),
    "mask": {"layers": [{"W": True, "b": True}, {"W": False, "b": False}]},
}


@pytest.mark.parametrize("spec", sorted(FREEZE_SPECS))
@pytest.mark.parametrize("backend", train.BACKENDS)
def test_frozen_leaves_stay_bitwise_and_others_train(big_batch, spec, backend):
  frozen = FREEZE_SPECS[spec]
  params = init_params()
  # a -0.0 entry: p + 0.0 would flip it to +0.0, the step must keep the exact bits
  params["layers"][0]["b"] = params["layers"][0]["b"].at[0].set(-0.0)
  tx = train.make_optimizer("adamw", 1e-2, frozen=frozen)  # weight decay would move them
  state = train.TrainState.create(params, tx, key=0)
  step = train.make_train_step(LOSS, tx, backend=backend, frozen=frozen)
  for _ in range(3):
    state, _ = step(state, big_batch)
  for name in ("W", "b"):
    before = np.asarray(params["layers"][0][name])
    after = np.asarray(state.params["layers"][0][name])
    assert before.tobytes() == after.tobytes()
    assert not np.array_equal(params["layers"][1][name], state.params["layers"][1][name])
  assert np.signbit(state.params["layers"][0]["b"][0])
  # the optimizer keeps no moments for the frozen leaves
  masked = [x for x in jax.tree.leaves(state.opt_state, is_leaf=lambda x: isinstance(
      x, optax.MaskedNode)) if isinstance(x, optax.MaskedNode)]
  assert len(masked) == 4  # mu and nu of layers/0/W and layers/0/b


def test_frozen_step_equals_training_the_rest_alone(big_batch):
  """Frozen layer 0 == differentiating layer 1 only, with layer 0 as a constant."""
  params = init_params()
  tx = optax.sgd(1.0)
  state = train.TrainState.create(params, tx, key=0)
  state, _ = train.make_train_step(LOSS, tx, frozen="layers/0")(state, big_batch)
  g = reference_grads(params, big_batch)
  assert_trees_close(state.params["layers"][1], sub(params["layers"][1], g["layers"][1]))


def _count_dots(step, state, batch):
  hlo = step.lower(state, batch).compile().as_text()
  return sum(line.count(" dot(") for line in hlo.splitlines())


def test_frozen_gradients_are_not_computed(big_batch):
  """Freezing layers/0 of a 3-layer MLP leaves its dW (and the dx feeding it) out of the
  compiled step: fewer matrix products, like requires_grad=False."""
  params = init_params(dims=[784, 32, 16, 10])
  tx = optax.sgd(0.1)
  state = train.TrainState.create(params, tx, key=0)
  counts = {}
  for frozen in (None, "layers/0", ["layers/0", "layers/1"]):
    step = train.make_train_step(LOSS, tx, frozen=frozen, donate=False)
    counts[str(frozen)] = _count_dots(step, state, big_batch)
  # 3 forward products; backward: dW2, dx2, dW1, dx1, dW0 = 5, then 3, then 1
  assert counts == {"None": 3 + 5, "layers/0": 3 + 3, "['layers/0', 'layers/1']": 3 + 1}


def test_everything_frozen_is_an_error(big_batch):
  tx = optax.sgd(0.1)
  state = train.TrainState.create(init_params(), tx, key=0)
  step = train.make_train_step(LOSS, tx, frozen="layers")
  with pytest.raises(ValueError, match="every parameter is frozen"):
    step(state, big_batch)


@pytest.mark.parametrize("backend", train.BACKENDS)
def test_stop_gradient_detaches_like_the_seed(big_batch, backend):
  """``lax.stop_gradient`` on layer 0's output (the seed's ``.detach()``): layer 0 gets a
  zero gradient, layer 1 the same gradient as without it; hand equals jax."""
  def loss(params, batch, key):
    del key
    p0, p1 = params["layers"]
    h = jax.lax.stop_gradient(jax.nn.relu(nn.dense.apply(p0, batch.x)))
    logits = nn.dense.apply(p1, h)
    return ops.softmax_cross_entropy(logits, batch.y), {}

  params = init_params()
  tx = optax.sgd(1.0)
  state = train.TrainState.create(params, tx, key=0)
  state, metrics = train.make_train_step(loss, tx, backend=backend)(state, big_batch)
  np.testing.assert_array_equal(state.params["layers"][0]["W"], params["layers"][0]["W"])
  g = reference_grads(params, big_batch)
  assert_trees_close(sub(params["layers"][1], state.params["layers"][1]), g["layers"][1])


# --- labels --------------------------------------------------------------------------

def test_check_labels_names_the_batch_values_and_range():
  train.check_labels(np.array([0, 9, 3]), 10)
  with pytest.raises(ValueError) as e:
    train.check_labels(np.array([0, 12, 3, -1]), 10, where="epoch 2, batch 5")
  msg = str(e.value)
  assert msg.startswith("epoch 2, batch 5: ")
  assert "[0, 10)" in msg and "12 at index 1" in msg and "-1 at index 3" in msg
  with pytest.raises(ValueError, match="and 2 more"):
    train.check_labels(np.full(7, 10), 10)
  with pytest.raises(ValueError, match="integers"):
    train.check_labels(np.array([0.5]), 10)
  with pytest.raises(ValueError, match=r"\(1, 0\)"):
    train.check_labels(np.array([[1, 2], [10, 3]]), 10)


class _Unchecked:
  """A dataset that skips ``Dataset``'s own validation (as a user's loader might)."""

  def __init__(self, x, y, num_classes=10):
    self.x, self.y, self.num_classes = x, y, num_classes

  def __len__(self):
    return len(self.y)


def test_fit_stops_before_a_batch_with_a_bad_label(mnist):
  train_ds, _ = mnist
  y = np.array(train_ds.y[:128])
  y[77] = 10
  ds = _Unchecked(np.array(train_ds.x[:128]), y)
  tx = optax.sgd(0.1)
  state = train.TrainState.create(init_params(), tx, key=0)
  calls = []
  step = train.make_train_step(LOSS, tx)

  def counting(state, batch):
    calls.append(1)
    return step(state, batch)

  with pytest.raises(ValueError, match=r"epoch 1, batch \d: labels must lie in \[0, 10\), "
                                       r"found 10 at index \d+"):
    train.fit(counting, state, ds, epochs=1, batch_size=32, data_key=jax.random.key(0),
              progress=False)
  assert len(calls) < 4


def test_eval_step_averages_over_a_padded_dataset(mnist):
  _, test_ds = mnist
  params = init_params()
  small = Dataset(test_ds.x[:250], test_ds.y[:250])
  ev = train.make_eval_step(train.classification_eval(nn.mlp.apply))
  got = train.evaluate(ev, params, small, batch_size=64)  # 4 batches, the last padded
  loss, _, _ = reference(params, small)
  logits = np.asarray(jax.jit(nn.mlp.apply)(params, small.x))
  assert got["count"] == 250
  np.testing.assert_allclose(got["loss"], loss, rtol=1e-5)
  np.testing.assert_allclose(got["accuracy"],
                             float(np.mean(np.argmax(logits, -1) == small.y)), rtol=1e-6)
