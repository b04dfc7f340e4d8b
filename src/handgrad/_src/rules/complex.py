"""Complex numbers: real and imaginary parts, building a complex number, conjugation.

JAX's convention (see :mod:`handgrad._src.registry`): the VJP is the transpose of the
R-linear JVP under the pairing ``⟨a, b⟩ = Re Σ a·b``.  None of these four maps is
holomorphic, so their cotangents come from that pairing, not from a derivative:

* ``z = Re x``:  ``Re(g·dz) = Re(g·dx)`` for real ``g``, so ``dx = g + 0i``;
* ``z = Im x``:  ``g·Im dx = Re(−i·g·dx)``, so ``dx = −i·g``;
* ``z = x + i·y``:  ``Re(g·(dx + i·dy)) = Re g·dx − Im g·dy``, so ``dx = Re g``,
  ``dy = −Im g``;
* ``z = conj x``:  ``Re(g·conj dx) = Re(conj g·dx)``, so ``dx = conj g``; a real ``x``
  (``conj`` then makes ``x + 0i``) gets ``dx = Re g``.

(The complex ``abs`` and ``sign`` rules live with the real ones in ``arithmetic.py``.)
"""

from __future__ import annotations

import jax.numpy as jnp
from jax import lax

from handgrad._src.registry import defvjp_each, defvjp_unary
from handgrad._src.rules._common import zeros_like

# z = Re x:  dx = g + 0i
defvjp_unary("real", lambda g, ans, x: lax.complex(g, zeros_like(g)))
# z = Im x:  dx = 0 − i·g
defvjp_unary("imag", lambda g, ans, x: lax.complex(zeros_like(g), -g))
# z = x + i·y:  dx = Re g,  dy = −Im g   (each summed back over its broadcast dimensions)
defvjp_each("complex", lambda g, ans, x, y: lax.real(g), lambda g, ans, x, y: -lax.imag(g))


# z = conj x:  dx = conj g  (complex x);  dx = Re g  (real x, z = x + 0i).
def _conj_vjp(g, ans, x, *, input_dtype):
  if jnp.issubdtype(input_dtype, jnp.complexfloating):
    return lax.conj(g)
  return lax.real(g)


defvjp_unary("conj", _conj_vjp)
