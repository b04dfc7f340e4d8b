"""The seed's two clipping functions with PyTorch's semantics, as pure functions.

``torch.nn.utils.clip_grad_norm_(parameters, max_norm, norm_type=2.0)`` and
``clip_grad_value_(parameters, clip_value)`` modify ``.grad`` in place; here they take
and return a gradient pytree and are jit-safe.  In an optax chain use
``optax.clip_by_global_norm`` and ``optax.clip``: ``clip_by_global_norm`` scales by
``max_norm / norm`` (no ``1e-6``) and only when ``norm > max_norm``, so the two agree
up to that epsilon.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from handgrad._src.train.trees import Array, PyTree, is_inexact, upcast

# PyTorch's clip_grad_norm_: clip_coef = max_norm / (total_norm + 1e-6).
EPS = 1e-6


def total_norm(grads: PyTree, norm_type: float = 2.0) -> Array:
  """The ``norm_type``-norm of all gradient elements together (PyTorch's total norm).

  It is the norm of the per-leaf norms, which equals the norm of the concatenation;
  ``norm_type=inf`` gives ``max |g|``.  Computed in at least float32; 0 for no leaves.
  """
  p = float(norm_type)
  if not (p > 0 or math.isinf(p)):
    raise ValueError(f"norm_type must be positive or inf, got {norm_type}")
  leaves = [upcast(jnp.asarray(g)) for g in jax.tree.leaves(grads) if is_inexact(g)]
  if not leaves:
    return jnp.zeros((), jnp.float32)
  if math.isinf(p):
    return jnp.max(jnp.stack([jnp.max(jnp.abs(g)) if g.size else jnp.zeros((), g.dtype)
                              for g in leaves]))
  per_leaf = jnp.stack([jnp.sum(jnp.abs(g) ** p) for g in leaves])
  return jnp.sum(per_leaf) ** (1.0 / p)


def clip_grad_norm(grads: PyTree, max_norm: float, norm_type: float = 2.0
                   ) -> tuple[PyTree, Array]:
  """``torch.nn.utils.clip_grad_norm_`` without the in-place update.

  ``total = ‖grads‖_p``; every leaf is multiplied by
  ``min(max_norm / (total + 1e-6), 1)``, so a gradient already within ``max_norm`` is
  unchanged and a larger one ends with norm just below ``max_norm``.  Like PyTorch
  (``error_if_nonfinite=False``), a NaN or inf total norm makes every leaf NaN (or 0):
  use :func:`handgrad.inspect.safe_optimizer` to skip such steps.

  Args:
    grads: a gradient pytree (float leaves; other leaves pass through).
    max_norm: the largest allowed total norm.
    norm_type: ``p`` of the p-norm (``2.0``; ``float("inf")`` for max |g|).

  Returns:
    ``(clipped grads, total norm before clipping)``; the norm is a float32 (or wider)
    scalar, as PyTorch returns it.
  """
  norm = total_norm(grads, norm_type)
  coef = jnp.minimum(max_norm / (norm + EPS), 1.0)

  def scale(g):
    return g * coef.astype(g.dtype) if is_inexact(g) else g

  return jax.tree.map(scale, grads), norm


def clip_grad_value(grads: PyTree, clip_value: float) -> PyTree:
  """``torch.nn.utils.clip_grad_value_``: every element clamped to ``[-v, v]``.

  NaN stays NaN (as with ``torch.clamp``); other leaves pass through.
  """
  if clip_value < 0:
    raise ValueError(f"clip_value must be non-negative, got {clip_value}")

  def clip(g):
    if not is_inexact(g):
      return g
    v = jnp.asarray(clip_value, g.dtype)
    return jnp.clip(g, -v, v)

  return jax.tree.map(clip, grads)
