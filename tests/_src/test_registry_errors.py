"""Missing rules and wrong rules fail loudly, naming the rule, argument and source line."""

import contextlib

import jax
import jax.numpy as jnp
import pytest

import handgrad as hg
from handgrad._src import registry as registry_lib


@contextlib.contextmanager
def temporary_rule(name, rule):
  old = registry_lib._RULES.get(name)
  hg.defvjp(name, rule)
  try:
    yield
  finally:
    if old is None:
      registry_lib._RULES.pop(name, None)
    else:
      registry_lib._RULES[name] = old


@contextlib.contextmanager
def without_rule(name):
  old = registry_lib._RULES.pop(name)
  try:
    yield
  finally:
    registry_lib._RULES[name] = old


def test_registry_is_read_only():
  with pytest.raises(TypeError):
    hg.registry["exp"] = None
  assert "dot_general" in hg.registry and "dense" in hg.registry


def test_missing_rule_names_primitive_source_line_and_fix():
  def user_function(x):
    return jnp.sum(jnp.sinh(x))  # the line the error must point to

  with without_rule("sinh"):
    with pytest.raises(NotImplementedError) as err:
      hg.grad(user_function)(jnp.ones(3))
  msg = str(err.value)
  assert "'sinh'" in msg
  assert "test_registry_errors.py" in msg and "user_function" in msg
  assert "handgrad.defvjp('sinh'" in msg


def test_defvjp_as_decorator_overrides_and_is_used():
  def doubled_exp(g, ans, x, **params):
    return (2 * g * ans,)

  with temporary_rule("exp", doubled_exp):
    assert hg.registry["exp"] is doubled_exp
    assert float(hg.grad(jnp.exp)(0.0)) == 2.0
  assert float(hg.grad(jnp.exp)(0.0)) == 1.0


def test_rule_wrong_number_of_cotangents():
  with temporary_rule("sin", lambda g, ans, x, **p: (g, g)):
    with pytest.raises(hg.RuleError, match=r"rule 'sin' returned 2 cotangents for 1 arguments"):
      hg.grad(lambda x: jnp.sin(x))(1.0)


def test_rule_wrong_shape_names_argument():
  with temporary_rule("mul", lambda g, ans, x, y, **p: (g, jnp.sum(g)[None])):
    with pytest.raises(hg.RuleError, match=r"rule 'mul' .*shape \(1,\) for argument 1, whose shape is \(3,\)"):
      hg.grad(lambda x, y: jnp.sum(x * y), argnums=1)(jnp.ones(3), jnp.ones(3))


def test_rule_wrong_dtype_names_argument():
  with temporary_rule("cos", lambda g, ans, x, **p: (g.astype(jnp.float16),)):
    with pytest.raises(hg.RuleError, match=r"rule 'cos' .*dtype float16 for argument 0, whose dtype is float32"):
      hg.grad(jnp.cos)(jnp.float32(1.0))


def test_rule_returning_non_tuple():
  with temporary_rule("tan", lambda g, ans, x, **p: g):
    with pytest.raises(hg.RuleError, match="must return a tuple"):
      hg.grad(jnp.tan)(1.0)


def test_defvjp_validates_its_arguments():
  with pytest.raises(TypeError):
    hg.defvjp("", lambda g, ans: ())
  with pytest.raises(TypeError):
    hg.defvjp("x", 3)


def test_user_layer_op_with_its_own_rule():
  @hg.ops.layer_op("scaled_square")
  def scaled_square(x, *, scale):
    return scale * x ** 2

  calls = []

  @hg.defvjp("scaled_square")
  def _scaled_square_vjp(g, ans, x, *, scale):
    calls.append(scale)
    return (2 * scale * x * g,)

  try:
    f = lambda x: jnp.sum(scaled_square(x, scale=3.0))
    x = jnp.arange(3.0)
    assert jnp.allclose(hg.grad(f)(x), jax.grad(f)(x))
    assert calls == [3.0]
  finally:
    registry_lib._RULES.pop("scaled_square")


def test_defvjp_unary_and_defvjp_each_build_full_rules():
  from jax import lax
  with temporary_rule("sin", hg.registry["sin"]):
    registry_lib.defvjp_unary("sin", lambda g, ans, x, accuracy=None: g * lax.cos(x) * 2)
    rule = hg.registry["sin"]
    x = jnp.arange(3.0)
    (dx,) = rule(jnp.ones(3), jnp.sin(x), x, accuracy=None)
    assert jnp.allclose(dx, 2 * jnp.cos(x))
    assert jnp.allclose(hg.grad(lambda x: jnp.sum(jnp.sin(x)))(x), 2 * jnp.cos(x))
  with temporary_rule("add", hg.registry["add"]):
    # one expression per argument, summed back over the broadcast dimensions; None = no blame
    registry_lib.defvjp_each("add", lambda g, ans, x, y: g, None)
    x, y = jnp.ones((2, 3)), jnp.ones((1, 3))
    dx, dy = hg.registry["add"](jnp.ones((2, 3)), x + y, x, y)
    assert dx.shape == (2, 3) and dy is None
    g = hg.grad(lambda x, y: jnp.sum(x + y), (0, 1))(x, y)
    assert g[1].shape == (1, 3) and float(jnp.sum(jnp.abs(g[1]))) == 0.0


def test_defvjp_each_with_the_wrong_arity_names_the_rule():
  with temporary_rule("add", hg.registry["add"]):
    registry_lib.defvjp_each("add", lambda g, ans, x, y: g)
    with pytest.raises(hg.RuleError,
                       match="'add' has 1 argument expressions"):
      hg.grad(lambda x: jnp.sum(x + 1.0))(jnp.ones(2))
