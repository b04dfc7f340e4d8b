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


# --- eager calls: the compiled-program cache (handgrad._src.eager) --------------------

from handgrad._src import eager, registry  # noqa: E402


def _uncached(f, *args, **kwargs):
  eager.disable()
  try:
    return f(*args, **kwargs)
  finally:
    eager.enable()


def _bitwise_equal(a, b):
  la, lb = jax.tree.leaves(a), jax.tree.leaves(b)
  return len(la) == len(lb) and all(
      x.dtype == y.dtype and x.shape == y.shape and
      np.array_equal(np.asarray(x), np.asarray(y), equal_nan=True) for x, y in zip(la, lb))


def _mlp_loss(params, x, y):
  h = x
  for layer in params[:-1]:
    h = hg.ops.relu(hg.ops.dense(h, layer["W"], layer["b"]))
  return hg.ops.softmax_cross_entropy(hg.ops.dense(h, params[-1]["W"], params[-1]["b"]), y)


def _mlp_data(batch=8):
  kp, kx, ky = jax.random.split(jax.random.key(1), 3)
  dims = (20, 16, 12, 5)
  params = [{"W": jax.random.normal(k, (m, n)) * 0.3, "b": jnp.full((n,), 0.1)}
            for k, m, n in zip(jax.random.split(kp, 3), dims[:-1], dims[1:])]
  return params, jax.random.normal(kx, (batch, 20)), jax.random.randint(ky, (batch,), 0, 5)


def test_eager_repeated_call_is_one_compiled_program():
  params, x, y = _mlp_data()
  g = hg.value_and_grad(_mlp_loss)
  first = g(params, x, y)
  traces = eager.stats.traces
  second = hg.value_and_grad(_mlp_loss)(params, x, y)  # a new wrapper hits as well
  assert eager.stats.traces == traces
  assert _bitwise_equal(first, second)
  # The uncached path runs the rules op by op; the cached one is one XLA program, which
  # may fuse and reassociate (as jax.jit(f) against f does): equal to float32 rounding.
  chex.assert_trees_all_close(first, _uncached(g, params, x, y), rtol=1e-6, atol=1e-7)
  chex.assert_trees_all_close(first, jax.value_and_grad(_mlp_loss)(params, x, y),
                              rtol=1e-5, atol=1e-6)


def test_eager_cache_keys_shapes_dtypes_and_weak_types():
  f = lambda a, b: jnp.sum(jnp.sin(a) * b)
  cases = [(jnp.arange(3.0), jnp.ones(3)), (jnp.arange(4.0), jnp.ones(4)),
           (jnp.arange(3.0, dtype=jnp.bfloat16), jnp.ones(3, jnp.bfloat16)),
           (jnp.arange(3.0), 2.0), (1.5, 2.0), (np.arange(3.0, dtype=np.float32), 2.0)]
  for a, b in cases * 2:
    got = hg.grad(f, (0, 1))(a, b)
    want = jax.grad(f, (0, 1))(a, b)
    uncached = _uncached(hg.grad(f, (0, 1)), a, b)
    for u, v, w in zip(got, want, uncached):
      assert u.dtype == v.dtype and u.shape == v.shape, (a, b)
      assert u.weak_type == w.weak_type, (a, b)
    chex.assert_trees_all_close(got, want, rtol=1e-2 if got[0].dtype == jnp.bfloat16 else 1e-6)


def test_eager_cache_follows_x64():
  f = lambda a: jnp.sum(jnp.exp(a))
  a = np.linspace(0, 1, 5)
  g32 = hg.grad(f)(a)
  with jax.enable_x64(True):
    g64 = hg.grad(f)(a)
    assert g64.dtype == jnp.float64
    np.testing.assert_allclose(g64, np.exp(a), rtol=1e-15)
  assert hg.grad(f)(a).dtype == g32.dtype == jnp.float32


def test_eager_closures_over_different_arrays_are_different_programs():
  def make(w):
    return lambda x: jnp.sum(jnp.tanh(w * x))
  x = jnp.arange(3.0)
  for w in (jnp.ones(3), jnp.full(3, 2.0), jnp.arange(3.0)):
    f = make(w)
    chex.assert_trees_all_close(hg.grad(f)(x), jax.grad(f)(x), rtol=1e-6)


def test_eager_rebound_closure_cell_and_global_are_not_served_stale():
  w = jnp.ones(3)
  scale = 1.0

  def f(x):
    return jnp.sum(jnp.sin(w * x)) * scale

  x = jnp.arange(3.0)
  for new_w, new_scale in [(jnp.ones(3), 1.0), (jnp.full(3, 3.0), 1.0), (jnp.full(3, 3.0), -2.0)]:
    w, scale = new_w, new_scale
    chex.assert_trees_all_close(hg.grad(f)(x), jax.grad(f)(x), rtol=1e-6)
  global _GLOBAL_W
  for value in (jnp.ones(3), jnp.full(3, 5.0), {"a": jnp.full(3, 7.0)}["a"]):
    _GLOBAL_W = value
    chex.assert_trees_all_close(hg.grad(_reads_global)(x), jax.grad(_reads_global)(x),
                                rtol=1e-6)
  _PARAMS["w"] = jnp.ones(3)
  chex.assert_trees_all_close(hg.grad(_reads_global_tree)(x), jax.grad(_reads_global_tree)(x))
  _PARAMS["w"] = jnp.full(3, -4.0)  # mutated in place: the container's leaves are checked
  chex.assert_trees_all_close(hg.grad(_reads_global_tree)(x), jax.grad(_reads_global_tree)(x))


