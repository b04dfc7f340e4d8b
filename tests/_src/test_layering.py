"""The layering of handgrad._src: the inspection tools sit below the training code (train
may import inspect, inspect never imports train), the library modules import each
other, never the public ``handgrad`` package, and jaxprs are walked in jaxpr.py alone."""

import ast
import importlib
import pathlib
import pkgutil

import pytest

import handgrad._src

SRC = pathlib.Path(handgrad._src.__file__).parent
SUBPACKAGES = sorted(m.name for m in pkgutil.iter_modules([str(SRC)]) if m.ispkg)


def _imported(path: pathlib.Path) -> list[tuple[int, str]]:
  """``(line, module)`` of every import in a file, function-level ones included
  (``from a import b`` gives ``a`` and ``a.b``)."""
  out = []
  for node in ast.walk(ast.parse(path.read_text(), str(path))):
    if isinstance(node, ast.Import):
      out += [(node.lineno, a.name) for a in node.names]
    elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
      out.append((node.lineno, node.module))
      out += [(node.lineno, f"{node.module}.{a.name}") for a in node.names]
  return out


def _files(package: str) -> list[pathlib.Path]:
  return sorted((SRC / package).rglob("*.py"))


@pytest.mark.parametrize("package", SUBPACKAGES)
def test_every_subpackage_imports(package):
  importlib.import_module(f"handgrad._src.{package}")
  for info in pkgutil.walk_packages([str(SRC / package)], f"handgrad._src.{package}."):
    importlib.import_module(info.name)


def test_inspect_never_imports_train():
  assert {"inspect", "train"} <= set(SUBPACKAGES)
  bad = [f"{path.relative_to(SRC)}:{line}: {name}" for path in _files("inspect")
         for line, name in _imported(path)
         if name == "handgrad._src.train" or name.startswith("handgrad._src.train.")
         or name == "handgrad.train" or name.startswith("handgrad.train.")]
  assert not bad, "handgrad._src.inspect imports the training code:\n" + "\n".join(bad)


def test_no_public_handgrad_import_inside_src():
  bad = [f"{path.relative_to(SRC)}:{line}: {name}" for path in sorted(SRC.rglob("*.py"))
         for line, name in _imported(path)
         if name == "handgrad" or (name.startswith("handgrad.")
                                   and not name.startswith("handgrad._src"))]
  assert not bad, "imports of the public package inside _src:\n" + "\n".join(bad)



# Where a jaxpr's equations may be walked (paths under handgrad/_src, the enclosing
# top-level function or None for the whole module): jaxpr.py, the engine's backward loop
# (it runs the equations in reverse, the core of the engine) and the scan handler's check
# that a body is one checkpoint region.
_EQNS_ALLOWED = {("jaxpr.py", None), ("engine.py", "backward"), ("nested.py", "_saving_body")}


def _eqns_reads(path: pathlib.Path) -> list[tuple[int, str | None]]:
  """``(line, enclosing top-level function)`` of every ``.eqns`` read in a file."""
  out = []
  for top in ast.parse(path.read_text(), str(path)).body:
    name = top.name if isinstance(top, (ast.FunctionDef, ast.AsyncFunctionDef)) else None
    out += [(node.lineno, name) for node in ast.walk(top)
            if isinstance(node, ast.Attribute) and node.attr == "eqns"]
  return out


def test_only_the_jaxpr_module_walks_equations():
  package = SRC.parent  # handgrad/, the public modules included
  bad = []
  for path in sorted(package.rglob("*.py")):
    rel = path.relative_to(SRC).as_posix() if path.is_relative_to(SRC) else None
    bad += [f"{path.relative_to(package)}:{line} (in {fn or 'module scope'})"
            for line, fn in _eqns_reads(path)
            if (rel, None) not in _EQNS_ALLOWED and (rel, fn) not in _EQNS_ALLOWED]
  assert not bad, ("jaxpr equations walked outside handgrad._src.jaxpr "
                   "(add a small function there):\n" + "\n".join(bad))


def test_the_equation_walk_check_sees_loops(tmp_path):
  path = tmp_path / "probe.py"
  path.write_text("def f(jaxpr):\n  for eqn in jaxpr.eqns:\n    pass\n"
                  "n = len(closed.jaxpr.eqns)\n")
  assert _eqns_reads(path) == [(2, "f"), (4, None)]
