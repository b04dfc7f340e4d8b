"""Minibatches over a :class:`Dataset`, shuffled with an explicit key.

One call of :func:`batches` is one epoch: every sample appears in exactly one batch,
except that ``remainder="drop"`` omits the samples of the last, partial batch.  The order
comes from ``jax.random.permutation(key, N)``, so the same key gives the same order; pass a
fresh key per epoch, e.g. ``jax.random.fold_in(key, epoch)``.

What happens to the last ``N % batch_size`` samples is chosen by ``remainder``:

* ``"drop"``: they are left out, every batch has ``batch_size`` rows (fixed shapes, one
  compilation of a jitted step);
* ``"pad"``: the last batch is filled up to ``batch_size`` rows by repeating its own
  samples (so padded labels stay valid class indices) and ``mask`` is 0 on those rows;
  weight the per-example loss by ``mask`` so that padding contributes nothing;
* ``"keep"``: the last batch is smaller.
"""

from __future__ import annotations

import operator
from typing import Iterator, NamedTuple

import jax
import numpy as np

from handgrad._src.data.mnist import Dataset

REMAINDERS = ("drop", "pad", "keep")


class Batch(NamedTuple):
  """One minibatch, as host numpy arrays.

  Attributes:
    x: ``[B, ...]`` features, e.g. float32 ``[B, 784]``.
    y: ``[B]`` integer labels.
    mask: float32 ``[B]``, 1 for a real sample and 0 for a padding row.
  """
  x: np.ndarray
  y: np.ndarray
  mask: np.ndarray


def _check_size(batch_size) -> int:
  if isinstance(batch_size, bool):
    raise TypeError(f"batch_size must be a positive int, got {batch_size!r}")
  try:
    size = operator.index(batch_size)
  except TypeError:
    raise TypeError(f"batch_size must be a positive int, got {batch_size!r}") from None
  if size < 1:
    raise ValueError(f"batch_size must be a positive int, got {size}")
  return size


def _check_remainder(remainder) -> str:
  if remainder not in REMAINDERS:
    raise ValueError(f"remainder must be one of {', '.join(map(repr, REMAINDERS))}, "
                     f"got {remainder!r}")
  return remainder


def num_batches(n: int, batch_size: int, remainder: str) -> int:
  """How many batches :func:`batches` yields for ``n`` samples: ``n // batch_size`` with
  ``remainder="drop"``, ``ceil(n / batch_size)`` with ``"pad"`` or ``"keep"``."""
  size, remainder = _check_size(batch_size), _check_remainder(remainder)
  n = operator.index(n)
  if n < 0:
    raise ValueError(f"the number of samples must be >= 0, got {n}")
  return n // size if remainder == "drop" else -(-n // size)


def batches(ds: Dataset, batch_size: int, *, key: jax.Array | None, shuffle: bool = True,
            remainder: str = "drop") -> Iterator[Batch]:
  """One epoch of minibatches of ``ds``.

  Args:
    ds: the dataset, ``x [N, ...]`` and ``y [N]``.
    batch_size: rows per batch, a positive int.
    key: a ``jax.random`` key; required when ``shuffle`` is true, ignored otherwise.
    shuffle: visit the samples in the order ``jax.random.permutation(key, N)``; if false,
      in their stored order.
    remainder: ``"drop"``, ``"pad"`` or ``"keep"``, what to do with the last partial batch
      (see the module docstring).

  Returns:
    An iterator over ``num_batches(len(ds), batch_size, remainder)`` :class:`Batch` objects;
    ``x`` and ``y`` are copies (``ds`` is never modified).  Arguments are checked when
    ``batches`` is called, not when iteration starts.
  """
  size, remainder = _check_size(batch_size), _check_remainder(remainder)
  n = len(ds)
  if shuffle:
    if key is None:
      raise ValueError("batches(shuffle=True) needs an explicit key, e.g. "
                       "key=jax.random.fold_in(jax.random.key(0), epoch); "
                       "or pass shuffle=False to keep the stored order")
    order = np.asarray(jax.random.permutation(key, n)) if n else np.zeros(0, np.intp)
  else:
    order = np.arange(n)
  return _iterate(ds, order, size, remainder)


def _iterate(ds: Dataset, order: np.ndarray, size: int, remainder: str) -> Iterator[Batch]:
  n = len(order)
  for start in range(0, num_batches(n, size, remainder) * size, size):
    rows = order[start:start + size]
    mask = np.ones(size, np.float32)
    if len(rows) < size:
      if remainder == "pad":
        # Cycle through the batch's own samples: the padding rows are real inputs with
        # valid labels, and mask = 0 makes them weigh nothing.
        mask[len(rows):] = 0
        rows = np.resize(rows, size)
      else:  # "keep"
        mask = mask[:len(rows)]
    yield Batch(ds.x[rows], ds.y[rows], mask)
