"""The sharded mode of the rule sweep: spec-table rules on 8 CPU devices with operands
sharded along each dimension, Explicit and Auto meshes, handgrad.vjp against jax.vjp in
value and in every input cotangent's sharding (cases_sweep.py, one subprocess).

``dot_general`` and the N-d ``softmax_cross_entropy`` case are not in this list: under
Explicit axes their rules still build cotangents without ``out_sharding``
(``python cases_sweep.py --all`` lists every configuration).  ``reshard`` on a mesh is
checked by test_sharded_programs.py.
"""

import pytest

from _devices8 import run_cases

# One or two rules per family keep this under a minute on two cores; the full list is
# ``python cases_sweep.py --all``.
RULES = (
    "exp", "tanh", "abs", "integer_pow", "add", "mul", "div", "max", "pow", "select_n",
    "reduce_sum", "reduce_max", "reduce_prod", "cumsum",
    "broadcast_in_dim", "reshape", "transpose", "expand_dims", "concatenate",
    "dense", "relu", "log_softmax", "layer_norm",
)


@pytest.fixture(scope="module")
def results():
  return run_cases("cases_sweep.py", ("--quick", *RULES), timeout=600)


@pytest.mark.parametrize("rule", RULES)
def test_rule_on_sharded_operands_matches_jax_vjp(results, rule):
  rows = {k: v for k, v in results.items() if k.split(" ")[0].split("[")[0] == rule}
  failed = {k: v[1] for k, v in rows.items() if v[0] == "fail"}
  assert not failed, failed
  # Something was compared: a rule whose every configuration is skipped tests nothing.
  assert any(v[0] in ("pass", "jax-wrong") for v in rows.values()), rows
