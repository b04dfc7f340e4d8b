"""Helpers shared by the handgrad.nn tests."""

import chex
import jax
import jax.numpy as jnp
import numpy as np

import handgrad as hg

F64, F32 = jnp.float64, jnp.float32
TOL = {F64: 1e-7, F32: 1e-5}


def assert_hand_grad_matches(loss, args, argnums, dtype):
  """handgrad.grad equals jax.grad at the DESIGN tolerance; one jitted program."""
  both = jax.jit(lambda *a: (hg.grad(loss, argnums=argnums)(*a),
                             jax.grad(loss, argnums=argnums)(*a)))
  got, want = both(*args)
  chex.assert_trees_all_equal_shapes_and_dtypes(got, want)
  chex.assert_trees_all_close(got, want, rtol=TOL[dtype], atol=TOL[dtype])
  return got


def normal(seed, shape, dtype=F32):
  """Test data from numpy: no XLA compilation per shape."""
  return jnp.asarray(np.random.default_rng(seed).standard_normal(shape), dtype)


def agree(got, want, tol):
  """Same shapes and dtypes leaf by leaf, and values within ``tol`` (relative and absolute)."""
  chex.assert_trees_all_equal_shapes_and_dtypes(got, want)
  chex.assert_trees_all_close(got, want, rtol=tol, atol=tol)
