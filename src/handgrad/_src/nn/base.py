"""The layer protocol shared by every ``handgrad.nn`` layer, and its helpers.

A layer is a pair of pure functions bundled in a :class:`Layer`:

* ``init(*dims, key, **opts) -> params`` builds a parameter pytree of plain dicts and
  lists of arrays (never Python ints or strings: everything in ``params`` is a leaf
  that ``handgrad.grad`` differentiates).  ``key`` is keyword-only.
* ``apply(params, x, *, path=..., **static) -> y`` runs the layer.  Static settings
  (``num_heads``, ``activation``, ``causal``) are keyword arguments of ``apply``.

``path`` names the layer inside its model the way :func:`param_paths` names its
parameters (``"layers/1"``, ``"blocks/0/attn"``).  It is used twice: error messages
name it, and ``apply`` runs under ``jax.named_scope`` so that every equation of the
layer carries the path in its ``source_info.name_stack`` and a backward trace can
attribute blame to layers.
"""

from __future__ import annotations

import contextlib
import contextvars
import inspect
import math
from typing import Any, Callable, Iterator, NamedTuple, Sequence

import jax
import numpy as np

Params = dict
"""A layer's parameters: nested dicts (and lists, for stacks of layers) of arrays."""

Array = jax.Array


class Layer(NamedTuple):
  """A pure-function layer: ``params = init(*dims, key=key)``, ``y = apply(params, x)``.

  Build one with :meth:`Layer.named` so that its functions carry the layer's public
  name: ``print(hg.nn.mlp)`` shows ``mlp.init(...)`` and a missing argument reads
  ``mlp.init() missing 1 required keyword-only argument: 'key'``.
  """
  init: Callable[..., Params]
  apply: Callable[..., Any]

  @classmethod
  def named(cls, name: str, init: Callable[..., Params], apply: Callable[..., Any]
            ) -> "Layer":
    """``Layer(init, apply)`` with the functions renamed ``name.init`` and ``name.apply``.

    Python's repr, tracebacks and argument errors use a function's ``__qualname__``;
    ``pickle`` resolves ``module.name.init`` to the same function.
    """
    for fn, part in ((init, "init"), (apply, "apply")):
      fn.__name__ = part
      fn.__qualname__ = f"{name}.{part}"
    return cls(init, apply)

  def __repr__(self) -> str:
    return f"Layer(init={_signature(self.init)}, apply={_signature(self.apply)})"


def _signature(fn: Callable) -> str:
  """``mlp.init(layer_dims, *, key, init, activation, dtype)``: names without defaults."""
  name = getattr(fn, "__qualname__", repr(fn))
  try:
    params = inspect.signature(fn).parameters.values()
  except (TypeError, ValueError):
    return name
  parts, star = [], False
  for p in params:
    if p.kind is p.VAR_POSITIONAL:
      parts.append(f"*{p.name}")
      star = True
    elif p.kind is p.VAR_KEYWORD:
      parts.append(f"**{p.name}")
    else:
      if p.kind is p.KEYWORD_ONLY and not star:
        parts.append("*")
        star = True
      parts.append(p.name)
  return f"{name}({', '.join(parts)})"


# --- parameter paths -----------------------------------------------------------------

def path_str(keypath: Sequence[Any]) -> str:
  """``(DictKey('layers'), SequenceKey(0), DictKey('W'))`` -> ``"layers/0/W"``.

  JAX's own ``keystr`` in its simple form: each key's name (dict key, sequence index,
  attribute name) joined by ``/``; the empty path is ``""``.
  """
  return jax.tree_util.keystr(tuple(keypath), simple=True, separator="/")


def param_paths(params: Any) -> list[tuple[str, Array]]:
  """Every leaf of ``params`` with its path, in ``jax.tree`` flattening order.

  >>> [p for p, _ in param_paths({"layers": [{"W": w, "b": b}]})]
  ['layers/0/W', 'layers/0/b']

  Works for any pytree (flax ``params`` dicts and ``nnx.State`` included).
  """
  leaves, _ = jax.tree_util.tree_flatten_with_path(params)
  return [(path_str(kp), leaf) for kp, leaf in leaves]


