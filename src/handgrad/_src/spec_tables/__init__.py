"""Spec tables of rule families, one module per family, beside the base table in
:mod:`handgrad._src.specs`.

Each module defines ``table() -> list[RuleSpec]``; :func:`handgrad._src.specs.all_specs`
appends every module's table (in module-name order) to the base table, so a new rule
family brings its specs in its own file.
"""

import importlib
import pkgutil


def family_tables() -> list:
  """Every spec of every family module, in module-name order."""
  out = []
  for name in sorted(m.name for m in pkgutil.iter_modules(__path__)):
    if not name.startswith("_"):
      out.extend(importlib.import_module(f"{__name__}.{name}").table())
  return out
