"""Checks of the hand engine against ``jax.vjp`` / ``jax.grad`` and finite differences.

These are the tools the test suite uses, shipped so users can check their own rules:

* ``check_vjp(fun, *primals)``: ``handgrad.vjp`` versus ``jax.vjp`` on random cotangents.
* ``check_grad(fun, *args)``: ``handgrad.grad`` versus ``jax.grad`` and, in float64,
  versus central finite differences.
* ``numerical_gradient(f, x, eps)`` and ``gradient_check(analytic, numerical)``: the
  seed's numerical gradient check, done in float64 with central differences.

Tolerances (rtol / atol) follow the dtype of the values compared: float64 1e-7 / 1e-7,
float32 1e-5 / 1e-5, bfloat16 1.6e-2 / 1e-3, float16 1e-3 / 1e-3.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from handgrad._src import api

TOLERANCES: dict[str, tuple[float, float]] = {  # dtype name -> (rtol, atol)
    "float64": (1e-7, 1e-7),
    "float32": (1e-5, 1e-5),
    "bfloat16": (1.6e-2, 1e-3),
    "float16": (1e-3, 1e-3),
    "complex128": (1e-7, 1e-7),  # complex values: the tolerance of their parts' dtype
    "complex64": (1e-5, 1e-5),
}


def tolerance(dtype) -> tuple[float, float]:
  """(rtol, atol) for comparing values of ``dtype``."""
  return TOLERANCES.get(jnp.dtype(dtype).name, TOLERANCES["float32"])


@dataclasses.dataclass(frozen=True)
class CheckReport:
  """Largest disagreement between the hand engine and a reference."""
  name: str
  reference: str  # "jax.vjp", "jax.grad" or "finite differences"
  max_abs_err: float
  max_rel_err: float
  rtol: float
  atol: float
  passed: bool

  def __str__(self) -> str:
    status = "ok" if self.passed else "FAILED"
    return (f"{self.name}: vs {self.reference}: max abs err {self.max_abs_err:.2e}, "
            f"max rel err {self.max_rel_err:.2e} (rtol {self.rtol:g}, atol {self.atol:g}) "
            f"{status}")


def compare(name: str, reference: str, actual: Any, expected: Any,
            rtol: float | None = None, atol: float | None = None) -> CheckReport:
  """Compares two pytrees leaf by leaf with ``|a − e| <= atol + rtol·|e|``.

  Non-finite values must agree exactly in position and kind (NaN with NaN, +inf with
  +inf).  Leaves of dtype float0 (cotangents of integer inputs) are skipped.
  """
  a_leaves, a_tree = jax.tree.flatten(actual)
  e_leaves, e_tree = jax.tree.flatten(expected)
  if a_tree != e_tree:
    raise ValueError(f"{name}: result has structure {a_tree}, reference has {e_tree}")
  max_abs = max_rel = 0.0
  passed = True
  tol_dtype = None
  for a, e in zip(a_leaves, e_leaves):
    a, e = np.asarray(a), np.asarray(e)
    if e.dtype == jax.dtypes.float0:
      continue
    if a.shape != e.shape:
      raise ValueError(f"{name}: result has shape {a.shape}, reference has {e.shape}")
    tol_dtype = e.dtype if tol_dtype is None else tol_dtype
    r, t = tolerance(e.dtype)
    rtol_, atol_ = (r if rtol is None else rtol), (t if atol is None else atol)
    wide = np.complex128 if np.iscomplexobj(a) or np.iscomplexobj(e) else np.float64
    a64, e64 = a.astype(wide), e.astype(wide)
    finite = np.isfinite(e64)
    if not np.array_equal(np.isfinite(a64), finite) or not np.array_equal(
        a64[~finite], e64[~finite], equal_nan=True):
      passed = False
      max_abs = max_rel = float("inf")
      continue
    if not finite.any():
      continue
    err = np.abs(a64[finite] - e64[finite])
    max_abs = max(max_abs, float(err.max(initial=0.0)))
    max_rel = max(max_rel, float((err / np.maximum(np.abs(e64[finite]), 1e-30)).max(initial=0.0)))
    passed &= bool(np.all(err <= atol_ + rtol_ * np.abs(e64[finite])))
  r, t = tolerance(tol_dtype if tol_dtype is not None else np.float32)
  return CheckReport(name, reference, max_abs, max_rel, r if rtol is None else rtol,
                     t if atol is None else atol, passed)


def _random_like(key, x):
  x = jnp.asarray(x)
  if not jnp.issubdtype(x.dtype, jnp.inexact):
    return np.zeros(x.shape, dtype=jax.dtypes.float0)
  return jax.random.normal(key, x.shape, x.dtype)


def random_cotangents(tree: Any, seed: int = 0) -> Any:
  """Standard-normal cotangents shaped like ``tree`` (float0 for integer leaves)."""
  leaves, treedef = jax.tree.flatten(tree)
  keys = jax.random.split(jax.random.key(seed), max(len(leaves), 1))
  return jax.tree.unflatten(treedef, [_random_like(k, x) for k, x in zip(keys, leaves)])


def check_vjp(fun: Callable, *primals: Any, seed: int = 0, name: str | None = None,
              rtol: float | None = None, atol: float | None = None,
              raise_on_fail: bool = True) -> CheckReport:
  """``handgrad.vjp(fun, *primals)`` against ``jax.vjp`` on random output cotangents.

  Returns the report; raises ``AssertionError`` with it when the check fails and
  ``raise_on_fail`` is set.  The outputs must agree too.
  """
  name = name or getattr(fun, "__name__", "fun")
  out_ref, vjp_ref = jax.vjp(fun, *primals)
  out, vjp_hand = api.vjp(fun, *primals)
  cts = random_cotangents(out_ref, seed)
  report = compare(name, "jax.vjp", (out, vjp_hand(cts)), (out_ref, vjp_ref(cts)), rtol, atol)
  if raise_on_fail and not report.passed:
    raise AssertionError(str(report))
  return report


def check_grad(fun: Callable, *args: Any, argnums: int | tuple[int, ...] = 0,
               name: str | None = None, rtol: float | None = None, atol: float | None = None,
               finite_differences: bool = True, eps: float = 1e-6,
               raise_on_fail: bool = True) -> list[CheckReport]:
  """``handgrad.grad`` against ``jax.grad``, and against central finite differences
  when every differentiated argument is float64.  Returns one report per reference.
  """
  name = name or getattr(fun, "__name__", "fun")
  hand = api.grad(fun, argnums)(*args)
  reports = [compare(name, "jax.grad", hand, jax.grad(fun, argnums)(*args), rtol, atol)]
  nums = (argnums,) if isinstance(argnums, int) else argnums
  diff_args = [args[n] for n in nums]
  if finite_differences and all(jnp.result_type(leaf) == jnp.float64
                                for leaf in jax.tree.leaves(diff_args)):
    numeric = []
    for n in nums:
      def f_n(x, n=n):
        full = list(args)
        full[n] = x
        return fun(*full)
      numeric.append(_tree_numerical_gradient(f_n, args[n], eps))
    numeric = numeric[0] if isinstance(argnums, int) else tuple(numeric)
    # Central differences are accurate to O(eps²) plus rounding O(1e-16/eps).
    reports.append(compare(name, "finite differences", hand, numeric,
                           rtol=1e-5 if rtol is None else rtol,
                           atol=1e-6 if atol is None else atol))
  if raise_on_fail:
    failed = [r for r in reports if not r.passed]
    if failed:
      raise AssertionError("\n".join(map(str, failed)))
  return reports


def _tree_numerical_gradient(f: Callable, tree: Any, eps: float) -> Any:
  leaves, treedef = jax.tree.flatten(tree)
  grads = []
  for i, leaf in enumerate(leaves):
    def f_leaf(x, i=i):
      new = list(leaves)
      new[i] = x
      return f(jax.tree.unflatten(treedef, new))
    grads.append(numerical_gradient(f_leaf, leaf, eps))
  return jax.tree.unflatten(treedef, grads)


def numerical_gradient(f: Callable, x: Any, eps: float = 1e-6) -> np.ndarray:
  """Central differences ``(f(x + eps·e_i) − f(x − eps·e_i)) / 2eps`` for every i, in float64.

  ``f`` maps an array shaped like ``x`` to a scalar.  Costs 2·x.size evaluations: this is
  why backpropagation (one forward and one backward pass) matters.
  """
  with jax.enable_x64(True):
    x = np.array(x, dtype=np.float64)
    grad = np.zeros_like(x)
    for idx in np.ndindex(*x.shape):
      x_plus, x_minus = x.copy(), x.copy()
      x_plus[idx] += eps
      x_minus[idx] -= eps
      grad[idx] = (float(f(jnp.asarray(x_plus))) - float(f(jnp.asarray(x_minus)))) / (2 * eps)
  return grad


def gradient_check(analytic: Any, numerical: Any, threshold: float = 1e-5) -> tuple[float, bool]:
  """The seed's relative error ``max |a − n| / (|a| + |n| + 1e-7)`` and whether it is
  below ``threshold``."""
  a = np.asarray(analytic, dtype=np.float64)
  n = np.asarray(numerical, dtype=np.float64)
  if a.shape != n.shape:
    raise ValueError(f"gradient_check: analytic shape {a.shape} != numerical shape {n.shape}")
  rel = float(np.max(np.abs(a - n) / (np.abs(a) + np.abs(n) + 1e-7), initial=0.0))
  return rel, rel < threshold
