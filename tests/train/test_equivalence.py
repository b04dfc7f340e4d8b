"""100 training steps on MNIST: hand-written gradients and jax.grad give the same run.

Both backends run the same jitted step (same data order, same optimizer code); only
the backward pass differs.  Tolerances: rtol 1e-5 / atol 1e-5 on the per-step losses
and the final parameters.  One step's gradients agree to a few float32 ulps (the two
backward passes may sum the same products in different orders; the design's per-rule
tolerance is 1e-5); over 100 SGD steps on this problem those differences stay near
1e-7 (measured: max |Δloss|/loss ≈ 3e-7, max |Δparam| ≈ 2e-7), so the tolerance
leaves two orders of magnitude of headroom while any wrong rule (a missing 1/B, a
transposed dW, relu'(0) = 1) moves the loss by 1e-3 or more within a few steps.
"""

import functools

import jax
import numpy as np
import optax
import pytest

from handgrad import nn
from handgrad import train
from handgrad.data import batches
from handgrad.data import load_mnist

STEPS = 100
BATCH = 32
RTOL = ATOL = 1e-5

OPTIMIZERS = {
    # the seed's update, W -= lr·dW
    "sgd": (lambda: optax.sgd(0.1), 1),
    # momentum with clipping and 2-way accumulation: every piece of the step in play
    "momentum-clip-accumulate": (
        lambda: train.make_optimizer("momentum", 0.05, clip_norm=1.0), 2),
}


# Not a backend comparison: jax gradients scaled by 1.001, to show what the tolerance
# can see.
OFF_BY_A_BIT = (lambda: optax.chain(optax.scale(1.001), optax.sgd(0.1)), 1)


@functools.lru_cache(maxsize=None)
def run(backend: str, optimizer: str):
  """STEPS steps of a [784, 64, 10] MLP: (per-step losses, final state) on the host."""
  make_tx, accumulate = OPTIMIZERS.get(optimizer, OFF_BY_A_BIT)
  tx = make_tx()
  train_ds, _ = load_mnist()
  params = jax.jit(lambda k: nn.mlp.init([784, 64, 10], key=k))(jax.random.key(0))
  state = train.TrainState.create(params, tx, key=1)
  step = train.make_train_step(train.classification_loss(nn.mlp.apply), tx,
                               backend=backend, accumulate=accumulate)
  losses, epoch = [], 0
  while len(losses) < STEPS:
    for batch in batches(train_ds, BATCH, key=jax.random.fold_in(jax.random.key(2), epoch)):
      state, metrics = step(state, batch)
      losses.append(metrics["loss"])
      if len(losses) == STEPS:
        break
    epoch += 1
  return np.asarray(jax.device_get(losses)), jax.device_get(state)


@pytest.mark.parametrize("optimizer", sorted(OPTIMIZERS))
def test_hand_and_jax_backends_train_the_same(optimizer):
  hand_losses, hand = run("hand", optimizer)
  jax_losses, ref = run("jax", optimizer)
  assert int(hand.step) == int(ref.step) == STEPS
  # the run really trains: the loss falls from ~2.3 (log 10)
  assert jax_losses[0] > 2.0 and jax_losses[-10:].mean() < 0.8 * jax_losses[:10].mean()
  np.testing.assert_allclose(hand_losses, jax_losses, rtol=RTOL, atol=ATOL,
                             err_msg="per-step losses, hand vs jax")
  for (path, a), (_, b) in zip(nn.param_paths(hand.params), nn.param_paths(ref.params)):
    np.testing.assert_allclose(a, b, rtol=RTOL, atol=ATOL, err_msg=f"final {path}")
  for a, b in zip(jax.tree.leaves(hand.opt_state), jax.tree.leaves(ref.opt_state)):
    np.testing.assert_allclose(a, b, rtol=RTOL, atol=ATOL, err_msg="optimizer state")
  np.testing.assert_array_equal(hand.key, ref.key)


def test_a_wrong_gradient_would_be_caught():
  """The tolerance is tight enough to see a small gradient error: gradients off by
  0.1% break it within 100 steps."""
  _, hand = run("hand", "sgd")
  _, off_by_a_bit = run("jax", "off-by-a-bit")
  worst = max(float(np.max(np.abs(a - b))) for a, b in
              zip(jax.tree.leaves(hand.params), jax.tree.leaves(off_by_a_bit.params)))
  assert worst > 10 * ATOL
