"""Property: binary rules sum their cotangents back over any broadcasting, for random
shape pairs and data, against jax.vjp in float64 (and central differences)."""

import hypothesis.strategies as st
import numpy as np
from hypothesis import given, settings

import jax.numpy as jnp

from handgrad._src import specs

# name of the rule -> (jnp function, sampler of each operand)
BINARY_OPS = {
    "add": (jnp.add, specs.normal()),
    "sub": (jnp.subtract, specs.normal()),
    "mul": (jnp.multiply, specs.normal()),
    "div": (jnp.divide, (specs.normal(), specs.away_from_zero())),
    "max": (jnp.maximum, specs.normal()),
    "min": (jnp.minimum, specs.normal()),
    "pow": (jnp.power, (specs.uniform(0.5, 2.0), specs.normal())),
    "atan2": (jnp.arctan2, specs.away_from_zero(0.3, 2.0)),
    "rem": (jnp.fmod, (specs.normal(3.0), specs.away_from_zero())),
}


@st.composite
def broadcasting_shapes(draw):
  """Two shapes that broadcast together: a common shape, each operand keeping a suffix
  of it with some dimensions set to 1 (scalars included)."""
  full = draw(st.lists(st.integers(1, 3), min_size=0, max_size=3))
  shapes = []
  for _ in range(2):
    rank = draw(st.integers(0, len(full)))
    dims = full[len(full) - rank:]
    shapes.append(tuple(d if draw(st.booleans()) else 1 for d in dims))
  return tuple(shapes)


@settings(max_examples=30, deadline=None, derandomize=True)
@given(name=st.sampled_from(sorted(BINARY_OPS)), shapes=broadcasting_shapes(),
       seed=st.integers(0, 2**16))
def test_binary_rules_under_random_broadcasting(name, shapes, seed):
  fun, sampler = BINARY_OPS[name]
  spec = specs.RuleSpec(name, fun, (shapes,), sampler, dtypes=("float64",))
  reports = specs.check_rule(spec, "float64", seed=seed, finite_differences=True)
  failed = [str(r) for r in reports if not r.passed]
  assert not failed, "\n".join(failed)
  assert {r.reference for r in reports} == {"jax.vjp", "finite differences"}
  assert np.broadcast_shapes(*shapes) is not None
