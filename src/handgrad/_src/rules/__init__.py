"""Importing this package registers every built-in rule, one module per family.

Every module of this package (``arithmetic``, ``conv``, ``linalg``, ...) is imported in
name order; a module registers its rules with :func:`handgrad._src.registry.defvjp`
when it is imported.  Modules whose name starts with ``_`` hold shared helpers only.
"""

import importlib
import pkgutil

for _module in sorted(m.name for m in pkgutil.iter_modules(__path__)):
  if not _module.startswith("_"):
    importlib.import_module(f"{__name__}.{_module}")
