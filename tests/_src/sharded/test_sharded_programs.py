"""Programs on a mesh of 8 CPU devices, Explicit and Auto axes: the seed MLP with a
data-sharded batch, sharded parameters, custom_jvp tangents, reshard; handgrad.grad
equals jax.grad (float32, reduction-order tolerance) with the same output shardings.
The programs live in cases_issue.py and run in one subprocess."""

import pytest

from _devices8 import case_names, check, run_cases

SCRIPT = "cases_issue.py"


@pytest.mark.parametrize("case", case_names(SCRIPT))
def test_sharded_program_matches_jax_grad(case):
  check(run_cases(SCRIPT)[case], tol=1e-6)
