"""The engine and its nested-jaxpr handlers, against jax.grad."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax
from jax.custom_derivatives import SymbolicZero

import handgrad as hg
from handgrad._src import engine, nested, registry
from handgrad._src.registry import RuleError

C_SCALAR = jnp.float32(3.0)
C_ARRAY = jnp.array([1.0, -2.0, 0.5])


# --- custom_vjp / custom_jvp closing over arrays (consts bound as JAX binds them) ------

def _custom_vjp_closing_over(c):
  @jax.custom_vjp
  def f(x):
    return jnp.sin(x) * c

  f.defvjp(lambda x: (f(x), jnp.cos(x) * c), lambda r, g: (g * r,))
  return f


def _custom_jvp_closing_over(c):
  @jax.custom_jvp
  def f(x):
    return jnp.sin(x) * c

  @f.defjvp
  def f_jvp(primals, tangents):
    (x,), (t,) = primals, tangents
    return f(x), jnp.cos(x) * c * t

  return f


@pytest.mark.parametrize("make", [_custom_vjp_closing_over, _custom_jvp_closing_over])
@pytest.mark.parametrize("c", [C_SCALAR, C_ARRAY], ids=["f32_scalar", "array"])
def test_custom_rules_closing_over_an_array(make, c):
  f = make(c)
  loss = lambda x: jnp.sum(f(x) * jnp.arange(1.0, 4.0))
  x = jnp.array([0.1, 0.7, -1.3])
  chex.assert_trees_all_close(hg.grad(loss)(x), jax.grad(loss)(x), rtol=1e-6)


def test_custom_vjp_forwarded_residual_with_closed_over_constant():
  # fwd returns its inputs as residuals: JAX forwards them, indexing the equation's
  # whole input list, closed-over constants included.
  c = jnp.array([[1.0, 2.0], [3.0, 4.0]])

  @jax.custom_vjp
  def f(x, y):
    return (x * y) @ c

  f.defvjp(lambda x, y: (f(x, y), (x, y)),
           lambda r, g: ((g @ c.T) * r[1], (g @ c.T) * r[0]))
  loss = lambda x, y: jnp.sum(jnp.tanh(f(x, y)))
  x, y = jnp.array([[0.5, -1.0]]), jnp.array([[2.0, 0.25]])
  chex.assert_trees_all_close(hg.grad(loss, (0, 1))(x, y), jax.grad(loss, (0, 1))(x, y),
                              rtol=1e-6)


def test_custom_vjp_forwarded_residual_of_second_input_only():
  c = jnp.float32(2.0)

  @jax.custom_vjp
  def f(x, y):
    return jnp.sin(x) * y * c

  f.defvjp(lambda x, y: (f(x, y), (jnp.cos(x), y)),
           lambda r, g: (g * r[0] * r[1] * c, None))
  loss = lambda x, y: jnp.sum(f(x, y))
  x, y = jnp.array([0.3, 1.1]), jnp.array([5.0, -2.0])
  chex.assert_trees_all_close(hg.grad(loss)(x, y), jax.grad(loss)(x, y), rtol=1e-6)


# --- custom_vjp cotangent dtypes and shapes ---------------------------------------------

def _bwd_returning(ct):
  @jax.custom_vjp
  def f(x):
    return x * 2

  f.defvjp(lambda x: (f(x), None), lambda r, g: (ct(g),))
  return f


def test_custom_vjp_float32_cotangent_for_bfloat16_primal_is_cast():
  f = _bwd_returning(lambda g: jnp.full(g.shape, 2.0, jnp.float32))
  x = jnp.ones(3, jnp.bfloat16)
  # JAX accepts the float32 cotangent (it does not cast it: its gradient is float32).
  ref = jax.grad(lambda x: f(x).astype(jnp.float32).sum())(x)
  got = hg.grad(lambda x: f(x).astype(jnp.float32).sum())(x)
  assert got.dtype == jnp.bfloat16
  np.testing.assert_allclose(np.asarray(got, np.float32), np.asarray(ref, np.float32))
  # Cast to the primal's dtype, it also adds to the other bfloat16 cotangents of x.
  both = lambda x: (f(x) * x).astype(jnp.float32).sum()
  np.testing.assert_allclose(np.asarray(hg.grad(both)(x), np.float32), 4.0)


def test_custom_vjp_cotangent_of_wrong_shape_is_refused():
  f = _bwd_returning(lambda g: jnp.ones((2,), jnp.float32))
  # JAX's own bwd wrapper or the engine refuses it (RuleError is a ValueError).
  with pytest.raises(ValueError, match=r"shape"):
    hg.grad(lambda x: f(x).sum())(jnp.ones(3))


def test_primitive_rule_of_wrong_dtype_is_still_refused(monkeypatch):
  monkeypatch.setitem(registry._RULES, "sin", lambda g, ans, x, **p: (g.astype(jnp.float16),))
  with pytest.raises(RuleError, match="dtype float16"):
    hg.grad(lambda x: jnp.sin(x).sum())(jnp.ones(3))


# --- errors -------------------------------------------------------------------------------

def test_missing_rule_inside_a_library_jit_names_the_user_line(monkeypatch):
  monkeypatch.delitem(registry._RULES, "cholesky", raising=False)

  def loss(x):
    return jnp.linalg.cholesky(x @ x.T + jnp.eye(3)).sum()  # the line to name

  with pytest.raises(NotImplementedError, match="no VJP rule for 'cholesky'") as e:
    hg.grad(loss)(jnp.eye(3))
  line = loss.__code__.co_firstlineno + 1
  assert f"test_engine.py:{line}:" in str(e.value) and "loss)" in str(e.value)


def test_while_loop_message_comes_from_the_nested_table():
  assert "lax.scan" in nested._HANDLERS["while"].message(None)
  f = lambda x: lax.while_loop(lambda c: c[0] < 3, lambda c: (c[0] + 1, c[1] * 2.0), (0, x))[1]
  with pytest.raises(NotImplementedError, match=r"while_loop.*; at .*test_engine.py"):
    hg.grad(f)(1.0)


# Only the flags this JAX release has (jax 0.10.2 has no jax_custom_jvp3).
_HI_FLAGS = [f for f in ("jax_custom_vjp3", "jax_custom_jvp3", "jax_remat3") if hasattr(jax.config, f)]


def test_some_call_hi_flag_exists():
  assert _HI_FLAGS, "no jax_*3 flag in this JAX release: the test below checks nothing"


@pytest.mark.parametrize("flag", _HI_FLAGS)
def test_call_hi_primitive_names_the_flag_to_unset(flag):
  with _flag(flag):

    @jax.custom_vjp
    def f(x):
      return jnp.sin(x)

    f.defvjp(lambda x: (jnp.sin(x), jnp.cos(x)), lambda r, g: (g * r,))

    @jax.custom_jvp
    def h(x):
      return jnp.sin(x)

    h.defjvp(lambda p, t: (jnp.sin(p[0]), jnp.cos(p[0]) * t[0]))
    fn = {"jax_custom_vjp3": f, "jax_custom_jvp3": h, "jax_remat3": jax.checkpoint(jnp.sin)}[flag]
    with pytest.raises(NotImplementedError, match=f"unset `{flag}`"):
      hg.grad(fn)(1.0)


class _flag:
  def __init__(self, name):
    self.name = name

  def __enter__(self):
    self.old = getattr(jax.config, self.name)
    jax.config.update(self.name, True)

  def __exit__(self, *exc):
    jax.config.update(self.name, self.old)


# --- no blame -------------------------------------------------------------------------------

def test_multiple_results_primitive_rule_gets_none_for_an_unused_output():
  seen = []
  split_rule = registry._RULES["split"]

  def spy(g, ans, *args, **params):
    seen.append([ct is None for ct in g])
    return split_rule(g, ans, *args, **params)

  loss = lambda x: jnp.sum(jnp.split(x, 3)[1] ** 2)
  x = jnp.arange(6.0)
  with pytest.MonkeyPatch.context() as m:
    m.setitem(registry._RULES, "split", spy)
    got = hg.grad(loss)(x)
  assert seen == [[True, False, True]]
  chex.assert_trees_all_close(got, jax.grad(loss)(x))


def test_sort_with_an_unused_output_matches_jax():
  loss = lambda x, y: jnp.sum(lax.sort((x, y), num_keys=1)[1] * jnp.arange(4.0))
  x, y = jnp.array([3.0, 1.0, 2.0, 0.0]), jnp.array([1.0, 2.0, 3.0, 4.0])
  chex.assert_trees_all_close(hg.grad(loss, (0, 1))(x, y), jax.grad(loss, (0, 1))(x, y))


# --- the nested table is extensible ----------------------------------------------------------

def test_nested_register_adds_a_kind(monkeypatch):
  calls = []
  jit = nested._HANDLERS["jit"]

  def backward(eqn, record, args, cts, in_active):
    calls.append(eqn.primitive.name)
    return jit.backward(eqn, record, args, cts, in_active)

  monkeypatch.setitem(nested._HANDLERS, "jit", nested._HANDLERS["jit"])
  nested.register("jit", forward=jit.forward, backward=backward)
  loss = lambda x: jnp.sum(jax.jit(jnp.sin)(x))
  x = jnp.arange(3.0)
  chex.assert_trees_all_close(hg.grad(loss)(x), jax.grad(loss)(x))
  assert calls == ["jit"]


def test_nested_register_needs_something():
  with pytest.raises(TypeError, match="needs forward, backward or unsupported"):
    nested.register("my_call")


# --- observers and paths --------------------------------------------------------------------

def test_current_path_inside_a_jit():
  paths = []
  obs = engine.Observer(lambda eqn, layer, cts_out, cts_in: paths.append(
      (eqn.primitive.name, engine.current_path())))
  loss = lambda x: jnp.sum(jax.jit(lambda y: jnp.sin(y) * 2.0)(x))
  with engine.observe(obs):
    hg.grad(loss)(jnp.arange(3.0))
  assert ("sin", (0, 0)) in paths and ("jit", (0,)) in paths
  assert engine.current_path() == ()


def test_forward_backward_on_a_jaxpr_directly():
  closed = jax.make_jaxpr(lambda x, y: jnp.sin(x) * y)(1.0, 2.0)
  outs, frame = engine.forward(closed.jaxpr, closed.consts, [1.0, 2.0], [True, False])
  np.testing.assert_allclose(outs[0], np.sin(1.0) * 2.0, rtol=1e-6)
  dx, dy = engine.backward(frame, [jnp.float32(1.0)])
  np.testing.assert_allclose(dx, np.cos(1.0) * 2.0, rtol=1e-6)
  assert dy is None


# --- custom_vjp with symbolic zeros ----------------------------------------------------------

def _symbolic_zeros_f():
  @jax.custom_vjp
  def f(x, y):
    return jnp.sin(x) * y, x * 2.0

  def fwd(x, y):
    return f(x.value, y.value), (x.value, y.value, x.perturbed, y.perturbed)

  def bwd(r, g):
    x, y, px, py = r
    g0, g1 = [jnp.zeros_like(x) if isinstance(ct, SymbolicZero) else ct for ct in g]
    return (g0 * jnp.cos(x) * y + 2.0 * g1 if px else None, g0 * jnp.sin(x) if py else None)

  f.defvjp(fwd, bwd, symbolic_zeros=True)
  return f


@pytest.mark.parametrize("loss", [
    lambda f, x, y: jnp.sum(f(x, y)[0]),  # second output unused
    lambda f, x, y: jnp.sum(f(x, lax.stop_gradient(y))[0] + f(x, y)[1] ** 2),
])
def test_custom_vjp_symbolic_zeros_matches_jax(loss):
  f = _symbolic_zeros_f()
  x, y = jnp.array([0.3, 1.0]), jnp.array([2.0, 3.0])
  fun = lambda x, y: loss(f, x, y)
  chex.assert_trees_all_close(hg.grad(fun, (0, 1))(x, y), jax.grad(fun, (0, 1))(x, y),
                              rtol=1e-6)


def test_custom_vjp_symbolic_zeros_backward_sees_what_jax_gives():
  seen = []

  @jax.custom_vjp
  def f(x):
    return jnp.sin(x), x * 2.0

  def bwd(r, g):
    seen.append(tuple(isinstance(ct, SymbolicZero) for ct in g))
    return (jnp.cos(r) * g[0] if not isinstance(g[0], SymbolicZero) else jnp.zeros_like(r),)

  f.defvjp(lambda x: (f(x.value), x.value), bwd, symbolic_zeros=True)
  loss = lambda x: jnp.sum(f(x)[0])
  x = jnp.array([0.3, 1.0])
  chex.assert_trees_all_close(hg.grad(loss)(x), jax.grad(loss)(x))
  assert seen[0] == seen[1] == (False, True)
