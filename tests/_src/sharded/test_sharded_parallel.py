"""handgrad._src.parallel: mesh strings, batch and FSDP placement, and hand gradients
on those placements equal to jax.grad on the mesh and on one device (8 CPU devices,
cases_parallel.py in a subprocess); the mesh-string parser in this process."""

import pytest

from _devices8 import check, run_cases
from handgrad._src import parallel

SCRIPT = "cases_parallel.py"


def test_parse_mesh_keeps_axis_order():
  assert parallel.parse_mesh("data=4,model=2") == {"data": 4, "model": 2}
  assert list(parallel.parse_mesh(" model = 2 , data=4 ")) == ["model", "data"]
  assert parallel.parse_mesh({"data": 8}) == {"data": 8}


@pytest.mark.parametrize("spec, message", [
    ("data", "is not 'axis=size'"),
    ("data=0", "not a positive integer"),
    ("data=-2", "not a positive integer"),
    ("data=two", "not a positive integer"),
    ("data=2,data=4", "appears twice"),
    ("=4", "not an identifier"),
    ("", "expected 'axis=size"),
])
def test_parse_mesh_names_the_bad_entry(spec, message):
  with pytest.raises(ValueError, match=message):
    parallel.parse_mesh(spec)


def test_mesh_from_string_on_8_devices():
  r = run_cases(SCRIPT)["mesh_from_string"]
  assert r == {"axes": ["data", "model"], "shape": {"data": 4, "model": 2},
               "types": ["Explicit", "Explicit"]}


def test_mesh_of_the_wrong_size_is_refused():
  assert "needs 3 devices, there are 8" in run_cases(SCRIPT)["mesh_needs_all_devices"]["message"]


def test_batch_and_fsdp_placement():
  r = run_cases(SCRIPT)["batch_and_fsdp_placement"]
  assert r["batch"] == {"['x']": "('data', None)", "['y']": "('data',)"}
  # W [16, 64] is split along its larger dimension; the small leaves are replicated.
  assert r["params"] == {"['layers'][0]['W']": "(None, 'data')", "['layers'][0]['b']": "(None,)",
                         "['layers'][1]['W']": "(None, None)", "['layers'][1]['b']": "(None,)"}
  assert r["bytes_per_device"] == 4 * (16 * 64 // 8 + 64 + 64 * 10 + 10)


def test_shard_batch_names_the_leaf():
  msg = run_cases(SCRIPT)["shard_batch_error"]["message"]
  assert msg == "shard_batch: leaf ['x'] has batch size 12, not divisible by mesh axis 'data' of size 8"


@pytest.mark.parametrize("case", ["data_parallel_step_auto", "data_parallel_step_explicit",
                                  "fsdp_step_auto", "data_model_mesh_step_auto"])
def test_hand_gradient_on_placed_values(case):
  r = run_cases(SCRIPT)[case]
  check(r, tol=1e-6)
  assert r["vs_one_device"] <= 1e-6  # float32 reduction order only


def test_megatron_transformer_gradient():
  r = run_cases(SCRIPT)["megatron_transformer_step"]
  check(r, tol=1e-6)
  assert r["vs_one_device"] <= 1e-6
  specs = r["specs"]
  assert specs["attn/q/W"] == "(None, 'model')" and specs["attn/q/b"] == "('model',)"
  assert specs["attn/o/W"] == "('model',)" and specs["attn/o/b"] == "()"
  assert specs["ffn/fc1/W"] == "(None, 'model')" and specs["ffn/fc2/W"] == "('model',)"
  assert specs["ln1/gamma"] == "()"
