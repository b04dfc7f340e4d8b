"""Optimizer-side pieces: clipping equals a direct computation, frozen specs, optimizers.

(Named ``test_train_transforms.py``: ``tests/_src/test_transforms.py`` exists and test
basenames must be unique without ``__init__.py`` files.)
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from handgrad import train

PARAMS = {"layers": [{"W": jnp.ones((3, 2)), "b": jnp.zeros(2)},
                     {"W": jnp.ones((2, 2)), "b": jnp.zeros(2)}],
          "layers01": {"W": jnp.ones(1)}}
GRADS = {"layers": [{"W": jnp.array([[3.0, -4.0], [0.5, 0.0], [-0.1, 2.0]]),
                     "b": jnp.array([1.0, -6.0])},
                    {"W": jnp.array([[0.2, -0.3], [7.0, 0.01]]), "b": jnp.array([-0.5, 0.4])}],
         "layers01": {"W": jnp.array([-2.5])}}


def flat_np(tree):
  return [np.asarray(x, np.float64) for x in jax.tree.leaves(tree)]


def sgd_update(tx, grads=GRADS, params=PARAMS):
  state = tx.init(params)
  updates, _ = tx.update(grads, state, params)
  return updates


# --- clipping ------------------------------------------------------------------------

@pytest.mark.parametrize("clip_norm", [0.5, 3.0, 1e3])
def test_clip_by_global_norm_equals_direct_computation(clip_norm):
  """update = -lr · g · min(1, c / ‖g‖₂), the norm over all leaves together (torch's
  clip_grad_norm_ followed by SGD)."""
  lr = 0.1
  updates = sgd_update(train.make_optimizer("sgd", lr, clip_norm=clip_norm))
  g = flat_np(GRADS)
  norm = np.sqrt(sum(np.sum(x ** 2) for x in g))
  scale = min(1.0, clip_norm / norm)
  for u, x in zip(flat_np(updates), g):
    np.testing.assert_allclose(u, -lr * x * scale, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("clip_value", [0.25, 1.0, 100.0])
def test_clip_by_value_equals_direct_computation(clip_value):
  """update = -lr · clip(g, -v, v) entrywise (torch's clip_grad_value_)."""
  lr = 0.1
  updates = sgd_update(train.make_optimizer("sgd", lr, clip_value=clip_value))
  for u, x in zip(flat_np(updates), flat_np(GRADS)):
    np.testing.assert_allclose(u, -lr * np.clip(x, -clip_value, clip_value), rtol=1e-6)


def test_value_then_norm_when_both_are_given():
  v, c, lr = 1.0, 0.5, 1.0
  updates = sgd_update(train.make_optimizer("sgd", lr, clip_value=v, clip_norm=c))
  g = [np.clip(x, -v, v) for x in flat_np(GRADS)]
  norm = np.sqrt(sum(np.sum(x ** 2) for x in g))
  for u, x in zip(flat_np(updates), g):
    np.testing.assert_allclose(u, -lr * x * min(1.0, c / norm), rtol=1e-6, atol=1e-7)


def test_clipping_matches_optax_directly():
  direct = optax.chain(optax.clip(0.3), optax.clip_by_global_norm(0.7), optax.adam(1e-2))
  ours = train.make_optimizer("adam", 1e-2, clip_value=0.3, clip_norm=0.7)
  for u, d in zip(flat_np(sgd_update(ours)), flat_np(sgd_update(direct))):
    np.testing.assert_array_equal(u, d)


def test_clip_norm_with_frozen_leaves_measures_trainable_only():
  """Frozen leaves are outside the norm, like clip_grad_norm_ skipping
  requires_grad=False tensors, and get a zero update."""
  c, lr = 0.5, 1.0
  updates = sgd_update(train.make_optimizer("sgd", lr, clip_norm=c, frozen="layers/0"))
  trainable = [GRADS["layers"][1]["b"], GRADS["layers"][1]["W"], GRADS["layers01"]["W"]]
  norm = np.sqrt(sum(np.sum(np.asarray(x, np.float64) ** 2) for x in trainable))
  np.testing.assert_array_equal(updates["layers"][0]["W"], 0)
  np.testing.assert_array_equal(updates["layers"][0]["b"], 0)
  np.testing.assert_allclose(updates["layers"][1]["W"],
                             -lr * np.asarray(GRADS["layers"][1]["W"]) * c / norm, rtol=1e-6)
  np.testing.assert_allclose(updates["layers01"]["W"],
                             -lr * np.asarray(GRADS["layers01"]["W"]) * c / norm, rtol=1e-6)


@pytest.mark.parametrize("bad", [0.0, -1.0])
def test_bad_clip_values(bad):
  with pytest.raises(ValueError, match="clip_norm must be > 0"):
    train.clipping(clip_norm=bad)
  with pytest.raises(ValueError, match="clip_value must be > 0"):
    train.clipping(clip_value=bad)


# --- frozen specs --------------------------------------------------------------------

def test_frozen_mask_from_prefix_predicate_and_tree():
  by_prefix = train.frozen_mask(PARAMS, "layers/0")
  assert by_prefix == {"layers": [{"W": True, "b": True}, {"W": False, "b": False}],
                       "layers01": {"W": False}}  # whole components: not layers01
  assert train.frozen_mask(PARAMS, ["layers/0/W", "layers01"]) == {
      "layers": [{"W": True, "b": False}, {"W": False, "b": False}],
      "layers01": {"W": True}}
  by_pred = train.frozen_mask(PARAMS, lambda path: path.endswith("/b"))
  assert by_pred == {"layers": [{"W": False, "b": True}, {"W": False, "b": True}],
                     "layers01": {"W": False}}
  assert train.frozen_mask(PARAMS, by_pred) == by_pred
  assert train.frozen_mask(PARAMS, None) == jax.tree.map(lambda _: False, PARAMS)
  assert train.frozen_paths(PARAMS, "layers/1") == ["layers/1/W", "layers/1/b"]


def test_frozen_mask_errors_name_the_parameters():
  with pytest.raises(ValueError, match=r"'encoder' matches no parameter; the parameters "
                                       r"are layers/0/W, layers/0/b, "):
    train.frozen_mask(PARAMS, "encoder")
  with pytest.raises(ValueError, match="structure of the params"):
    train.frozen_mask(PARAMS, {"layers": [True, False]})


def test_partition_combine_round_trip():
  mask = train.frozen_mask(PARAMS, "layers/0")
  trainable, frozen = train.partition(PARAMS, mask)
  assert len(jax.tree.leaves(trainable)) == 3 and len(jax.tree.leaves(frozen)) == 2
  back = train.combine(trainable, frozen)
  assert jax.tree.structure(back) == jax.tree.structure(PARAMS)
  for a, b in zip(jax.tree.leaves(back), jax.tree.leaves(PARAMS)):
    assert a is b


def test_freeze_keeps_no_optimizer_state_for_frozen_leaves():
  tx = train.freeze(optax.adam(1e-3), "layers/0")
  state = tx.init(PARAMS)
  nodes = jax.tree.leaves(state, is_leaf=lambda x: isinstance(x, optax.MaskedNode))
  assert sum(isinstance(x, optax.MaskedNode) for x in nodes) == 4  # mu, nu of W and b
  assert train.freeze(optax.sgd(1.0), None) is not None


# --- named optimizers ----------------------------------------------------------------

@pytest.mark.parametrize("name,direct", [
    ("sgd", optax.sgd(0.1)),
    ("momentum", optax.sgd(0.1, momentum=0.9)),
    ("adam", optax.adam(0.1)),
    ("adamw", optax.adamw(0.1, weight_decay=1e-4)),
])
def test_named_optimizers_are_optax(name, direct):
  ours = train.make_optimizer(name, 0.1)
  s_ours, s_direct = ours.init(PARAMS), direct.init(PARAMS)
  for _ in range(3):
    u_ours, s_ours = ours.update(GRADS, s_ours, PARAMS)
    u_direct, s_direct = direct.update(GRADS, s_direct, PARAMS)
    for a, b in zip(flat_np(u_ours), flat_np(u_direct)):
      np.testing.assert_array_equal(a, b)


def test_bad_optimizer_arguments():
  with pytest.raises(ValueError, match="unknown optimizer 'lamb'; choose one of sgd, "
                                       "momentum, adam, adamw"):
    train.make_optimizer("lamb", 0.1)
  with pytest.raises(ValueError, match="learning rate must be > 0"):
    train.make_optimizer("sgd", 0.0)
  schedule = optax.linear_schedule(0.1, 0.0, 10)
  assert train.make_optimizer("sgd", schedule) is not None
