"""Set-up shared by the whole test session.

One persistent XLA compilation cache per test run.  Many tests compile the same
programs (the seed MLP's training step behind every CLI test, the single-device
reference runs of the sharded and multi-process checks, each in its own interpreter),
and XLA compiles dominate the suite's time on a 2-core machine.  The cache lives in a
fresh temporary directory made for this run (shared by the pytest-xdist workers and
the subprocesses tests start, through the environment) and removed when the run ends:
no state outlives the run, and a test never sees a program compiled by another run or
another jax.  A cached executable is the one XLA would compile again from the same
program, so nothing a test checks depends on it; ``HANDGRAD_TEST_COMPILE_CACHE=0``
turns it off, and a ``JAX_COMPILATION_CACHE_DIR`` set by the user is left as it is.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile

import pytest

_SETTINGS = {  # jax's config name: its value (the directory is filled in per run)
    "jax_compilation_cache_dir": None,
    "jax_persistent_cache_min_compile_time_secs": 0.0,  # cache every program, even fast ones
    "jax_persistent_cache_min_entry_size_bytes": 0,
}


def pytest_configure(config) -> None:
  if hasattr(config, "workerinput"):  # a pytest-xdist worker: it inherited the controller's
    return
  if os.environ.get("JAX_COMPILATION_CACHE_DIR") or os.environ.get(
      "HANDGRAD_TEST_COMPILE_CACHE") == "0":
    return
  directory = tempfile.mkdtemp(prefix="handgrad-test-xla-cache-")
  config._handgrad_xla_cache = directory
  values = {name: directory if value is None else value for name, value in _SETTINGS.items()}
  for name, value in values.items():
    os.environ[name.upper()] = str(value)
  if "jax" in sys.modules:  # imported already (by a plugin): its config read the old environment
    import jax
    for name, value in values.items():
      jax.config.update(name, value)


def pytest_unconfigure(config) -> None:
  directory = getattr(config, "_handgrad_xla_cache", None)
  if directory:
    shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture
def x64():
  """Float64 inside the test (``jax.enable_x64``), for modules whose references are
  float64 finite differences or float64 Hessians; a module that needs it for every test
  says ``pytestmark = pytest.mark.usefixtures("x64")``."""
  import jax
  with jax.enable_x64(True):
    yield
