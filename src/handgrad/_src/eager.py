"""Compiled-program cache for eager ``grad``/``value_and_grad`` calls.

Called eagerly (concrete arguments, no enclosing ``jit``/``vmap``/``grad``),
``handgrad.grad(f)(x)`` would trace ``f``, run the hand engine and dispatch every
primitive on its own, on every call.  Instead the whole computation (forward and hand
backward) is compiled once per call signature with ``jax.jit`` and reused, so a
repeated call is one compiled call.

The key of a compiled program:

* the function (held weakly: the entry goes when the function does), ``argnums``,
  ``has_aux`` and the kind of call;
* the tree structure of the positional and keyword arguments;
* the exact value of each non-array leaf of a non-differentiated argument (a Python
  scalar or string, which the function sees as such, as under eager ``jax.grad``);
* through ``jax.jit``: every array's shape, dtype and weak type, and the JAX
  configuration that changes tracing (``jax_enable_x64``, default matmul precision, ...).

Array arguments that are not differentiated become inputs of the compiled program
(tracers while it is traced, as under ``jax.jit``).  When the function needs one of
them as a concrete value (``np.asarray(y)``, say, which the uncached path allows), the
call runs uncached instead, and so does every later call with that key.

Staleness guards, checked on every call: the rule registry and the nested-jaxpr
handlers (a rule registered later invalidates the entry), and the arrays, pytrees of
arrays (``dict``/``list``/``tuple``) and Python scalars that the function reads from
its closure cells and module globals, and those of the functions named there (three
levels deep; library code -- ``jax``, ``numpy``, ``handgrad`` itself -- is not looked
into).  When one of them was rebound since the program was compiled, the key runs
uncached from then on (each call traces afresh, as before), never a stale program.

Not detected (the caveat ``jax.jit`` has for every closed-over value): state reached
through object attributes or deeper calls, and NumPy arrays mutated in place.  Pass
such values as arguments, or turn the cache off with :func:`disable` /
``HANDGRAD_EAGER_CACHE=0``.  Side effects of the function (``print``) happen when it
is traced, i.e. on the first call of each signature, as under ``jax.jit``.

A function object made afresh for every call (a ``lambda`` closing over the batch,
built inside the loop) would compile a program per call: after
``MAX_FUNCTIONS_PER_CODE`` function objects with the same code have been cached,
further ones run uncached (traced on every call, as without the cache).  Define the
function once, with the batch as an argument, to get the compiled path.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import types
import weakref
from typing import Any, Callable

import jax
import numpy as np

from handgrad._src import jaxpr as hj
from handgrad._src import nested
from handgrad._src import registry

_ENABLED = os.environ.get("HANDGRAD_EAGER_CACHE", "1") not in ("0", "false", "False")

# fun -> {key: _Entry | _UNCACHEABLE}
_CACHE: "weakref.WeakKeyDictionary[Callable, dict]" = weakref.WeakKeyDictionary()
_UNCACHEABLE = object()

# Errors that mean the function needs a non-differentiated array concretely.
_CONCRETE_ERRORS = (jax.errors.ConcretizationTypeError, jax.errors.TracerArrayConversionError,
                    jax.errors.TracerIntegerConversionError,
                    jax.errors.TracerBoolConversionError)

_STATIC_TYPES = (bool, int, float, complex, str, bytes, type(None), np.dtype)
_ARRAY_TYPES = (jax.Array, np.ndarray, np.generic)


@dataclasses.dataclass
class Stats:
  """Counters for tests and benchmarks: ``traces`` (programs traced), ``hits`` (calls
  served by a compiled program), ``uncached`` (calls that ran uncached)."""
  traces: int = 0
  hits: int = 0
  uncached: int = 0


stats = Stats()


def enable() -> None:
  """Turns the eager cache on (the default)."""
  global _ENABLED
  _ENABLED = True


def disable() -> None:
  """Turns the eager cache off: every eager call traces afresh."""
  global _ENABLED
  _ENABLED = False


def clear() -> None:
  """Drops every compiled program."""
  _CACHE.clear()


@dataclasses.dataclass
class _Entry:
  jitted: Callable
  rules: dict
  handlers: dict
  guard: tuple


def _usable() -> bool:
  from handgrad._src import engine
  return _ENABLED and hj.at_top_level() and not engine._OBSERVERS and not engine._STACK


# --- what a function reads from outside its arguments ----------------------------------

def _fingerprint(value, out: list) -> bool:
  """Appends what identifies ``value`` (arrays by identity, scalars by exact value);
  returns False when ``value`` is something the guard ignores."""
  if isinstance(value, _ARRAY_TYPES):
    out.append(value)
  elif isinstance(value, _STATIC_TYPES):
    out.append(("v", type(value), repr(value)))
  elif isinstance(value, (dict, list, tuple)):
    try:
      leaves = jax.tree.leaves(value)
    except Exception:  # e.g. a dict whose keys do not sort: not a pytree of arrays
      return False
    if not any(isinstance(x, _ARRAY_TYPES + _STATIC_TYPES) for x in leaves):
      return False
    out.append(("tree", id(value), len(leaves)))  # a rebound container of another size
    for x in leaves:
      if isinstance(x, _ARRAY_TYPES + _STATIC_TYPES):
        _fingerprint(x, out)
  else:
    return False
  return True


def _reads(fun, out: list, seen: set, depth: int) -> None:
  """Fingerprints of the values ``fun`` reads from closure cells and module globals."""
  if depth == 0 or id(fun) in seen:
    return
  seen.add(id(fun))
  if isinstance(fun, functools.partial):
    _reads(fun.func, out, seen, depth)
    return
  if isinstance(fun, types.MethodType):
    fun = fun.__func__
  fun = getattr(fun, "__wrapped__", fun)  # functools.wraps / jax.jit wrappers
  if not isinstance(fun, types.FunctionType) or _is_library(fun):
    return
  values = []
  for cell in fun.__closure__ or ():
    try:
      values.append(cell.cell_contents)
    except ValueError:  # an empty cell
      continue
  glob = fun.__globals__
  for name in fun.__code__.co_names:
    if name in glob:
      values.append(glob[name])
  for v in values:
    if isinstance(v, (types.FunctionType, functools.partial)) or hasattr(v, "__wrapped__"):
      _reads(v, out, seen, depth - 1)
    elif not isinstance(v, (types.ModuleType, type)):
      _fingerprint(v, out)


_LIBRARIES = ("jax", "jaxlib", "numpy", "optax", "flax", "handgrad._src")


def _is_library(fun) -> bool:
  """Library functions read no user state worth guarding (and their globals are many)."""
  module = getattr(fun, "__module__", None) or ""
  return any(module == m or module.startswith(m + ".") for m in _LIBRARIES)


def _guard(fun) -> tuple:
  out: list = []
  _reads(fun, out, set(), 3)
  return tuple(out)


def _same_guard(a: tuple, b: tuple) -> bool:
  return len(a) == len(b) and all(x is y or (type(x) is tuple and x == y)
                                  for x, y in zip(a, b))


# --- functions made afresh for every call ------------------------------------------------

# A loop that builds a new closure for every call (``hg.grad(lambda p: loss(p, batch))``)
# would compile a program per iteration.  After this many function objects sharing one
# code object have been cached, further ones with that code run uncached.
MAX_FUNCTIONS_PER_CODE = 3
_CODE_COUNTS: dict = {}


def _may_compile(fun) -> bool:
  code = getattr(getattr(fun, "__func__", fun), "__code__", None)
  if code is None:
    return True
  count = _CODE_COUNTS.get(code, 0)
  if count >= MAX_FUNCTIONS_PER_CODE:
    return False
  if len(_CODE_COUNTS) > 4096:  # bounded: forget old code objects
    _CODE_COUNTS.clear()
  _CODE_COUNTS[code] = count + 1
  return True


# --- the cached call ---------------------------------------------------------------------

def _split(args: tuple, kwargs: dict, diff: tuple[int, ...]):
  """(treedef, dynamic leaves, static key) or None when a leaf cannot be keyed."""
  leaves, treedef = jax.tree.flatten((args, kwargs))
  diff_leaves = set()
  start = 0
  for n, a in enumerate(args):
    k = len(jax.tree.leaves(a))
    if n in diff:
      diff_leaves.update(range(start, start + k))
    start += k
  dyn, static = [], []
  for i, x in enumerate(leaves):
    if isinstance(x, jax.core.Tracer):
      return None
    if i in diff_leaves or isinstance(x, _ARRAY_TYPES):
      dyn.append(x)
      static.append(None)
    elif isinstance(x, _STATIC_TYPES):
      static.append((type(x), repr(x), x))
    else:
      return None
  return treedef, dyn, tuple(static)


def call(fun: Callable, tag: tuple, args: tuple, kwargs: dict, diff: tuple[int, ...],
         compute: Callable[[Callable, tuple, dict], Any]) -> Any:
  """``compute(fun, args, kwargs)``, from a compiled program when possible.

  ``tag`` names the kind of call and its options (``argnums``, ``has_aux``);
  ``diff`` the positions of the differentiated arguments.  ``compute`` must return a
  pytree of arrays and be a pure function of its arguments.
  """
  if not _usable():
    return compute(fun, args, kwargs)
  split = _split(args, kwargs, diff)
  try:
    table = _CACHE.get(fun) if split is not None else None
    if table is None and split is not None and _may_compile(fun):
      table = _CACHE.setdefault(fun, {})
  except TypeError:  # not weakly referenceable or not hashable
    table = None
  if table is None:
    stats.uncached += 1
    return compute(fun, args, kwargs)
  treedef, dyn, static = split
  key = (tag, treedef, tuple(s[:2] if s else None for s in static))
  entry = table.get(key)
  if entry is _UNCACHEABLE:
    stats.uncached += 1
    return compute(fun, args, kwargs)
  guard = _guard(fun)
  if entry is not None and not (entry.rules == registry._RULES
                                and entry.handlers == nested._HANDLERS
                                and _same_guard(entry.guard, guard)):
    # Something the program was traced with has changed: never serve it again.
    table[key] = _UNCACHEABLE
    stats.uncached += 1
    return compute(fun, args, kwargs)
  if entry is None:
    entry = table[key] = _Entry(_program(weakref.ref(fun), treedef, static, compute),
                                dict(registry._RULES), dict(nested._HANDLERS), guard)
  try:
    out = entry.jitted(dyn)
  except _CONCRETE_ERRORS:
    table[key] = _UNCACHEABLE
    stats.uncached += 1
    return compute(fun, args, kwargs)
  stats.hits += 1
  return out


def _program(fun_ref, treedef, static, compute) -> Callable:
  def program(dyn):
    stats.traces += 1
    it = iter(dyn)
    leaves = [next(it) if s is None else s[2] for s in static]
    args, kwargs = jax.tree.unflatten(treedef, leaves)
    return compute(fun_ref(), args, kwargs)

  return jax.jit(program)
