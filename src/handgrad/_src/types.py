"""Type aliases used across handgrad, defined once.

``Array`` is a JAX array; ``PyTree`` any pytree (JAX's containers of arrays);
``Params`` a model's parameters: a pytree of arrays (``handgrad.nn`` layers make
nested dicts, but any pytree works).
"""

from __future__ import annotations

from typing import Any

import jax

Array = jax.Array
PyTree = Any
Params = PyTree
