"""Minibatching: every sample once per epoch, explicit keys, drop / pad / keep."""

import jax
import numpy as np
import pytest
from hypothesis import given
from hypothesis import settings
from hypothesis import strategies as st

from handgrad.data import Batch
from handgrad.data import Dataset
from handgrad.data import batches
from handgrad.data import load_embedded_mnist
from handgrad.data import num_batches

KEY = jax.random.key(0)


def indexed(n: int) -> Dataset:
  """A dataset whose row i is ``x = [i, -i]``, ``y = i % 10``: batches show row ids."""
  ids = np.arange(n)
  return Dataset(np.stack([ids, -ids], 1).astype(np.float32), (ids % 10).astype(np.int32))


def ids_of(batch: Batch) -> np.ndarray:
  return batch.x[:, 0].astype(int)


def check_epoch(n, batch_size, remainder, key, shuffle=True):
  """Runs one epoch and checks the 'never loses or repeats a sample' contract."""
  ds = indexed(n)
  out = list(batches(ds, batch_size, key=key, shuffle=shuffle, remainder=remainder))
  assert len(out) == num_batches(n, batch_size, remainder)
  seen = []
  for i, b in enumerate(out):
    last = i == len(out) - 1
    rows = len(b.y)
    if remainder == "keep" and last:
      assert 1 <= rows <= batch_size
    else:
      assert rows == batch_size
    assert b.x.shape == (rows, 2) and b.y.shape == (rows,) and b.mask.shape == (rows,)
    assert b.mask.dtype == np.float32 and set(np.unique(b.mask)) <= {0.0, 1.0}
    # x and y travel together; labels stay valid, padding included.
    np.testing.assert_array_equal(b.y, ids_of(b) % 10)
    np.testing.assert_array_equal(b.x[:, 1], -b.x[:, 0])
    real = ids_of(b)[b.mask == 1]
    if remainder == "pad" and last:
      # Real rows first, then padding that repeats this batch's own samples.
      k = len(real)
      np.testing.assert_array_equal(b.mask, [1.0] * k + [0.0] * (rows - k))
      assert set(ids_of(b)[k:]) <= set(real)
    else:
      assert b.mask.all()
    seen.extend(real.tolist())
  assert len(seen) == len(set(seen))  # nothing repeated
  if remainder == "drop":
    assert len(seen) == n - n % batch_size
  else:
    assert sorted(seen) == list(range(n))  # nothing lost
  return out, seen


# -------------------------------------------------------------------------------------
# Shapes, counts and masks.


@pytest.mark.parametrize("remainder, expected", [
    ("drop", [4, 4]), ("pad", [4, 4, 4]), ("keep", [4, 4, 2])])
def test_batch_sizes(remainder, expected):
  out, _ = check_epoch(10, 4, remainder, KEY)
  assert [len(b.y) for b in out] == expected
  masks = [b.mask.sum() for b in out]
  assert masks == {"drop": [4, 4], "pad": [4, 4, 2], "keep": [4, 4, 2]}[remainder]


def test_pad_mask_and_padding_rows():
  out = list(batches(indexed(10), 4, key=None, shuffle=False, remainder="pad"))
  last = out[-1]
  np.testing.assert_array_equal(ids_of(last), [8, 9, 8, 9])
  np.testing.assert_array_equal(last.y, [8, 9, 8, 9])
  np.testing.assert_array_equal(last.mask, [1, 1, 0, 0])
  assert isinstance(last, Batch) and last.x.dtype == np.float32


def test_padding_cycles_through_the_last_batch():
  out = list(batches(indexed(7), 5, key=None, shuffle=False, remainder="pad"))
  np.testing.assert_array_equal(ids_of(out[-1]), [5, 6, 5, 6, 5])


@pytest.mark.parametrize("remainder, expected", [("drop", []), ("pad", [4]), ("keep", [3])])
def test_fewer_samples_than_one_batch(remainder, expected):
  out, _ = check_epoch(3, 4, remainder, KEY)
  assert [len(b.y) for b in out] == expected


@pytest.mark.parametrize("remainder", ["drop", "pad", "keep"])
def test_empty_dataset(remainder):
  assert list(batches(indexed(0), 4, key=KEY, remainder=remainder)) == []


@pytest.mark.parametrize("remainder", ["drop", "pad", "keep"])
def test_exact_multiple_has_no_partial_batch(remainder):
  out, _ = check_epoch(12, 4, remainder, KEY)
  assert len(out) == 3 and all(b.mask.all() for b in out)


def test_num_batches():
  assert num_batches(10, 4, "drop") == 2
  assert num_batches(10, 4, "pad") == 3
  assert num_batches(10, 4, "keep") == 3
  assert num_batches(12, 4, "keep") == 3
  assert num_batches(0, 4, "pad") == 0
  assert num_batches(3, 4, "drop") == 0
  assert num_batches(np.int64(60000), np.int32(128), "drop") == 468
  with pytest.raises(ValueError, match="must be >= 0"):
    num_batches(-1, 4, "drop")


