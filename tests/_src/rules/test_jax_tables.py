"""Cases rebuilt from the gradient tests of JAX's own test suite (lax_autodiff_test,
nn_test, lax_numpy_test, linalg_test, eigh_test, fft_test), run through handgrad.vjp and
to second order (hand reverse over hand reverse, forward over hand reverse, nested
handgrad.grad), each against the same thing computed by JAX.

The case builders live in ``tools/jax_tables_check.py``, which runs every case (a few
thousand; ``python tools/jax_tables_check.py``).  Here run: every case that once failed
(``REGRESSIONS``) and a deterministic sample of each op family of every table.
"""

import collections
import importlib.util
import pathlib
import sys

import jax
import pytest

_DRIVER = pathlib.Path(__file__).resolve().parents[3] / "tools" / "jax_tables_check.py"
_spec = importlib.util.spec_from_file_location("jax_tables_check", _DRIVER)
tables = importlib.util.module_from_spec(_spec)
sys.modules.setdefault("jax_tables_check", tables)  # dataclasses look their module up
_spec.loader.exec_module(tables)

# Cases that failed (a wrong answer, an error or a missing rule) before their fix.
REGRESSIONS = {
    # no rule for tridiagonal_solve
    "linalg:tridiagonal_solve/(3,)/float64/False",
    "linalg:tridiagonal_solve/(3, 4)/complex128/True",
    "linalg:tridiagonal_solve/(3, 4)/float32/False",
    # eig with left eigenvectors only: the rule's recomputed right eigenvectors dropped
    # enable_eigvec_derivs, so a second derivative raised
    "linalg:eig/(4, 4)/float64/TrueFalse",
    "linalg:eig/(4, 4)/complex128/TrueFalse",
    # jax 0.12: jnp.ldexp and jnp.frexp are call_hi_primitive equations without a rule
    "numpy:ldexp/-2/float64",
    "numpy:frexp/3/float64",
    "numpy:frexp/0/float32",
}

# Differences from jax.grad that are deliberate (the hand rule gives the derivative,
# the JAX release does not); each is checked against finite differences elsewhere.
DELIBERATE = {
    # jax < 0.12 gives complex sign (x/|x|) a zero derivative; tests/_src/rules/
    # test_complex.py checks the hand rule against finite differences.
    "lax:sign/": lambda case: (case.args[0].dtype.kind == "c"
                               and tuple(map(int, jax.__version__.split(".")[:2])) < (0, 12)),
}

_PER_FAMILY = 1


def _family(case):
  return f"{case.table}:{case.name.split('/')[0]}"


def _selected():
  with jax.enable_x64(True):
    cases = tables.all_cases()
  by_id = {c.id: c for c in cases}
  missing = REGRESSIONS - set(by_id)
  assert not missing, f"regression cases no longer built: {sorted(missing)}"
  chosen, seen = [], collections.Counter()
  for i, c in enumerate(cases):
    fam = _family(c)
    take = c.id in REGRESSIONS
    # A deterministic spread over each family: its first case, then every 200th case.
    if not take and (seen[fam] < _PER_FAMILY or i % 200 == 0):
      take = True
    if take and any(k in c.id and skip(c) for k, skip in DELIBERATE.items()):
      continue
    if take:
      seen[fam] += 1
      chosen.append(c)
  return chosen


CASES = _selected()


def test_sample_reaches_every_table_and_family():
  with jax.enable_x64(True):
    families = {_family(c) for c in tables.all_cases()}
  assert {c.table for c in CASES} == set(tables.TABLES)
  assert families == {_family(c) for c in CASES}


@pytest.mark.parametrize("case", [pytest.param(c, id=c.id) for c in CASES])
def test_case_matches_jax(case):
  with jax.enable_x64(True):
    results = tables.run_case(case)
  # "jaxfail": JAX raises on this case and so does handgrad; "pass-fd": JAX raises, the
  # hand answer equals float64 finite differences; anything else that is not
  # a pass (wrong, error, missing, answers-where-jax-raises) fails.
  bad = [r for r in results if r[1] not in ("pass", "pass-fd", "jaxfail")]
  assert not bad, bad
