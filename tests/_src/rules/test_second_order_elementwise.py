"""Second order through the elementwise, complex, FFT and special-function rules: the
hand backward pass is itself differentiated by hand and equals ``jax.grad`` of
``jax.grad`` (each rule is written in ops that have rules)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

import handgrad as hg

FUNS = {
    "sin": jnp.sin, "tanh": jnp.tanh, "logistic": jax.nn.sigmoid, "log1p": jnp.log1p,
    "pow": lambda x: x ** 2.5, "integer_pow": lambda x: x ** 3, "sqrt": jnp.sqrt,
    "atanh": lambda x: jnp.arctanh(x / 3), "erfc": lax.erfc,
    "erf_inv": lambda x: lax.erf_inv(x / 3), "lgamma": lax.lgamma, "digamma": lax.digamma,
    "bessel_i0e": lax.bessel_i0e, "bessel_i1e": lax.bessel_i1e,
    "igamma": lambda x: lax.igamma(2.0, x), "betainc": lambda x: lax.betainc(2.0, 3.0, x / 3),
    "rfft": lambda x: jnp.abs(jnp.fft.rfft(x * jnp.arange(4.0))) ** 2,
    "complex abs": lambda x: jnp.abs(jnp.exp(1j * x) * x + 1),
    "real/imag/conj": lambda x: jnp.real(jnp.conj(jnp.sin(x + 0.5j * x)) * jnp.imag(1j * x * x)),
}


@pytest.mark.parametrize("name", sorted(FUNS))
def test_second_order_matches_jax(name):
  f = lambda x: jnp.sum(FUNS[name](x))
  outer = lambda grad: grad(lambda x: jnp.sum(grad(f)(x) * jnp.cos(x)))
  x = jnp.asarray([0.4, 0.9, 1.3, 2.0])
  hand, ref = jax.jit(lambda x: (outer(hg.grad)(x), outer(jax.grad)(x)))(x)
  np.testing.assert_allclose(np.asarray(hand), np.asarray(ref), rtol=1e-5, atol=2e-5)