def count_params(params: Any) -> int:
  """Total number of scalars in ``params``."""
  return int(sum(math.prod(np.shape(leaf)) for leaf in jax.tree.leaves(params)))


def join_path(path: str, name: str | int) -> str:
  """``join_path("blocks/1", "attn") == "blocks/1/attn"``; the root path is ``""``."""
  return f"{path}/{name}" if path else str(name)


# --- checks --------------------------------------------------------------------------

def _where(path: str) -> str:
  return path if path else "<root>"


def check_shape(path: str, name: str, expected: Sequence[int], actual: Sequence[int],
                context: str = "") -> None:
  """Raises ``ValueError`` naming the layer, the parameter and both shapes on mismatch.

  ``check_shape("layers/1", "b", (128,), (256,))`` raises
  ``layers/1: parameter 'b' has shape (256,), expected (128,)``.
  ``context`` is appended (for example which input dimension fixed ``expected``).
  """
  expected, actual = tuple(expected), tuple(actual)
  if expected != actual:
    extra = f" {context}" if context else ""
    raise ValueError(f"{_where(path)}: parameter '{name}' has shape {actual}, "
                     f"expected {expected}{extra}")


def check_features(path: str, x: Array, name: str, param_shape: Sequence[int],
                   expected: int) -> None:
  """Raises when the input's last axis does not match what parameter ``name`` expects.

  ``layers/1: input has 300 features but W has shape (256, 128)``.
  """
  shape = tuple(np.shape(x))
  if not shape:
    raise ValueError(f"{_where(path)}: input is a scalar, but {name} has shape "
                     f"{tuple(param_shape)} and needs inputs with {expected} features")
  if shape[-1] != expected:
    raise ValueError(f"{_where(path)}: input has {shape[-1]} features but {name} has "
                     f"shape {tuple(param_shape)} (input shape {shape})")


def get_param(params: Any, path: str, name: str) -> Any:
  """``params[name]`` with an error naming the layer when it is missing."""
  if not isinstance(params, dict):
    raise TypeError(f"{_where(path)}: parameters must be a dict, got "
                    f"{type(params).__name__}")
  try:
    return params[name]
  except KeyError:
    raise KeyError(f"{_where(path)}: missing parameter '{name}' (has "
                   f"{sorted(params)})") from None


def check_key(key: Any, layer: str) -> None:
  """Requires a PRNG key (``jax.random.key(0)`` or the legacy ``PRNGKey(0)``)."""
  if key is None:
    raise TypeError(f"{layer}.init needs a keyword-only PRNG key, e.g. "
                    f"key=jax.random.key(0)")
  dtype = getattr(key, "dtype", None)
  if dtype is None:
    raise TypeError(f"{layer}.init: key must be a PRNG key array, got "
                    f"{type(key).__name__}")
  if not (jax.dtypes.issubdtype(dtype, jax.dtypes.prng_key)
          or (np.dtype(dtype) == np.uint32 and np.shape(key)[-1:] == (2,))):
    raise TypeError(f"{layer}.init: key must be a PRNG key, got an array of dtype "
                    f"{dtype} and shape {np.shape(key)}")


# --- named scopes --------------------------------------------------------------------

# The path of the innermost ``handgrad.nn`` layer being applied.  A child layer opens
# only its path relative to its parent's, so nested scopes add up to exactly the
# child's path: "blocks/1" then "attn" gives the name stack "blocks/1/attn".
_ENCLOSING: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "handgrad_nn_path", default=None)


@contextlib.contextmanager
def layer_scope(path: str) -> Iterator[None]:
  """``jax.named_scope`` for a layer at ``path`` (nothing for the root path ``""``)."""
  parent = _ENCLOSING.get()
  rel = path
  if parent is not None and path == parent:
    rel = ""
  elif parent and path.startswith(parent + "/"):
    rel = path[len(parent) + 1:]
  token = _ENCLOSING.set(path)
  try:
    if rel:
      with jax.named_scope(rel):
        yield
    else:
      yield
  finally:
    _ENCLOSING.reset(token)