_GLOBAL_W = jnp.ones(3)
_PARAMS = {"w": jnp.ones(3)}


def _reads_global(x):
  return jnp.sum(jnp.cos(_GLOBAL_W * x))


def _reads_global_tree(x):
  return jnp.sum(jnp.cos(_PARAMS["w"] * x))


def test_eager_python_scalar_arguments_are_static_and_keyed_exactly():
  def f(x, n, s):
    for _ in range(n):
      x = jnp.sin(x)
    return jnp.sum(x / s)

  x = jnp.arange(3.0)
  for n, s in [(1, 1.0), (3, 1.0), (3, -0.0 + 2.0), (3, 0.5), (1, 1), (True, 1.0)]:
    chex.assert_trees_all_close(hg.grad(f)(x, n, s), jax.grad(f)(x, n, s), rtol=1e-6)
  # 0.0 and -0.0 are different keys: 1/(±0) flips the sign of an infinite gradient.
  g = lambda x, z: jnp.sum(x) / z
  assert float(hg.grad(g)(1.0, 0.0)) == float(jax.grad(g)(1.0, 0.0)) == np.inf
  assert float(hg.grad(g)(1.0, -0.0)) == float(jax.grad(g)(1.0, -0.0)) == -np.inf


def test_eager_function_needing_a_concrete_array_runs_uncached():
  def f(x, y):
    return jnp.sum(x * (1.0 if np.asarray(y).sum() > 0 else -1.0))

  x = jnp.arange(3.0)
  for y in (jnp.ones(2), -jnp.ones(2), jnp.ones(2)):
    chex.assert_trees_all_close(hg.grad(f)(x, y), jax.grad(f)(x, y))


def test_eager_cache_not_used_under_jit_vmap_and_observers():
  from handgrad._src import engine
  f = lambda w, x: jnp.sum(jnp.tanh(w * x) ** 2)
  w, xs = jnp.arange(3.0), jnp.arange(12.0).reshape(4, 3)
  hits = eager.stats.hits
  chex.assert_trees_all_close(jax.jit(hg.grad(f))(w, xs[0]), jax.grad(f)(w, xs[0]), rtol=1e-6)
  chex.assert_trees_all_close(jax.vmap(hg.grad(f), (None, 0))(w, xs),
                              jax.vmap(jax.grad(f), (None, 0))(w, xs), rtol=1e-6)
  assert eager.stats.hits == hits
  hg.grad(f)(w, xs[0])  # cached now
  seen = []
  with engine.observe(engine.Observer(lambda eqn, *a: seen.append(eqn))):
    hg.grad(f)(w, xs[0])
  assert seen  # observers see every differentiated equation, so no cached program runs


def test_eager_has_aux_argnums_and_kwargs():
  def f(a, b, *, k):
    return jnp.sum(a * b * k), {"aux": a + k}

  a, b = jnp.arange(3.0), jnp.ones(3)
  for _ in range(2):
    for k in (jnp.float32(2.0), 3.0):
      got = hg.grad(f, (0, 1), has_aux=True)(a, b, k=k)
      want = jax.grad(f, (0, 1), has_aux=True)(a, b, k=k)
      chex.assert_trees_all_close(got, want)
      chex.assert_trees_all_close(hg.grad(f, [1, 0], has_aux=True)(a, b, k=k),
                                  jax.grad(f, [1, 0], has_aux=True)(a, b, k=k))


def test_eager_cache_sees_a_rule_registered_later():
  f = lambda x: jnp.sum(jnp.sin(x))
  x = jnp.arange(3.0)
  np.testing.assert_allclose(hg.grad(f)(x), jnp.cos(x), rtol=1e-6)
  saved = registry._RULES["sin"]
  try:
    registry.defvjp("sin", lambda g, ans, x, accuracy=None: (2.0 * g,))
    np.testing.assert_allclose(hg.grad(f)(x), jnp.full(3, 2.0))
  finally:
    registry._RULES["sin"] = saved
  np.testing.assert_allclose(hg.grad(f)(x), jnp.cos(x), rtol=1e-6)


def test_eager_closures_made_per_call_stop_compiling():
  x = jnp.arange(3.0)
  traces = eager.stats.traces
  for k in range(2 * eager.MAX_FUNCTIONS_PER_CODE + 2):
    w = jnp.full(3, float(k))
    got = hg.grad(lambda v: jnp.sum(jnp.sin(w * v)))(x)
    np.testing.assert_allclose(got, w * jnp.cos(w * x), rtol=1e-6)
  assert eager.stats.traces - traces <= eager.MAX_FUNCTIONS_PER_CODE
