"""Runs a case script on 8 forced CPU devices in a subprocess and returns its results.

XLA's host platform splits into several devices only when
``--xla_force_host_platform_device_count`` is set before jax is imported, so every
sharded check runs in a fresh interpreter.  A case script (``cases_*.py`` here)
prints one JSON line ``{case name: result}`` as its last line of output.
"""

from __future__ import annotations

import functools
import json
import os
import pathlib
import subprocess
import sys

HERE = pathlib.Path(__file__).resolve().parent
SRC = HERE.parents[2] / "src"
DEVICES = 8


@functools.lru_cache(maxsize=None)
def run_cases(script: str, args: tuple[str, ...] = (), timeout: float = 300.0) -> dict:
  """``{case: result}`` from running ``HERE/script`` (with command-line ``args``) on 8
  CPU devices (cached: each script and arguments run once per test session)."""
  env = dict(os.environ)
  env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "") +
                      f" --xla_force_host_platform_device_count={DEVICES}").strip()
  env["JAX_PLATFORMS"] = "cpu"
  env["PYTHONPATH"] = os.pathsep.join([str(SRC), str(HERE), env.get("PYTHONPATH", "")])
  proc = subprocess.run([sys.executable, str(HERE / script), *args], env=env, capture_output=True,
                        text=True, timeout=timeout)
  lines = proc.stdout.strip().splitlines()
  if proc.returncode != 0 or not lines:
    raise RuntimeError(f"{script} failed (exit {proc.returncode}):\n{proc.stderr[-4000:]}")
  return json.loads(lines[-1])


def case_names(script: str) -> list[str]:
  """The cases of a case script (its public top-level functions), read without
  importing it: importing would configure jax in this process."""
  import ast
  tree = ast.parse((HERE / script).read_text())
  return [n.name for n in tree.body if isinstance(n, ast.FunctionDef) and not n.name.startswith("_")]


def check(result: dict, *, tol: float) -> None:
  """Fails with the case's own error, or when the values or the output shardings of
  the hand pass and the reference differ."""
  assert "error" not in result, result.get("traceback", result["error"])
  assert result["err"] <= tol, f"relative error {result['err']:.3g} > {tol:g}"
  assert result["hand_sharding"] == result["ref_sharding"], (
      f"output shardings differ: hand {result['hand_sharding']}, jax {result['ref_sharding']}")
