"""The hand engine under jit, vmap, jacfwd and itself; nested jaxprs."""

import chex
import jax
import jax.numpy as jnp
import pytest
from jax import lax

import handgrad as hg


def mlp_loss(params, x, y):
  h = x
  for layer in params[:-1]:
    h = jax.nn.relu(h @ layer["W"] + layer["b"])
  logits = h @ params[-1]["W"] + params[-1]["b"]
  logp = jax.nn.log_softmax(logits)
  return -jnp.mean(jnp.take_along_axis(logp, y[:, None], axis=1))


def make_mlp(key, dims, dtype=jnp.float32):
  params = []
  for k, (m, n) in zip(jax.random.split(key, len(dims) - 1), zip(dims[:-1], dims[1:])):
    params.append({"W": jax.random.normal(k, (m, n), dtype) / jnp.sqrt(m),
                   "b": jnp.full((n,), 0.01, dtype)})
  return params


def batch(key, n, d, classes, dtype=jnp.float32):
  kx, ky = jax.random.split(key)
  return jax.random.normal(kx, (n, d), dtype), jax.random.randint(ky, (n,), 0, classes)


def test_jit_matches_eager_and_jax():
  params = make_mlp(jax.random.key(0), [6, 8, 4])
  x, y = batch(jax.random.key(1), 5, 6, 4)
  eager = hg.grad(mlp_loss)(params, x, y)
  jitted = jax.jit(hg.grad(mlp_loss))(params, x, y)
  chex.assert_trees_all_close(eager, jitted, rtol=1e-6, atol=1e-6)
  chex.assert_trees_all_close(jitted, jax.grad(mlp_loss)(params, x, y), rtol=1e-5, atol=1e-6)


def test_vmap_per_example_gradients():
  params = make_mlp(jax.random.key(0), [6, 8, 4])
  x, y = batch(jax.random.key(1), 5, 6, 4)
  per_example = lambda p, xi, yi: mlp_loss(p, xi[None], yi[None])
  hand = jax.vmap(hg.grad(per_example), in_axes=(None, 0, 0))(params, x, y)
  ref = jax.vmap(jax.grad(per_example), in_axes=(None, 0, 0))(params, x, y)
  chex.assert_trees_all_close(hand, ref, rtol=1e-5, atol=1e-6)


def test_grad_of_grad_seed_cube(x64):
  """The seed's double backprop: y = x³, dy/dx = 3x², d²y/dx² = 6x."""
  x = jnp.linspace(-2.0, 2.0, 10)
  f = lambda x: jnp.sum(x ** 3)
  chex.assert_trees_all_close(hg.grad(f)(x), 3 * x ** 2)
  chex.assert_trees_all_close(hg.grad(lambda x: jnp.sum(hg.grad(f)(x)))(x), 6 * x)
  chex.assert_trees_all_close(jnp.diag(hg.hessian(f)(x)), 6 * x)
  chex.assert_trees_all_close(hg.hessian(f)(x), jax.hessian(f)(x))


def test_hessian_of_small_mlp_loss(x64):
  params = make_mlp(jax.random.key(2), [3, 4, 3], jnp.float64)
  x, y = batch(jax.random.key(3), 6, 3, 3, jnp.float64)
  loss = lambda W: mlp_loss([{"W": W, "b": params[0]["b"]}, params[1]], x, y)
  W = params[0]["W"]
  chex.assert_trees_all_close(hg.hessian(loss)(W), jax.hessian(loss)(W), rtol=1e-7, atol=1e-9)
  # Reverse over hand reverse, column by column.
  hvp = lambda v: hg.grad(lambda W: jnp.vdot(hg.grad(loss)(W), v))(W)
  v = jax.random.normal(jax.random.key(4), W.shape, jnp.float64)
  ref = jnp.tensordot(jax.hessian(loss)(W), v, axes=2)
  chex.assert_trees_all_close(hvp(v), ref, rtol=1e-7, atol=1e-9)


