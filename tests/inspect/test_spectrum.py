"""The top of the Hessian spectrum by Lanczos on hand Hessian-vector products, against a
dense eigendecomposition of jax.hessian."""

import jax
import jax.flatten_util
import jax.numpy as jnp
import numpy as np
import pytest

import handgrad as hg
from second_order_testing import mixed_batch, mixed_loss, mixed_params


pytestmark = pytest.mark.usefixtures("x64")  # tests/conftest.py


def test_top_hessian_eigenvalues_match_dense_eigendecomposition():
  params, (x, y) = mixed_params(), mixed_batch()
  loss = lambda p: mixed_loss(p, x, y)
  flat_p, unravel = jax.flatten_util.ravel_pytree(params)
  exact = np.linalg.eigvalsh(np.asarray(jax.hessian(lambda f: loss(unravel(f)))(flat_p)))[::-1]
  spectrum = hg.top_hessian_eigenvalues(loss, params, k=3, iterations=flat_p.size)
  np.testing.assert_allclose(spectrum.eigenvalues, exact[:3], rtol=1e-6, atol=1e-9)


def test_quadratic_spectrum_is_its_diagonal():
  # f(p) = ½ Σ dᵢ pᵢ²: the Hessian is diag(d), negative entries included.
  d = jnp.array([5.0, -2.0, 3.0, 0.5, 1.0])
  spectrum = hg.inspect.top_hessian_eigenvalues(lambda p: 0.5 * jnp.sum(d * p["w"] ** 2),
                                                {"w": jnp.ones(5)}, k=2, iterations=5)
  np.testing.assert_allclose(spectrum.eigenvalues, [5.0, 3.0], rtol=1e-10)
  np.testing.assert_allclose(spectrum.ritz_values, np.sort(np.asarray(d)), rtol=1e-10, atol=1e-12)
  assert spectrum.iterations == 5


def test_iterations_capped_at_the_parameter_count():
  spectrum = hg.top_hessian_eigenvalues(lambda w: jnp.sum(w ** 4), jnp.arange(1.0, 4.0),
                                        k=1, iterations=50)
  assert spectrum.iterations <= 3
  np.testing.assert_allclose(spectrum.eigenvalues, [12.0 * 3.0 ** 2], rtol=1e-10)
