"""Frozen specs: which leaves of a parameter pytree a spec freezes.

A *frozen spec* is one of:

* ``None``: nothing is frozen;
* a string or a sequence of strings: path prefixes in :func:`handgrad.nn.param_paths`
  form, matched on whole components (``"layers/0"`` freezes ``layers/0/W`` and
  ``layers/0/b`` but not ``layers/01/W``);
* a callable ``path -> bool``, e.g. ``lambda path: path.startswith("layers/0")``;
* a pytree of bools shaped like the params (``True`` = frozen).

The training code (``handgrad.train``: the step, ``freeze``, ``make_optimizer``) and the
inspection tools (``handgrad.inspect.find_zero_grads``) both resolve specs here; this
module depends on neither.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import jax

from handgrad._src.nn.base import path_str

Params = Any
FrozenSpec = None | str | Sequence[str] | Callable[[str], bool] | Any


def _prefix_match(path: str, prefix: str) -> bool:
  prefix = prefix.strip("/")
  return path == prefix or path.startswith(prefix + "/") or prefix == ""


def frozen_mask(params: Params, frozen: FrozenSpec) -> Any:
  """A pytree of Python bools shaped like ``params``: ``True`` where a leaf is frozen.

  Args:
    params: the parameter pytree (only its structure and paths are used).
    frozen: a frozen spec (see the module docstring).

  Raises:
    ValueError: a prefix matches no parameter (the message lists the paths), or a mask
      pytree does not have the structure of ``params``.
  """
  leaves, treedef = jax.tree_util.tree_flatten_with_path(params)
  paths = [path_str(kp) for kp, _ in leaves]
  if frozen is None:
    flags = [False] * len(paths)
  elif isinstance(frozen, str) or (isinstance(frozen, (list, tuple))
                                   and all(isinstance(p, str) for p in frozen)):
    prefixes = [frozen] if isinstance(frozen, str) else list(frozen)
    for prefix in prefixes:
      if not any(_prefix_match(p, prefix) for p in paths):
        raise ValueError(f"frozen prefix {prefix!r} matches no parameter; the parameters "
                         f"are {', '.join(paths)}")
    flags = [any(_prefix_match(p, prefix) for prefix in prefixes) for p in paths]
  elif callable(frozen):
    flags = [bool(frozen(p)) for p in paths]
  else:
    mask_leaves, mask_def = jax.tree.flatten(frozen)
    if mask_def != treedef:
      raise ValueError(f"the frozen mask must have the structure of the params: got "
                       f"{mask_def}, params have {treedef}")
    flags = [bool(m) for m in mask_leaves]
  return jax.tree.unflatten(treedef, flags)


def frozen_paths(params: Params, frozen: FrozenSpec) -> list[str]:
  """The paths (``"layers/0/W"``) of the leaves that ``frozen`` freezes."""
  leaves, _ = jax.tree_util.tree_flatten_with_path(params)
  flags = jax.tree.leaves(frozen_mask(params, frozen))
  return [path_str(kp) for (kp, _), f in zip(leaves, flags) if f]
