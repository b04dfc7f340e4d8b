"""Pytree helpers of the training code: float leaves, norms in float32, finiteness.

``global_norm`` is ``optax.tree.norm`` over the leaves upcast to at least float32 (the
sum of squares of bfloat16/float16 gradients overflows in their own dtype).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import optax

Array = jax.Array
PyTree = Any


def is_inexact(x) -> bool:
  """Whether ``x`` has a floating (or complex) dtype, i.e. can carry a gradient."""
  dtype = getattr(x, "dtype", None)
  return dtype is not None and jnp.issubdtype(dtype, jnp.inexact)


def upcast(x: Array) -> Array:
  """``x`` in at least float32."""
  x = jnp.asarray(x)
  return x.astype(jnp.promote_types(x.dtype, jnp.float32))


def global_norm(tree: PyTree) -> Array:
  """``sqrt(Σ_leaves Σ |x|²)`` over the float leaves, a float32 (or wider) ``[]``; 0 for
  no leaves.  The norm ``optax.clip_by_global_norm`` compares against."""
  leaves = [upcast(x) for x in jax.tree.leaves(tree) if is_inexact(x)]
  if not leaves:
    return jnp.zeros((), jnp.float32)
  return optax.tree.norm(leaves)


def all_finite(tree: PyTree) -> Array:
  """True when every floating leaf of ``tree`` is finite (a jit-safe bool ``[]``)."""
  leaves = [jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree) if is_inexact(x)]
  return jnp.stack(leaves).all() if leaves else jnp.asarray(True)


def select_tree(pred: Array, on_true: PyTree, on_false: PyTree) -> PyTree:
  """Leafwise ``lax.select(pred, a, b)``: bit-exact copies of either side."""
  return jax.tree.map(lambda a, b: jax.lax.select(pred, a, b), on_true, on_false)
