"""``vjp``, ``grad``, ``value_and_grad`` and ``hessian`` with ``jax``'s contracts."""

from __future__ import annotations

import functools
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from handgrad._src import eager
from handgrad._src import engine
from handgrad._src import jaxpr as hj
from handgrad._src.types import PyTree


class TracedProgram:
  """A function traced to a jaxpr and run forward by the hand engine: the internal
  traced-program API that ``vjp``/``grad`` and every inspection tool (backward
  traces, zero-gradient reports, graphs) are built on.

  Attributes: ``frame`` (the engine's forward record; ``frame.jaxpr`` the traced
  jaxpr, ``frame.invars`` its argument variables), ``in_tree``/``in_avals`` and
  ``primals_flat`` (the flattened arguments), ``out_flat``/``out_avals`` and
  ``aux_flat`` (the flattened outputs), ``out``/``aux`` (as pytrees).

  ``raw_vjp(cts_flat)`` returns the flat input cotangents with ``None`` where no
  blame arrived (the parameter was not in the computation graph); ``vjp(cts)``, the
  public contract, turns those into zeros.  Observers attached with
  ``engine.observe`` around ``raw_vjp`` see every differentiated equation.
  """

  def __init__(self, fun: Callable, primals: Sequence[Any], has_aux: bool):
    flat, self.in_tree = jax.tree.flatten(primals)
    # Python scalars become (weakly typed) arrays, so rules always see arrays.
    flat = [x if isinstance(x, jax.Array) else jnp.asarray(x) for x in flat]
    store = {}

    def flat_fun(*flat_args):
      out = fun(*jax.tree.unflatten(self.in_tree, flat_args))
      if has_aux:
        if not (isinstance(out, tuple) and len(out) == 2):
          raise TypeError("has_aux=True requires the function to return a pair "
                          f"(output, aux), got {type(out).__name__}")
        out, aux = out
      else:
        aux = None
      out_flat, store["out_tree"] = jax.tree.flatten(out)
      aux_flat, store["aux_tree"] = jax.tree.flatten(aux)
      store["n_out"] = len(out_flat)
      return [*out_flat, *aux_flat]

    closed = jax.make_jaxpr(flat_fun)(*flat)
    self.out_tree, self.aux_tree = store["out_tree"], store["aux_tree"]
    n_out = store["n_out"]
    self.primals_flat = flat
    self.in_avals = [v.aval for v in closed.jaxpr.invars]
    active = [engine.is_float(a) for a in self.in_avals]
    outs, self.frame = engine.forward(closed.jaxpr, closed.consts, flat, active)
    self.out_avals = [v.aval for v in closed.jaxpr.outvars[:n_out]]
    self.out_flat, self.aux_flat = outs[:n_out], outs[n_out:]
    self.n_aux = len(self.aux_flat)

  @property
  def out(self):
    return jax.tree.unflatten(self.out_tree, self.out_flat)

  @property
  def aux(self):
    return jax.tree.unflatten(self.aux_tree, self.aux_flat)

  def raw_vjp(self, cts_flat: Sequence[Any]) -> list:
    # Backward equations are marked as such (as JAX marks its own), so profiles and
    # the saved-residuals report can tell them from the forward pass.
    with hj.backward_pass():
      return engine.backward(self.frame, [*cts_flat, *([None] * self.n_aux)])

  def vjp(self, cts: PyTree) -> tuple:
    cts_flat, tree = jax.tree.flatten(cts)
    if tree != self.out_tree:
      raise ValueError(f"vjp cotangent has tree structure {tree}, but the primal output "
                       f"has {self.out_tree}")
    for k, (ct, aval) in enumerate(zip(cts_flat, self.out_avals)):
      if tuple(np.shape(ct)) != tuple(aval.shape):
        raise ValueError(f"vjp cotangent {k} has shape {np.shape(ct)}, but the primal "
                         f"output has shape {aval.shape}")
    cts_in = self.raw_vjp(cts_flat)
    cts_in = [_zero_cotangent(aval) if ct is None else ct
              for ct, aval in zip(cts_in, self.in_avals)]
    return tuple(jax.tree.unflatten(self.in_tree, cts_in))


#: The former name of :class:`TracedProgram`.
Traced = TracedProgram


def _zero_cotangent(aval):
  if engine.is_float(aval):
    return engine.zeros(aval)
  # JAX's cotangent type for integer and boolean inputs.
  return np.zeros(aval.shape, dtype=jax.dtypes.float0)


