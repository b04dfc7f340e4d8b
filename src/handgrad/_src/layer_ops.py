"""Layer-level operations: ordinary JAX functions that stay one node in a jaxpr.

``@layer_op("dense")`` turns ``impl(*arrays, **static)`` into a function that runs as
a nested ``jax.jit`` named ``hg.dense`` (``hg.softmax[axis=-1]`` when it has static
keyword arguments).  Outside handgrad it is plain JAX: ``jax.grad`` descends into it
like any jit.  Inside ``handgrad.grad`` the engine recognises the name and applies the
hand rule registered under ``"dense"`` instead of descending, with the static keyword
arguments passed to the rule as ``**params``.
"""

from __future__ import annotations

import functools
import inspect
from typing import Any, Callable

import jax

# jit name -> (rule name, static keyword arguments)
_INSTANCES: dict[str, tuple[str, dict[str, Any]]] = {}


def lookup_instance(jit_name: str) -> tuple[str, dict[str, Any]] | None:
  """``(rule name, static keyword arguments)`` of the layer-op ``jit`` named
  ``jit_name``, or ``None`` when no layer op has that name."""
  return _INSTANCES.get(jit_name)


def rule_names() -> set[str]:
  """The names of the layer-level operations applied so far (``{"dense", "relu"}``)."""
  return {name for name, _ in _INSTANCES.values()}


def _jit_name(name: str, static: tuple[tuple[str, Any], ...]) -> str:
  if not static:
    return f"hg.{name}"
  return f"hg.{name}[" + ",".join(f"{k}={v!r}" for k, v in static) + "]"


def layer_op(name: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
  """Marks ``impl(*arrays, **static)`` as the layer-level operation ``name``.

  Positional arguments are arrays (differentiable or not); keyword arguments are
  static (hashable Python values such as ``axis=-1``) and become the rule's params.
  """

  def wrap(impl: Callable[..., Any]) -> Callable[..., Any]:

    @functools.lru_cache(maxsize=None)
    def jitted(static: tuple[tuple[str, Any], ...]):
      kwargs = dict(static)

      def call(*arrays):
        return impl(*arrays, **kwargs)

      call.__name__ = call.__qualname__ = _jit_name(name, static)
      _INSTANCES[call.__name__] = (name, kwargs)
      return jax.jit(call)

    @functools.wraps(impl)
    def op(*arrays, **static):
      try:
        key = tuple(sorted(static.items()))
        hash(key)
      except TypeError as e:
        raise TypeError(f"{name}: keyword arguments must be hashable static values, "
                        f"got {static!r}") from e
      return jitted(key)(*arrays)

    # The signature with impl's annotations evaluated in impl's own module (its shapes,
    # ``Float[Array, "*batch in"]``): a tool that resolves string annotations in the
    # wrapper's module instead (``jaxtyping.jaxtyped``) would otherwise see none.
    try:
      op.__signature__ = inspect.signature(impl, eval_str=True)  # type: ignore[attr-defined]
    except (NameError, TypeError, SyntaxError):
      pass  # annotations that name what only a type checker imports stay strings
    op.op_name = name  # type: ignore[attr-defined]
    op.impl = impl  # type: ignore[attr-defined]
    return op

  return wrap
