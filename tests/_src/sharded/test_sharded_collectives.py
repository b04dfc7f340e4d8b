"""shard_map, pmap and vmap programs with collectives on 8 CPU devices: data parallel,
tensor parallel (a column-then-row-parallel MLP with one psum), a ppermute ring,
sequence-parallel attention with all_gather, reduce-scatter, all_to_all, psum over one
axis of two; handgrad.grad equals jax.grad (float64) with the same output shardings.
The programs live in cases_collectives.py and run in one subprocess."""

import pytest

from _devices8 import case_names, check, run_cases

SCRIPT = "cases_collectives.py"


@pytest.mark.parametrize("case", case_names(SCRIPT))
def test_collective_program_matches_jax_grad(case):
  check(run_cases(SCRIPT)[case], tol=1e-12)


@pytest.mark.parametrize("name", ["pmax", "pmin"])
def test_pmax_pmin_are_not_differentiated_as_in_jax(name):
  # One device: a mesh axis of size 1 is enough to bind the collective.
  import jax
  import jax.numpy as jnp
  import numpy as np
  from jax import lax
  from jax.sharding import Mesh, PartitionSpec as P
  import handgrad as hg
  mesh = Mesh(np.array(jax.devices()[:1]), ("i",))
  op = getattr(lax, name)
  f = lambda x: jnp.sum(jax.shard_map(lambda x: op(jnp.sin(x), "i"), mesh=mesh,
                                      in_specs=P("i"), out_specs=P())(x))
  with pytest.raises(NotImplementedError, match="Differentiation rule"):
    jax.grad(f)(jnp.ones(3))
  with pytest.raises(NotImplementedError, match=f"differentiation of '{name}' is not supported"):
    hg.grad(f)(jnp.ones(3))
