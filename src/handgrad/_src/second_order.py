"""Second derivatives from the hand backward pass: Hessians and Hessian-vector products.

(What they are used for in inspection lives in ``handgrad._src.inspect``: the top of
the Hessian spectrum in ``spectrum.py``, what the backward pass saves in
``residuals.py``.)

The hand backward pass is an ordinary JAX program, so it can be differentiated again:

* forward over hand reverse: ``jax.jacfwd(handgrad.grad(f))`` (``hessian``) and
  ``jax.jvp(handgrad.grad(f), (x,), (v,))`` (``hvp``) — the cheapest way to a Hessian
  or an HVP, one forward-mode pass over the backward pass;
* hand reverse over hand reverse: ``handgrad.grad(lambda x: vdot(handgrad.grad(f)(x), v))``
  (``hvp_reverse``) — the seed's double backprop, with no JAX autodiff at all.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp

from handgrad._src import api


def hessian(fun: Callable, argnums: int | Sequence[int] = 0,
            has_aux: bool = False) -> Callable[..., Any]:
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
