"""The top of the Hessian spectrum by Lanczos on hand Hessian-vector products, against a
dense eigendecomposition of jax.hessian."""

import jax
import jax.flatten_util
import jax.numpy as jnp
import numpy as np
import pytest

import handgrad as hg


@pytest.fixture(autouse=True)
def x64():
  with jax.enable_x64(True):
    yield


def _mixed_loss(params, x, y):
  """Dense, layer norm and softmax cross-entropy."""
  h = hg.ops.dense(x, params["W1"], params["b1"])
  h = hg.ops.layer_norm(h, params["g"], params["beta"])
  h = jnp.tanh(h)
  return hg.ops.softmax_cross_entropy(hg.ops.dense(h, params["W2"], params["b2"]), y)


def _mixed_params():
  k = jax.random.split(jax.random.key(0), 4)
  return {"W1": jax.random.normal(k[0], (3, 4)) * 0.5, "b1": jnp.full(4, 0.1),
          "g": jnp.linspace(0.8, 1.2, 4), "beta": jnp.zeros(4),
          "W2": jax.random.normal(k[1], (4, 3)) * 0.5, "b2": jnp.zeros(3)}


def _mixed_batch():
  return jax.random.normal(jax.random.key(5), (6, 3)), jnp.array([0, 1, 2, 0, 1, 2])


def test_top_hessian_eigenvalues_match_dense_eigendecomposition():
  params, (x, y) = _mixed_params(), _mixed_batch()
  loss = lambda p: _mixed_loss(p, x, y)
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
