"""The top of the Hessian spectrum, by Lanczos iteration on hand Hessian-vector products."""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

import jax
import jax.flatten_util
import jax.numpy as jnp
import numpy as np

from handgrad._src.second_order import hvp


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
