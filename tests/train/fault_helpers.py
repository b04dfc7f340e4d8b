"""A tiny training run shared by the fault-injection tests (and their subprocesses).

96 training digits in batches of 16 (6 steps per epoch), a [784, 8, 10] MLP, Adam; every
compiled step is built once per process.  ``POISON`` marks an input (a finite value the
host check accepts) on which :func:`poisoned_loss` returns NaN: a way to make a step's
loss and gradient non-finite on purpose.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from handgrad import nn
from handgrad import train
from handgrad.data import Dataset
from handgrad.data import load_mnist

N_TRAIN, N_TEST, BATCH, DIMS = 96, 40, 16, (784, 8, 10)
STEPS_PER_EPOCH = N_TRAIN // BATCH
POISON = 2.0  # x[:, 0] above 1.5 makes poisoned_loss NaN

_LOSS = train.classification_loss(nn.mlp.apply)


def poisoned_loss(params, batch, key):
  loss, aux = _LOSS(params, batch, key)
  factor = jnp.where(jnp.max(batch.x[:, 0]) > 1.5, jnp.nan, 1.0)
  return loss * factor, aux


@functools.lru_cache(maxsize=None)
def data(poison_rows: tuple[int, ...] = ()):
  train_full, test_full = load_mnist()
  x = np.array(train_full.x[:N_TRAIN])
  x[list(poison_rows), 0] = POISON
  return (Dataset(x, train_full.y[:N_TRAIN], name="faults"),
          Dataset(test_full.x[:N_TEST], test_full.y[:N_TEST], name="faults-test"))


@functools.lru_cache(maxsize=None)
def pieces(poisoned: bool = False, dims: tuple[int, ...] = DIMS):
  tx = train.make_optimizer("adam", 1e-2)
  loss = poisoned_loss if poisoned else train.classification_loss(nn.mlp.apply)
  step = train.make_train_step(loss, tx)
  eval_step = train.make_eval_step(train.classification_eval(nn.mlp.apply))
  return tx, step, eval_step


_init = jax.jit(lambda k, dims=DIMS: nn.mlp.init(list(dims), key=k), static_argnums=1)


def fresh_state(poisoned: bool = False, dims: tuple[int, ...] = DIMS):
  tx, _, _ = pieces(poisoned, dims)
  return train.TrainState.create(_init(jax.random.key(0), dims), tx, key=1)


def run(out_dir, epochs=3, *, poisoned=False, poison_rows=(), eval_step=None,
        on_step=None, notes=None, dims=DIMS, **kw):
  """One ``fit`` of the tiny run; notices go to ``notes`` (a list) when given."""
  tx, step, default_eval = pieces(poisoned, dims)
  train_ds, test_ds = data(tuple(poison_rows))
  log = notes.append if notes is not None else (lambda msg: None)
  return train.fit(step, fresh_state(poisoned, dims), train_ds, epochs=epochs,
                   batch_size=BATCH, data_key=jax.random.key(5),
                   eval_step=eval_step or default_eval, eval_ds=test_ds,
                   out_dir=out_dir, progress=False, plot=False, config={"run": "faults"},
                   on_step=on_step, log=log, **kw)


def records_without_time(path):
  return [{k: v for k, v in r.items() if k != "time"} for r in train.read_metrics(path)]


def assert_states_equal(a, b):
  la, ta = jax.tree.flatten(jax.device_get(a))
  lb, tb = jax.tree.flatten(jax.device_get(b))
  assert ta == tb
  for x, y in zip(la, lb):
    assert np.asarray(x).dtype == np.asarray(y).dtype
    np.testing.assert_array_equal(x, y)
