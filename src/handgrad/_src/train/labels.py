"""Host-side label checks, run before a batch reaches a jitted step.

Inside a jitted step a bad label cannot raise: ``optax.softmax_cross_entropy_with_integer_
labels`` turns a label >= the class count into a NaN loss with a finite, wrong gradient,
and silently reads label -1 as the last class; ``handgrad.ops.softmax_cross_entropy``
gives NaN.  Checking the labels in numpy on the host costs a ``min`` and a ``max`` per
batch and turns either into a clear error.
"""

from __future__ import annotations

import numpy as np


def check_labels(labels, num_classes: int, *, where: str = "") -> None:
  """Raises ``ValueError`` unless every label is an integer in ``[0, num_classes)``.

  Args:
    labels: int ``[B…]`` labels, a numpy array or anything ``np.asarray`` accepts
      (a jax array is copied to the host).
    num_classes: the number of classes C.
    where: names the batch in the message, e.g. ``"epoch 2, batch 17"``.

  Raises:
    ValueError: naming ``where``, the offending values (up to five, with their
      positions) and the valid range, e.g. ``epoch 1, batch 3: labels must lie in
      [0, 10), found 12 at index 5, -1 at index 9``.
  """
  y = np.asarray(labels)
  prefix = f"{where}: " if where else ""
  if not (np.issubdtype(y.dtype, np.integer) or y.dtype == np.bool_):
    raise ValueError(f"{prefix}labels must be integers in [0, {num_classes}), got dtype "
                     f"{y.dtype}")
  if y.size == 0 or (y.min() >= 0 and y.max() < num_classes):
    return
  bad = np.flatnonzero((y.ravel() < 0) | (y.ravel() >= num_classes))
  flat = y.ravel()

  def position(i):
    return i if y.ndim <= 1 else tuple(int(j) for j in np.unravel_index(i, y.shape))

  shown = ", ".join(f"{int(flat[i])} at index {position(int(i))}" for i in bad[:5])
  more = f" and {len(bad) - 5} more" if len(bad) > 5 else ""
  raise ValueError(f"{prefix}labels must lie in [0, {num_classes}), found {shown}{more}")
