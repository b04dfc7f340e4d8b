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
