"""Under jax_debug_nans, handgrad.grad raises the FloatingPointError jax.grad raises (not
JAX's internal InternalFloatingPointError from an eagerly bound jit)."""

import jax
import jax.numpy as jnp
import pytest

import handgrad as hg


@pytest.fixture
def debug_nans():
  before = jax.config.jax_debug_nans
  jax.config.update("jax_debug_nans", True)
  try:
    yield
  finally:
    jax.config.update("jax_debug_nans", before)


def _error(grad, f, x):
  with pytest.raises(Exception) as info:
    grad(f)(x)
  return info.value


def _cross_entropy_of_inf(x):
  return hg.ops.softmax_cross_entropy(jnp.stack([x, x])[None] * jnp.inf, jnp.array([0]))


# A NaN made inside a jit region in the forward pass: the hand engine binds the jit
# equation itself.  (A NaN made by a rule's eager jnp arithmetic is JAX's own check; it
# is skipped by JAX for a jnp function compiled before the flag was set.)
@pytest.mark.parametrize("f, x", [(_cross_entropy_of_inf, 1.0),
                                  (jax.jit(lambda x: jnp.log(x - 1.0) * 0.0), 0.5)])
def test_same_exception_as_jax_grad(debug_nans, f, x):
  ours, theirs = _error(hg.grad, f, x), _error(jax.grad, f, x)
  assert type(ours) is FloatingPointError and type(theirs) is FloatingPointError
  assert str(ours) == str(theirs)


def test_finite_runs_are_unaffected(debug_nans):
  f = lambda x: hg.ops.softmax_cross_entropy(jnp.stack([x, 2 * x])[None], jnp.array([0]))
  assert jnp.allclose(hg.grad(f)(1.0), jax.grad(f)(1.0))