# -------------------------------------------------------------------------------------
# Order.


def test_same_key_same_order():
  a = [ids_of(b) for b in batches(indexed(50), 8, key=jax.random.key(3), remainder="keep")]
  b = [ids_of(b) for b in batches(indexed(50), 8, key=jax.random.key(3), remainder="keep")]
  np.testing.assert_array_equal(np.concatenate(a), np.concatenate(b))


def test_order_is_jax_random_permutation():
  key = jax.random.key(7)
  order = np.concatenate([ids_of(b) for b in batches(indexed(50), 10, key=key)])
  np.testing.assert_array_equal(order, np.asarray(jax.random.permutation(key, 50)))


def test_different_keys_different_orders():
  orders = {
      tuple(np.concatenate([ids_of(b) for b in batches(indexed(50), 10, key=jax.random.key(s))]))
      for s in range(5)}
  assert len(orders) == 5
  assert tuple(range(50)) not in orders  # shuffled


def test_fold_in_epoch_keys():
  key = jax.random.key(0)
  epochs = [np.concatenate([ids_of(b) for b in batches(indexed(50), 10,
                                                       key=jax.random.fold_in(key, e))])
            for e in range(2)]
  assert not np.array_equal(epochs[0], epochs[1])
  assert sorted(epochs[0]) == sorted(epochs[1]) == list(range(50))


def test_legacy_uint32_key():
  key = jax.random.PRNGKey(1)
  order = np.concatenate([ids_of(b) for b in batches(indexed(20), 5, key=key)])
  np.testing.assert_array_equal(order, np.asarray(jax.random.permutation(key, 20)))


@pytest.mark.parametrize("key", [None, KEY])
def test_no_shuffle_keeps_order(key):
  out = list(batches(indexed(10), 3, key=key, shuffle=False, remainder="keep"))
  np.testing.assert_array_equal(np.concatenate([ids_of(b) for b in out]), np.arange(10))


def test_batches_are_copies():
  ds = indexed(8)
  b = next(batches(ds, 4, key=None, shuffle=False))
  assert not np.shares_memory(b.x, ds.x) and not np.shares_memory(b.y, ds.y)


# -------------------------------------------------------------------------------------
# Errors, raised when batches() is called rather than on the first next().


@pytest.mark.parametrize("size", [0, -3])
def test_non_positive_batch_size(size):
  with pytest.raises(ValueError, match=f"batch_size must be a positive int, got {size}"):
    batches(indexed(4), size, key=KEY)
  with pytest.raises(ValueError, match="batch_size must be a positive int"):
    num_batches(4, size, "drop")


@pytest.mark.parametrize("size", [2.0, "4", True, None])
def test_non_int_batch_size(size):
  with pytest.raises(TypeError, match="batch_size must be a positive int"):
    batches(indexed(4), size, key=KEY)


def test_bad_remainder():
  with pytest.raises(ValueError, match="remainder must be one of 'drop', 'pad', 'keep', "
                                       "got 'last'"):
    batches(indexed(4), 2, key=KEY, remainder="last")
  with pytest.raises(ValueError, match="remainder must be one of"):
    num_batches(4, 2, "Drop")


def test_shuffle_needs_a_key():
  with pytest.raises(ValueError, match=r"batches\(shuffle=True\) needs an explicit key"):
    batches(indexed(4), 2, key=None)


def test_key_is_keyword_only():
  with pytest.raises(TypeError):
    batches(indexed(4), 2, KEY)  # noqa


# -------------------------------------------------------------------------------------
# Property: one epoch never loses or repeats a sample.

# A handful of sizes: each new size compiles jax.random.permutation once (~0.3 s).
SIZES = [0, 1, 2, 7, 16, 33, 64, 101]


@settings(max_examples=150, deadline=None)
@given(n=st.sampled_from(SIZES), batch_size=st.integers(1, 110),
       remainder=st.sampled_from(["drop", "pad", "keep"]), seed=st.integers(0, 2**31 - 1),
       shuffle=st.booleans())
def test_epoch_never_loses_or_repeats(n, batch_size, remainder, seed, shuffle):
  key = jax.random.key(seed) if shuffle else None
  _, seen = check_epoch(n, batch_size, remainder, key, shuffle=shuffle)
  if not shuffle:
    assert seen == list(range(len(seen)))


# -------------------------------------------------------------------------------------
# On the real data.


def test_epoch_over_embedded_mnist():
  train, _ = load_embedded_mnist()
  out = list(batches(train, 128, key=jax.random.key(0), remainder="pad"))
  assert len(out) == 32  # ceil(4000 / 128)
  assert all(b.x.shape == (128, 784) and b.x.dtype == np.float32 for b in out)
  assert all(b.y.dtype == np.int32 for b in out)
  assert sum(b.mask.sum() for b in out) == 4000
  assert out[-1].mask.sum() == 4000 - 31 * 128
  rows = {r.tobytes() for b in out for r in b.x[b.mask == 1]}
  assert len(rows) == 4000
