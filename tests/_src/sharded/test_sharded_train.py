"""``handgrad train --mesh ...`` (every gradient by hand) on 8 forced CPU devices ends
with the single-device run's parameters and optimizer state, within float32
reduction-order tolerance; checkpoints saved on one mesh resume on another
(cases_train.py in a subprocess).

Measured (jax 0.10.2, CPU, 8 steps of batch 32 on 256 digits, Adam 1e-3): the largest
parameter difference is 2.5e-7 (MLP, data=8), 5.9e-7 (MLP, FSDP data=8), 2.7e-7 (MLP,
data=4,model=2), 1.3e-7 (transformer, Megatron data=4,model=2, SGD 0.1); the largest
relative difference over parameters and Adam moments (entries above 1e-3) is 2e-5 to
5e-5, in the moments, where Adam's 1/sqrt(nu) amplifies the last bit.  The
transformer's key biases have a gradient that is zero in exact arithmetic, float32
noise in both runs, which Adam turns into steps of about lr: they differ by 1.1e-3
after 8 Adam steps and are compared apart.
"""

import io

import pytest

from _devices8 import run_cases
from handgrad.cli import main as cli_main

SCRIPT = "cases_train.py"


def _result(case):
  r = run_cases(SCRIPT, (), timeout=900.0)[case]
  assert "error" not in r, r.get("traceback", r.get("error"))
  return r


@pytest.mark.parametrize("case, params_tol", [
    ("mlp_data8", 2e-6), ("mlp_fsdp8", 2e-6), ("mlp_data4_model2", 2e-6),
    ("transformer_data4_model2", 2e-6), ("transformer_data4_model2_sgd", 2e-6)])
def test_mesh_run_equals_one_device(case, params_tol):
  r = _result(case)
  assert r["step"] == r["ref_step"] == 8
  assert r["params_abs"] <= params_tol, r
  assert r["rel"] <= 5e-4, r


def test_adam_moves_the_key_bias_by_noise_only():
  # Its gradient is float32 noise in both runs; Adam's step is at most about lr.
  assert _result("transformer_data4_model2")["key_bias_abs"] <= 8 * 2e-3


def test_state_lives_where_the_strategy_says():
  r = _result("step_shardings")
  fsdp, meg = r["fsdp"], r["megatron"]
  assert fsdp["params/layers/0/W"] == "('data', None)"
  assert fsdp["opt_state/1/0/mu/layers/0/W"] == "('data', None)"
  assert fsdp["params/layers/0/b"] == "(None,)" and fsdp["step"] == "()"
  assert meg["params/blocks/0/attn/q/W"] == "(None, 'model')"
  assert meg["opt_state/1/0/nu/blocks/0/attn/q/W"] == "(None, 'model')"
  assert meg["params/blocks/0/ffn/fc2/W"] == "('model', None)"
  assert meg["params/embed/W"] == "(None, None)"
  assert r["fsdp_loss_finite"] and r["megatron_loss_finite"]


@pytest.mark.parametrize("where", ["data4_model2", "data8_data", "one_device"])
def test_fsdp_checkpoint_resumes_on_another_mesh(where):
  r = _result("resume_on_other_meshes")[where]
  assert r["step"] == r["ref_step"] == 16
  assert r["params_abs"] <= 2e-6, r
  assert r["rel"] <= 5e-4, r


def test_mesh_larger_than_the_devices_is_one_line(tmp_path, capsys):
  rc = cli_main(["train", "--subset", "64", "--epochs", "1", "--no-progress",
                 "--mesh", "data=8", "--out", str(tmp_path / "run")])
  err = capsys.readouterr().err.strip().splitlines()
  assert rc != 0 and len(err) == 1, err
  assert "--mesh data=8 needs 8 devices, there are 1" in err[0]
  assert "XLA_FLAGS=--xla_force_host_platform_device_count=8" in err[0]


@pytest.mark.parametrize("flags, message", [
    (["--sharding", "fsdp"], "--sharding needs --mesh"),
    (["--coordinator", "127.0.0.1:1"], "--coordinator, --num-processes and --process-id go together"),
    (["--coordinator", "127.0.0.1:1", "--num-processes", "2", "--process-id", "2"],
     "--process-id 2 is not in [0, 2)"),
    (["--mesh", "data=x"], "--mesh data=x: size 'x' of axis 'data' is not a positive integer"),
])
def test_mesh_and_process_flags_are_checked(tmp_path, capsys, flags, message):
  rc = cli_main(["train", "--subset", "64", "--epochs", "1", "--no-progress", *flags,
                 "--out", str(tmp_path / "run")])
  err = capsys.readouterr().err.strip().splitlines()
  assert rc != 0 and len(err) == 1, err
  assert message in err[0], err
