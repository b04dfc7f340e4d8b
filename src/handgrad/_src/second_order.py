"""Second derivatives from the hand backward pass: Hessians, Hessian-vector products,
the top of the Hessian spectrum, and what the backward pass saves.

The hand backward pass is an ordinary JAX program, so it can be differentiated again:

* forward over hand reverse: ``jax.jacfwd(handgrad.grad(f))`` (``hessian``) and
  ``jax.jvp(handgrad.grad(f), (x,), (v,))`` (``hvp``) — the cheapest way to a Hessian
  or an HVP, one forward-mode pass over the backward pass;
* hand reverse over hand reverse: ``handgrad.grad(lambda x: vdot(handgrad.grad(f)(x), v))``
  (``hvp_reverse``) — the seed's double backprop, with no JAX autodiff at all.
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple, Sequence

import jax
import jax.flatten_util
import jax.numpy as jnp
import numpy as np

from handgrad._src import api
from handgrad._src import jaxpr as hj


def hessian(fun: Callable, argnums: int | Sequence[int] = 0, has_aux: bool = False):
  """Forward over hand reverse: ``jax.jacfwd(handgrad.grad(fun))``, like ``jax.hessian``."""
  return jax.jacfwd(api.grad(fun, argnums, has_aux), argnums, has_aux=has_aux)


def _tree_vdot(a, b):
  return sum(jnp.vdot(x, y) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


def hvp(fun: Callable, primals: Any, tangents: Any) -> Any:
  """Hessian-vector product H(x)·v of a scalar ``fun`` at ``x``, without forming H.

  ``primals`` and ``tangents`` are pytrees shaped like ``fun``'s (single) argument.
  Forward over hand reverse: one ``jax.jvp`` of the hand gradient.
  """
  return jax.jvp(api.grad(fun), (primals,), (tangents,))[1]


def hvp_reverse(fun: Callable, primals: Any, tangents: Any) -> Any:
  """H(x)·v by hand reverse over hand reverse: the gradient of ⟨∇f(x), v⟩."""
  return api.grad(lambda x: _tree_vdot(api.grad(fun)(x), tangents))(primals)


class Spectrum(NamedTuple):
  """Top Hessian eigenvalues (largest algebraic first) and the Lanczos tridiagonal."""
  eigenvalues: np.ndarray  # [k]
  ritz_values: np.ndarray  # [iterations] all Ritz values, ascending
  iterations: int


def top_hessian_eigenvalues(fun: Callable, params: Any, *, k: int = 3, iterations: int = 20,
                            seed: int = 0) -> Spectrum:
  """The ``k`` largest eigenvalues of the Hessian of scalar ``fun`` at ``params``.

  Lanczos iteration on Hessian-vector products (forward over hand reverse), with full
  reorthogonalisation (``iterations`` is small, so storing the basis is cheap and keeps
  the Ritz values free of ghost copies).  The extreme Ritz values converge first, so a
  few tens of iterations give the top of the spectrum of a network with many
  thousands of parameters.  ``fun`` takes the params pytree only (close over the batch).
  """
  flat, unravel = jax.flatten_util.ravel_pytree(params)
  n = flat.size
  iterations = int(min(iterations, n))
  matvec = jax.jit(lambda v: jax.flatten_util.ravel_pytree(hvp(fun, params, unravel(v)))[0])
  v = jax.random.normal(jax.random.key(seed), (n,), flat.dtype)
  v = v / jnp.linalg.norm(v)
  basis = [v]
  alphas, betas = [], []
  w_prev, beta = jnp.zeros_like(v), 0.0
  for j in range(iterations):
    w = matvec(basis[j]) - beta * w_prev
    alpha = jnp.vdot(w, basis[j])
    w = w - alpha * basis[j]
    stacked = jnp.stack(basis)
    w = w - stacked.T @ (stacked @ w)  # full reorthogonalisation
    alphas.append(float(alpha))
    beta = float(jnp.linalg.norm(w))
    if j == iterations - 1 or beta < 1e-10:
      break
    betas.append(beta)
    w_prev = basis[j]
    basis.append(w / beta)
  m = len(alphas)
  tri = np.diag(alphas) + np.diag(betas[:m - 1], 1) + np.diag(betas[:m - 1], -1)
  ritz = np.linalg.eigvalsh(tri)
  return Spectrum(ritz[::-1][:k].copy(), ritz, m)


class Residual(NamedTuple):
  """One value the backward pass reads from the forward pass."""
  shape: tuple[int, ...]
  dtype: str
  source: str  # "argument 0 (params['W'])" or "output of dot_general at file:line"

  @property
  def nbytes(self) -> int:
    return int(np.prod(self.shape, dtype=np.int64)) * np.dtype(self.dtype).itemsize


def saved_residuals(fun: Callable, *args: Any) -> list[Residual]:
  """What the hand backward pass of scalar ``fun`` keeps from its forward pass.

  Like ``jax.ad_checkpoint.saved_residuals`` for ``jax.grad``: every array that a
  backward-pass equation reads from the forward pass — arguments and forward outputs.
  Inside a ``jax.checkpoint`` region only the region's inputs and the values its policy
  saves are read; the rest is recomputed in the backward pass.
  """
  flat_args, in_tree = jax.tree.flatten(args)
  paths = [jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_flatten_with_path(args)[0]]

  def full(*flat):
    return api.grad(fun, tuple(range(len(args))))(*jax.tree.unflatten(in_tree, flat))

  closed = jax.make_jaxpr(full)(*flat_args)
  out = []
  for v, arg, producer in hj.backward_reads(closed.jaxpr):
    if arg is not None:
      src = f"argument {paths[arg]}"
    else:
      loc = hj.source_line(producer)
      src = (f"output of {producer.primitive.name}"
             + (f" '{producer.params['name']}'" if "name" in producer.params else "")
             + (f" at {loc}" if loc else ""))
    out.append(Residual(tuple(v.aval.shape), str(v.aval.dtype), src))
  return out


def print_saved_residuals(fun: Callable, *args: Any) -> None:
  """Prints ``saved_residuals`` one per line, like ``jax.ad_checkpoint.print_saved_residuals``."""
  total = 0
  for r in saved_residuals(fun, *args):
    total += r.nbytes
    print(f"{r.dtype}{list(r.shape)}  {r.source}")
  print(f"total {total:,} bytes")
