"""make_train_step(monitor=True, monitor_every=k) and fit(monitor=...): statistics on the
steps numbered k, 2k, ... only, chosen on the host between two compiled programs; the
parameters bit-identical to the plain step's on every step."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from handgrad import inspect as hgi
from handgrad import nn
from handgrad import train
from handgrad.data import Batch
from handgrad.data import Dataset

DIMS = [12, 16, 4]
LOSS = train.classification_loss(nn.mlp.apply)


def _state(tx):
  params = jax.jit(lambda k: nn.mlp.init(DIMS, key=k))(jax.random.key(0))
  return train.TrainState.create(params, tx, key=1)


def _batches(n, size=8):
  keys = jax.random.split(jax.random.key(2), n)
  return [Batch(jax.random.normal(k, (size, DIMS[0])),
                jax.random.randint(jax.random.fold_in(k, 1), (size,), 0, DIMS[-1]),
                jnp.ones(size, bool)) for k in keys]


def _bits(tree):
  return [np.asarray(x).tobytes() for x in jax.tree.leaves(tree)]


def test_monitored_and_plain_steps_give_the_plain_steps_bits():
  tx = train.make_optimizer("adam", 1e-2)
  plain = train.make_train_step(LOSS, tx)
  every_step = train.make_train_step(LOSS, tx, monitor=True)
  every_3 = train.make_train_step(LOSS, tx, monitor=True, monitor_every=3)
  states = {"plain": _state(tx), "every": _state(tx), "every 3": _state(tx)}
  steps = {"plain": plain, "every": every_step, "every 3": every_3}
  with_stats = {k: [] for k in steps}
  for n, batch in enumerate(_batches(7), start=1):
    metrics = {}
    for k, step in steps.items():
      states[k], metrics[k] = step(states[k], batch)
      if "grad_stats" in metrics[k]:
        with_stats[k].append(n)
    assert _bits(states["every"]) == _bits(states["plain"]), n
    assert _bits(states["every 3"]) == _bits(states["plain"]), n
    assert every_3.last_monitored == (n % 3 == 0)
    for name in ("loss", "grad_norm", "skipped"):
      assert float(metrics["every 3"][name]) == float(metrics["plain"][name])
    if n % 3 == 0:  # the same statistics as the every-step monitor's
      got, want = jax.device_get((metrics["every 3"]["grad_stats"],
                                  metrics["every"]["grad_stats"]))
      assert _bits(got) == _bits(want)
  assert with_stats == {"plain": [], "every": list(range(1, 8)), "every 3": [3, 6]}


def test_the_unmonitored_steps_run_the_plain_program():
  tx = train.make_optimizer("sgd", 0.1)
  state, batch = _state(tx), _batches(1)[0]
  step = train.make_train_step(LOSS, tx, monitor=True, monitor_every=10)
  reference = train.make_train_step(LOSS, tx)
  text = lambda f: f.lower(state, batch).as_text()  # noqa: E731
  assert text(step.plain) == text(reference)
  assert text(step.monitored) == text(train.make_train_step(LOSS, tx, monitor=True))


def test_the_step_number_follows_the_state_passed_in():
  tx = train.make_optimizer("sgd", 0.1)
  step = train.make_train_step(LOSS, tx, monitor=True, monitor_every=4, donate=False)
  batch = _batches(1)[0]
  state = _state(tx)
  seen = []
  for _ in range(3):  # steps 1, 2, 3
    state, m = step(state, batch)
    seen.append("grad_stats" in m)
  assert seen == [False, False, False]
  # A resumed (or otherwise replaced) state: its count is read from the device.
  resumed = state._replace(step=jnp.asarray(6, state.step.dtype))
  _, m = step(resumed, batch)  # step 7
  assert "grad_stats" not in m
  _, m = step(state, batch)  # step 4 again, from the earlier state
  assert "grad_stats" in m
  new, m = step(resumed._replace(step=jnp.asarray(7, state.step.dtype)), batch)  # step 8
  assert "grad_stats" in m and int(new.step) == 8


def test_a_traced_step_count_chooses_with_lax_cond():
  tx = train.make_optimizer("sgd", 0.1)
  step = train.make_train_step(LOSS, tx, monitor=True, monitor_every=2, jit=False)
  reference = train.make_train_step(LOSS, tx, jit=False)
  batch = _batches(1)[0]

  def run(step_fn):
    def body(state, _):
      state, m = step_fn(state, batch)
      return state, m
    return jax.jit(lambda s: jax.lax.scan(body, s, length=4))(_state(tx))

  state, metrics = run(step)
  ref_state, _ = run(reference)
  assert _bits(state.params) == _bits(ref_state.params)
  _, every = run(train.make_train_step(LOSS, tx, monitor=True, jit=False))
  for got, want in zip(jax.tree.leaves(metrics["grad_stats"]),
                       jax.tree.leaves(every["grad_stats"])):
    got, want = np.asarray(got), np.asarray(want)
    assert np.isnan(got[[0, 2]]).all()  # steps 1 and 3: not monitored
    # Sums of the same terms in another order: a few ulps of the norm apart.
    np.testing.assert_allclose(got[[1, 3]], want[[1, 3]], rtol=1e-5, atol=1e-7)


def test_fit_logs_exactly_the_monitored_steps():
  tx = train.make_optimizer("adam", 1e-2)
  rng = np.random.default_rng(0)
  ds = Dataset(rng.normal(size=(80, DIMS[0])).astype(np.float32),
               rng.integers(0, DIMS[-1], 80).astype(np.int32), DIMS[-1], "toy")
  kwargs = dict(epochs=2, batch_size=8, data_key=jax.random.key(3), progress=False,
                plot=False, handle_signals=False)
  monitor = hgi.GradientMonitor()
  step = train.make_train_step(LOSS, tx, monitor=True, monitor_every=3)
  result = train.fit(step, _state(tx), ds, monitor=monitor, **kwargs)
  assert monitor.steps == [3, 6, 9, 12, 15, 18]
  plain = train.fit(train.make_train_step(LOSS, tx), _state(tx), ds, **kwargs)
  assert _bits(result.state) == _bits(plain.state)
  assert result.step_losses.tobytes() == plain.step_losses.tobytes()
  every = hgi.GradientMonitor()
  train.fit(train.make_train_step(LOSS, tx, monitor=True), _state(tx), ds, monitor=every,
            **kwargs)
  assert every.steps == list(range(1, 21))
  for n, stats in zip(monitor.steps, monitor.history):
    assert stats == every.history[n - 1]


def test_monitor_every_arguments():
  tx = train.make_optimizer("sgd", 0.1)
  with pytest.raises(ValueError, match="monitor_every=3 needs monitor=True"):
    train.make_train_step(LOSS, tx, monitor_every=3)
  with pytest.raises(ValueError, match="monitor_every must be a positive int, got 0"):
    train.make_train_step(LOSS, tx, monitor=True, monitor_every=0)