def test_grad_of_grad_through_layer_ops(x64):
  x = jax.random.normal(jax.random.key(0), (5, 3), jnp.float64)
  y = jnp.array([0, 1, 2, 1, 0])
  gamma, beta = jnp.ones(4) * 1.1, jnp.zeros(4) + 0.1

  def loss(W):
    h = hg.ops.layer_norm(hg.ops.dense(x, W, jnp.zeros(4)), gamma, beta)
    return hg.ops.softmax_cross_entropy(hg.ops.tanh(h), y)

  W = jax.random.normal(jax.random.key(1), (3, 4), jnp.float64)
  outer = lambda W: jnp.sum(hg.grad(loss)(W) ** 2)
  chex.assert_trees_all_close(hg.grad(outer)(W), jax.grad(lambda W: jnp.sum(jax.grad(loss)(W) ** 2))(W),
                              rtol=1e-7, atol=1e-10)
  chex.assert_trees_all_close(hg.hessian(loss)(W), jax.hessian(loss)(W), rtol=1e-7, atol=1e-10)


def test_jacfwd_of_hand_grad(x64):
  f = lambda x: jnp.sum(jnp.sin(x) * jnp.exp(x))
  x = jnp.linspace(-1, 1, 4)
  chex.assert_trees_all_close(jax.jacfwd(hg.grad(f))(x), jax.hessian(f)(x))


def test_custom_vjp_runs_the_users_backward():
  """The seed's custom autograd function: a ReLU whose backward the user wrote."""
  calls = []

  @jax.custom_vjp
  def custom_relu(x):
    return jnp.clip(x, 0)

  def fwd(x):
    return custom_relu(x), x

  def bwd(x, g):
    calls.append(1)
    return (jnp.where(x < 0, 0.0, g) * 3.0,)  # deliberately not the true derivative

  custom_relu.defvjp(fwd, bwd)
  f = lambda x: jnp.sum(custom_relu(x) ** 2)
  x = jnp.array([-1.0, 0.5, 2.0])
  chex.assert_trees_all_close(hg.grad(f)(x), jax.grad(f)(x))
  chex.assert_trees_all_close(hg.grad(f)(x), jnp.array([0.0, 3.0, 12.0]))
  assert calls


def test_custom_vjp_with_residuals_and_none_cotangent():
  @jax.custom_vjp
  def f(x, y):
    return jnp.sin(x) * y

  f.defvjp(lambda x, y: (f(x, y), (jnp.cos(x), y)), lambda r, g: (g * r[0] * r[1], None))
  loss = lambda x, y: jnp.sum(f(x, y))
  args = (jnp.arange(3.0), jnp.ones(3) * 2)
  chex.assert_trees_all_close(hg.grad(loss, (0, 1))(*args), jax.grad(loss, (0, 1))(*args))


def test_custom_vjp_python_scalar_residuals_reach_bwd_unchanged():
  """A forward's Python scalars among the residuals (equinox's filter_custom_vjp keeps its
  ``perturbed`` flags there) reach ``bwd`` as the Python values, as JAX passes them."""
  @jax.custom_vjp
  def f(x, y):
    return jnp.sin(x) * y, 2.0              # a constant output: a literal, used below

  def fwd(x, y):
    return f(x.value, y.value), (x.value, y.value, x.perturbed, 3)

  def bwd(res, g):
    x, y, x_perturbed, three = res
    assert isinstance(x_perturbed, bool) and isinstance(three, int), (x_perturbed, three)
    g, _ = g
    dx = g * jnp.cos(x) * y * three if x_perturbed else None
    return dx, g * jnp.sin(x)

  f.defvjp(fwd, bwd, symbolic_zeros=True)

  def loss(x, y):
    out, two = f(x, y)
    return jnp.sum(out * jnp.exp(two * y))
  args = (jnp.arange(3.0), jnp.ones(3) * 2)
  for argnums in [(0, 1), 1]:
    want = jax.grad(loss, argnums)(*args)
    chex.assert_trees_all_close(hg.grad(loss, argnums)(*args), want)
    chex.assert_trees_all_close(jax.jit(hg.grad(loss, argnums))(*args), want)


def test_custom_vjp_bwd_output_conventions_of_both_jax_lines():
  """JAX ≤ 0.11.0 returns a flat cotangent list from ``bwd``; later JAX (cts, logs)."""
  from handgrad._src.engine import _bwd_cotangents

  cts = [jnp.ones(2), None]
  assert _bwd_cotangents(cts) is cts
  assert _bwd_cotangents((cts, None)) is cts
  assert _bwd_cotangents((cts, {"norm": jnp.ones(())})) is cts
  # A two-argument rule's plain list of cotangents is not mistaken for (cts, logs).
  two = [jnp.ones(2), {"a": 1}]
  assert _bwd_cotangents(two) is two