def vjp(fun: Callable, *primals: Any, has_aux: bool = False) -> tuple[Any, ...]:
  """Like ``jax.vjp``, with every cotangent computed by the hand rules.

  Returns ``(out, vjp_fn)`` or ``(out, vjp_fn, aux)``; ``vjp_fn(ct)`` returns a tuple
  with one cotangent per primal (``float0`` zeros for integer and boolean primals).
  """
  traced = TracedProgram(fun, primals, has_aux)
  if has_aux:
    return traced.out, traced.vjp, traced.aux
  return traced.out, traced.vjp


def _argnums_tuple(argnums, nargs: int) -> tuple[int, ...]:
  nums = (argnums,) if isinstance(argnums, int) else tuple(argnums)
  for n in nums:
    if not isinstance(n, int):
      raise TypeError(f"argnums must be an int or a tuple of ints, got {argnums!r}")
    if not -nargs <= n < nargs:
      raise ValueError(f"argnums {argnums!r} out of range for a function called with "
                       f"{nargs} positional arguments")
  return tuple(n % nargs for n in nums)


def _check_inexact(args: Sequence[Any]) -> None:
  for leaf in jax.tree.leaves(args):
    dtype = jnp.result_type(leaf)
    if not jnp.issubdtype(dtype, jnp.inexact):
      raise TypeError(
          "grad requires real- or complex-valued inputs (input dtype that is a sub-dtype "
          f"of np.inexact), but got {dtype.name}. If you want to use Boolean- or "
          "integer-valued inputs, use handgrad.vjp.")


def _check_scalar(out) -> None:
  shape = np.shape(out)
  if shape != ():
    raise TypeError(f"Gradient only defined for scalar-output functions. Output had "
                    f"shape: {shape}.")
  dtype = jnp.result_type(out)
  if not jnp.issubdtype(dtype, jnp.floating):
    raise TypeError("grad requires real-valued outputs (output dtype that is a sub-dtype "
                    f"of np.floating), but got {dtype.name}.")


def traced_for_argnums(fun: Callable, args: tuple, kwargs: dict, argnums,
                       has_aux: bool) -> tuple[TracedProgram, tuple[int, ...]]:
  nums = _argnums_tuple(argnums, len(args))
  dyn = tuple(args[n] for n in nums)
  _check_inexact(dyn)

  def partial_fun(*dyn_args):
    full = list(args)
    for n, a in zip(nums, dyn_args):
      full[n] = a
    return fun(*full, **kwargs)

  return TracedProgram(partial_fun, dyn, has_aux), nums


def value_and_grad(fun: Callable, argnums: int | Sequence[int] = 0,
                   has_aux: bool = False) -> Callable[..., tuple[Any, Any]]:
  """Like ``jax.value_and_grad``: returns ``(value, grad)`` or ``((value, aux), grad)``.

  Called eagerly (concrete arguments, outside ``jit``/``vmap``), the traced forward
  and backward are compiled once per call signature and reused (see
  :mod:`handgrad._src.eager` for the key and its guards); under a transformation it
  traces inline, as ``jax.value_and_grad`` does.  As under ``jax.jit``, a repeated
  call does not re-run the function's Python code, so its side effects happen once
  per signature, and state the function reads other than its arguments (closure cells
  and globals are checked; object attributes are not) must not change between calls.
  """

  @functools.wraps(fun)
  def value_and_grad_fun(*args, **kwargs):
    nums = _argnums_tuple(argnums, len(args))
    _check_inexact(tuple(args[n] for n in nums))
    tag = ("value_and_grad", nums, isinstance(argnums, int), has_aux)
    return eager.call(fun, tag, args, kwargs, nums, compute)

  def compute(f, args, kwargs):
    traced, _ = traced_for_argnums(f, args, kwargs, argnums, has_aux)
    out = traced.out
    _check_scalar(out)
    g = traced.vjp(lax.full((), 1, jnp.result_type(out)))
    g = g[0] if isinstance(argnums, int) else g
    return ((out, traced.aux) if has_aux else out), g

  return value_and_grad_fun


def grad(fun: Callable, argnums: int | Sequence[int] = 0,
         has_aux: bool = False) -> Callable[..., Any]:
  """Like ``jax.grad``: the gradient of a scalar function, by the hand rules."""
  vg = value_and_grad(fun, argnums, has_aux)

  @functools.wraps(fun)
  def grad_fun(*args, **kwargs):
    (value, g) = vg(*args, **kwargs)
    return (g, value[1]) if has_aux else g

  return grad_fun

