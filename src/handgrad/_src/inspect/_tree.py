"""Helpers shared by the inspection tools: named leaves and norms computed in float32."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import optax

from handgrad._src.nn.base import param_paths

Array = jax.Array
PyTree = Any


def is_inexact(x) -> bool:
  dtype = getattr(x, "dtype", None)
  return dtype is not None and jnp.issubdtype(dtype, jnp.inexact)


def named_leaves(tree: PyTree) -> list[tuple[str, Array]]:
  """The floating-point leaves of ``tree`` with their paths (``"layers/0/W"``).

  Paths are :func:`handgrad.nn.param_paths`'s, so the names printed here are the names
  of the parameters.  Integer, boolean and ``float0`` leaves carry no gradient and are
  left out.
  """
  return [(p, x) for p, x in param_paths(tree) if is_inexact(x)]


def upcast(x: Array) -> Array:
  """``x`` in at least float32: sums of squares of bfloat16/float16 values overflow."""
  return x.astype(jnp.promote_types(x.dtype, jnp.float32))


def sq_norm(x: Array) -> Array:
  """Σ x², in at least float32."""
  x = upcast(jnp.asarray(x))
  return jnp.sum(jnp.real(x * jnp.conj(x)))


def l2_norm(xs) -> Array:
  """The L2 norm of a list of arrays taken together, a float32 scalar (0 for none).

  ``optax.tree.norm`` of the arrays, each first upcast to at least float32: optax sums
  the squares in the leaves' own dtype, where float16 overflows past 65504 (a norm of
  256) and bfloat16 keeps 8 bits of mantissa.
  """
  xs = [upcast(jnp.asarray(x)) for x in xs if x is not None]
  if not xs:
    return jnp.zeros((), jnp.float32)
  return optax.tree.norm(xs)


def path_key(path: str) -> tuple:
  """Sort key putting paths in parameter order: ``"layers/2/W"`` before ``"layers/10/W"``.

  ``jax.jit`` returns a dict with its keys sorted as strings; sorting by this key
  restores the order of :func:`named_leaves` for trees of dicts and lists.
  """
  return tuple((0, int(c), "") if c.isdigit() else (1, 0, c) for c in path.split("/"))


def in_path_order(d: dict) -> dict:
  """``d`` with its (path) keys in parameter order."""
  return {k: d[k] for k in sorted(d, key=path_key)}