@pytest.mark.parametrize("fn", [jax.nn.relu, jax.nn.relu6, jax.nn.softplus, jax.nn.log_sigmoid,
                                jax.nn.mish, jax.nn.silu, jax.nn.gelu,
                                lambda x: jax.nn.gelu(x, approximate=False)])
def test_custom_jvp_functions_keep_jax_conventions(fn):
  x = jnp.array([-3.0, -1.0, 0.0, 0.5, 6.0, 7.0])
  f = lambda x: jnp.sum(fn(x) * jnp.arange(1.0, 7.0))
  chex.assert_trees_all_close(hg.grad(f)(x), jax.grad(f)(x), rtol=1e-6, atol=1e-7)


def test_relu_at_zero_follows_jax_nn_relu():
  assert float(hg.grad(jax.nn.relu)(0.0)) == float(jax.grad(jax.nn.relu)(0.0)) == 0.0
  assert float(hg.grad(lambda x: jnp.maximum(x, 0.0))(0.0)) == 0.5
  assert float(hg.grad(hg.ops.relu)(0.0)) == 0.0


@pytest.mark.parametrize("policy", [None, jax.checkpoint_policies.nothing_saveable,
                                    jax.checkpoint_policies.everything_saveable,
                                    jax.checkpoint_policies.dots_saveable,
                                    jax.checkpoint_policies.save_only_these_names("h")])
def test_checkpoint_regions_give_unchanged_gradients(policy):
  from jax.ad_checkpoint import checkpoint_name

  def block(w, x):
    h = checkpoint_name(jnp.tanh(x @ w), "h")
    return jnp.sin(h @ w.T) + x

  def loss(w, x):
    y = jax.checkpoint(block, policy=policy)(w, x)
    return jnp.sum(jax.checkpoint(block, policy=policy)(w, y) ** 2)

  w = jax.random.normal(jax.random.key(0), (4, 4)) * 0.5
  x = jax.random.normal(jax.random.key(1), (3, 4))
  chex.assert_trees_all_close(jax.jit(hg.grad(loss, (0, 1)))(w, x), jax.grad(loss, (0, 1))(w, x),
                              rtol=1e-5, atol=1e-5)


def test_cond_and_nested_jit():
  @jax.jit
  def inner(x):
    return jnp.sum(jnp.exp(x) * 0.5)

  def f(x):
    return lax.cond(x[0] > 0, lambda y: inner(y) * 2.0, lambda y: jnp.sum(y ** 3), x) + inner(x)

  for x in (jnp.array([1.0, 2.0]), jnp.array([-1.0, 2.0])):
    chex.assert_trees_all_close(hg.grad(f)(x), jax.grad(f)(x), rtol=1e-5, atol=1e-5)
    chex.assert_trees_all_close(jax.jit(hg.grad(f))(x), jax.grad(f)(x), rtol=1e-5, atol=1e-5)


def test_indexing_and_slicing():
  def f(x):
    return (x[1] ** 2).sum() + x[:, 1:3].sum() * 2 + x[jnp.array([0, 0, 2])].sum() \
        + jnp.take(x, jnp.array([[1, 2]]), axis=1).sum() + x.at[0, 0].set(5.0).sum() \
        + jax.lax.dynamic_slice(x, (1, 1), (2, 2)).sum() + x[::-1, ::2].sum()

  x = jnp.arange(12.0).reshape(3, 4)
  chex.assert_trees_all_close(hg.grad(f)(x), jax.grad(f)(x))


def test_layer_ops_stay_single_equations():
  x, W, b = jnp.ones((2, 3)), jnp.ones((3, 4)), jnp.zeros(4)
  jaxpr = jax.make_jaxpr(lambda x: hg.ops.softmax(hg.ops.dense(x, W, b), axis=-1))(x)
  names = [e.params.get("name") for e in jaxpr.jaxpr.eqns if e.primitive.name == "jit"]
  assert names == ["hg.dense", "hg.softmax[axis=-1]"]
