"""handgrad.vjp / grad / value_and_grad / hessian keep jax's contracts."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import handgrad as hg


def seed_loss(w, b, x):
  """The seed's autograd example: z = w·x + b, loss = (relu(z) − 5)²."""
  z = w * x + b
  return (jax.nn.relu(z) - 5.0) ** 2


def test_seed_scalar_example():
  dw, db, dx = hg.grad(seed_loss, argnums=(0, 1, 2))(3.0, 1.0, 2.0)
  assert (float(dw), float(db), float(dx)) == (8.0, 4.0, 12.0)
  chex.assert_trees_all_close((dw, db, dx), jax.grad(seed_loss, argnums=(0, 1, 2))(3.0, 1.0, 2.0))


@pytest.mark.parametrize("argnums", [0, 1, (0,), (1, 0), (0, 2), -1])
def test_argnums_match_jax(argnums):
  f = lambda a, b, c: jnp.sum(jnp.sin(a) * b ** 2 + c * a)
  args = (jnp.arange(3.0), jnp.ones(3) * 0.5, jnp.float32(2.0))
  chex.assert_trees_all_close(hg.grad(f, argnums)(*args), jax.grad(f, argnums)(*args),
                              rtol=1e-5, atol=1e-5)


def test_pytrees_in_and_out_and_aux():
  params = {"w": jnp.ones((3, 2)), "layers": [{"b": jnp.arange(2.0)}, (jnp.float32(3.0),)]}

  def f(p, x):
    h = x @ p["w"] + p["layers"][0]["b"]
    loss = jnp.sum(jnp.tanh(h)) * p["layers"][1][0]
    return loss, {"h": h, "n": jnp.int32(7)}

  x = jnp.linspace(-1.0, 1.0, 6).reshape(2, 3)
  (val, aux), g = hg.value_and_grad(f, has_aux=True)(params, x)
  (val_r, aux_r), g_r = jax.value_and_grad(f, has_aux=True)(params, x)
  chex.assert_trees_all_close((val, aux, g), (val_r, aux_r, g_r), rtol=1e-5, atol=1e-5)
  g2, aux2 = hg.grad(f, has_aux=True)(params, x)
  chex.assert_trees_all_close((g2, aux2), (g_r, aux_r), rtol=1e-5, atol=1e-5)


def test_vjp_pytree_output_and_integer_primal():
  f = lambda x, i: {"a": x * i, "b": (jnp.sin(x),)}
  x, i = jnp.arange(3.0), jnp.arange(3)
  out, vjp_fn = hg.vjp(f, x, i)
  out_r, vjp_r = jax.vjp(f, x, i)
  ct = {"a": jnp.ones(3), "b": (jnp.arange(3.0),)}
  dx, di = vjp_fn(ct)
  dx_r, di_r = vjp_r(ct)
  chex.assert_trees_all_close((out, dx), (out_r, dx_r))
  assert di.dtype == jax.dtypes.float0 and di.shape == di_r.shape


def test_vjp_has_aux():
  out, vjp_fn, aux = hg.vjp(lambda x: (x ** 2, x + 1), jnp.float32(3.0), has_aux=True)
  assert float(out) == 9.0 and float(aux) == 4.0
  assert float(vjp_fn(jnp.float32(1.0))[0]) == 6.0


def test_vjp_rejects_wrong_cotangent_structure():
  _, vjp_fn = hg.vjp(lambda x: (x, x), jnp.ones(2))
  with pytest.raises(ValueError, match="tree structure"):
    vjp_fn(jnp.ones(2))
  _, vjp_fn = hg.vjp(lambda x: x * 2, jnp.ones(2))
  with pytest.raises(ValueError, match="shape"):
    vjp_fn(jnp.ones(3))


@pytest.mark.parametrize("bad", [3, jnp.arange(3), True])
def test_grad_of_integer_input_raises_type_error_like_jax(bad):
  f = lambda x: jnp.sum(x * 2.0)
  with pytest.raises(TypeError, match="real- or complex-valued inputs"):
    hg.grad(f)(bad)
  with pytest.raises(TypeError):
    jax.grad(f)(bad)


def test_grad_requires_scalar_float_output():
  with pytest.raises(TypeError, match="scalar-output"):
    hg.grad(lambda x: x * 2)(jnp.ones(3))
  with pytest.raises(TypeError, match="real-valued outputs"):
    hg.grad(lambda x: jnp.int32(1))(1.0)


def test_argnums_out_of_range():
  with pytest.raises(ValueError, match="out of range"):
    hg.grad(lambda x: x, argnums=2)(1.0)


def test_has_aux_requires_pair():
  with pytest.raises(TypeError, match="pair"):
    hg.grad(lambda x: x, has_aux=True)(1.0)


def test_output_independent_of_input_gives_zeros():
  g = hg.grad(lambda x, y: jnp.sum(y ** 2), argnums=0)(jnp.ones(3), jnp.ones(2))
  chex.assert_trees_all_equal(g, jnp.zeros(3))


def test_stop_gradient_cuts_blame():
  f = lambda x: jnp.sum(x * jax.lax.stop_gradient(x) + jax.lax.stop_gradient(x ** 2))
  x = jnp.arange(1.0, 4.0)
  chex.assert_trees_all_close(hg.grad(f)(x), jax.grad(f)(x))
  chex.assert_trees_all_close(hg.grad(f)(x), x)


def test_closure_over_arrays_is_constant():
  w = jnp.arange(6.0).reshape(2, 3)
  f = lambda x: jnp.sum(jnp.tanh(x @ w))
  x = jnp.ones((4, 2))
  chex.assert_trees_all_close(hg.grad(f)(x), jax.grad(f)(x), rtol=1e-5, atol=1e-5)


def test_kwargs_are_not_differentiated():
  f = lambda x, *, scale: jnp.sum(x ** 2) * scale
  chex.assert_trees_all_close(hg.grad(f)(jnp.ones(2), scale=3.0), jnp.full(2, 6.0))


def test_python_scalars_and_numpy_inputs():
  f = lambda x, y: x * y + jnp.sin(x)
  chex.assert_trees_all_close(hg.grad(f, (0, 1))(2.0, np.float32(3.0)),
                              jax.grad(f, (0, 1))(2.0, np.float32(3.0)), rtol=1e-5, atol=1e-5)
