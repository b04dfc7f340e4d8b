"""Optimizer-side pieces: frozen parameters, gradient clipping, named optimizers.

Everything here is an optax ``GradientTransformation`` or builds one from optax's own
transforms:

* clipping by value is ``optax.clip(max_delta)`` (PyTorch's ``clip_grad_value_``) and by
  global norm ``optax.clip_by_global_norm(max_norm)`` (``clip_grad_norm_``); both run on
  the (accumulated) gradient before the optimizer, as in the seed's
  ``loss.backward(); clip_grad_norm_(...); optimizer.step()``;
* freezing (the seed's ``param.requires_grad = False``) is ``optax.multi_transform``
  with ``optax.set_to_zero()`` for the frozen leaves: they get a zero update and the
  inner optimizer keeps no state for them (``optax.MaskedNode``), so the global norm
  that clipping sees covers the trainable leaves only.

Freezing is described by a *frozen spec* (:mod:`handgrad._src.frozen`), resolved
against a params pytree by :func:`frozen_mask`.
"""

from __future__ import annotations

from typing import Any

import jax
import optax

from handgrad._src.frozen import FrozenSpec
from handgrad._src.frozen import frozen_mask
from handgrad._src.frozen import frozen_paths

Params = Any

OPTIMIZERS = ("sgd", "momentum", "adam", "adamw")


# --- frozen parameters ---------------------------------------------------------------
# Frozen specs are resolved in handgrad._src.frozen (the inspection tools read them too,
# and sit below the training code).

def partition(params: Params, mask: Any) -> tuple[Any, Any]:
  """Splits ``params`` by a bool ``mask``: ``(trainable, frozen)``.

  Both have the structure of ``params`` with ``None`` in place of the other part's
  leaves (``None`` is an empty pytree, so ``jax.tree`` functions skip it).
  """
  trainable = jax.tree.map(lambda p, m: None if m else p, params, mask)
  frozen = jax.tree.map(lambda p, m: p if m else None, params, mask)
  return trainable, frozen


def combine(trainable: Any, frozen: Any) -> Params:
  """Inverse of :func:`partition`: each leaf from whichever part is not ``None``."""
  return jax.tree.map(lambda a, b: b if a is None else a, trainable, frozen,
                      is_leaf=lambda x: x is None)


def freeze(inner: optax.GradientTransformation,
           frozen: FrozenSpec) -> optax.GradientTransformation:
  """``inner`` for the trainable leaves, a zero update for the frozen ones.

  ``optax.multi_transform({"trainable": inner, "frozen": optax.set_to_zero()}, labels)``
  where the labels come from :func:`frozen_mask` at ``init`` time: ``inner`` sees only
  the trainable leaves (its state holds ``optax.MaskedNode`` for the frozen ones), so
  clipping by global norm inside ``inner`` measures the trainable gradient only, like
  ``clip_grad_norm_(model.parameters())`` skipping ``requires_grad=False`` tensors.
  """
  if frozen is None:
    return inner

  def labels(params):
    mask = frozen_mask(params, frozen)
    return jax.tree.map(lambda m: "frozen" if m else "trainable", mask)

  return optax.multi_transform({"trainable": inner, "frozen": optax.set_to_zero()},
                               labels)


# --- gradient clipping ---------------------------------------------------------------

def clipping(clip_norm: float | None = None,
             clip_value: float | None = None) -> optax.GradientTransformation:
  """Gradient clipping: by value (``optax.clip``), then by global norm
  (``optax.clip_by_global_norm``); ``None`` skips that clip.

  Clipping by value maps every gradient entry ``g`` to ``clip(g, -v, v)``.  Clipping by
  global norm scales the whole gradient by ``min(1, c / ‖g‖₂)``, ``‖g‖₂`` being the
  norm of all leaves together.
  """
  parts = []
  if clip_value is not None:
    if not clip_value > 0:
      raise ValueError(f"clip_value must be > 0, got {clip_value}")
    parts.append(optax.clip(float(clip_value)))
  if clip_norm is not None:
    if not clip_norm > 0:
      raise ValueError(f"clip_norm must be > 0, got {clip_norm}")
    parts.append(optax.clip_by_global_norm(float(clip_norm)))
  return optax.chain(*parts) if parts else optax.identity()


# --- named optimizers ----------------------------------------------------------------

def make_optimizer(name: str, learning_rate: float | optax.Schedule, *,
                   clip_norm: float | None = None, clip_value: float | None = None,
                   frozen: FrozenSpec = None, momentum: float = 0.9,
                   weight_decay: float = 1e-4) -> optax.GradientTransformation:
  """A named optax optimizer with clipping in front and frozen leaves masked out.

  ``freeze(chain(clipping(clip_norm, clip_value), opt), frozen)`` where ``opt`` is

  * ``"sgd"``: ``optax.sgd(lr)``, the seed's ``W -= lr · dW``;
  * ``"momentum"``: ``optax.sgd(lr, momentum)`` (heavy ball, PyTorch's convention);
  * ``"adam"``: ``optax.adam(lr)``;
  * ``"adamw"``: ``optax.adamw(lr, weight_decay=weight_decay)``.

  Raises:
    ValueError: an unknown name or a learning rate that is not > 0.
  """
  if name not in OPTIMIZERS:
    raise ValueError(f"unknown optimizer {name!r}; choose one of {', '.join(OPTIMIZERS)}")
  if not callable(learning_rate) and not learning_rate > 0:
    raise ValueError(f"the learning rate must be > 0, got {learning_rate}")
  if name == "sgd":
    opt = optax.sgd(learning_rate)
  elif name == "momentum":
    opt = optax.sgd(learning_rate, momentum=momentum)
  elif name == "adam":
    opt = optax.adam(learning_rate)
  else:
    opt = optax.adamw(learning_rate, weight_decay=weight_decay)
  return freeze(optax.chain(clipping(clip_norm, clip_value), opt), frozen)

