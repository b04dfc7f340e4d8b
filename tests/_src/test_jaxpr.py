"""handgrad._src.jaxpr: reading equations and the per-release shims."""

import types

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

import handgrad as hg
from handgrad import ops
from handgrad._src import jaxpr as hj


def _eqns(fun, *args):
  return jax.make_jaxpr(fun)(*args).jaxpr.eqns


def test_input_vars_bind_consts_then_args_on_every_release():
  closed = jax.make_jaxpr(lambda x: x * jnp.arange(3.0))(jnp.ones(3))
  constvars, argvars = hj.input_vars(closed.jaxpr, len(closed.consts))
  assert len(argvars) == 1 and len(constvars) == len(closed.consts)
  outs = hj.interpret(closed.jaxpr, closed.consts, [jnp.ones(3)],
                      lambda i, eqn, invals: hj.bind(eqn, invals))
  np.testing.assert_allclose(outs[0], np.arange(3.0))


def test_input_vars_of_a_custom_jvp_thunk_jaxpr():
  # The jaxpr a custom_jvp hands out with its consts on the side: since jax 0.11.1 the
  # consts are its leading invars, before that its constvars.
  c = jnp.array([2.0, 3.0])

  @jax.custom_jvp
  def f(x):
    return x * c

  f.defjvp(lambda p, t: (f(p[0]), t[0] * c))
  (eqn,) = [e for e in _eqns(f, jnp.ones(2)) if e.primitive.name == "custom_jvp_call"]
  jaxpr, consts, _ = eqn.params["jvp_jaxpr_fun"].call_wrapped(False)
  constvars, argvars = hj.input_vars(jaxpr, len(consts))
  assert [v.aval.shape for v in argvars] == [(2,), (2,)]  # primal and tangent
  assert len(constvars) == len(consts)


def test_bwd_cotangents_both_forms():
  cts = [jnp.ones(2), None]
  assert hj.bwd_cotangents(cts) is cts
  assert hj.bwd_cotangents((cts, None)) is cts
  assert hj.bwd_cotangents((cts, {"norm": jnp.ones(())})) is cts
  two = [jnp.ones(2), {"a": 1}]
  assert hj.bwd_cotangents(two) is two


def test_scan_counts_from_params_of_either_release():
  assert hj.scan_counts({"num_consts": 2, "num_carry": 1}) == (2, 1)
  ft = types.SimpleNamespace(unpack=lambda: ((1, 2, 3), (4,), (5, 6)))
  assert hj.scan_counts({"ft_in": ft}) == (3, 1)
  (eqn,) = _eqns(lambda c, xs: lax.scan(lambda c, x: (c + x, c), c, xs), 0.0, jnp.ones(3))
  assert hj.scan_counts(eqn.params) == (0, 1)


def test_saveable_and_symbolic_zero_markers():
  from jax._src.interpreters import partial_eval as pe
  assert hj.saveable(True) and not hj.saveable(False)
  assert hj.saveable(pe.Saveable) and not hj.saveable(pe.Recompute)
  assert hj.is_symbolic_zero(None) and not hj.is_symbolic_zero(jnp.zeros(2))


def test_checkpoint_equation_is_recognised():
  (eqn,) = _eqns(jax.checkpoint(jnp.sin), 1.0)
  assert hj.is_checkpoint(eqn)
  assert hj.inline_body(eqn) is not None


def test_layer_op_and_rule_name():
  (eqn,) = _eqns(ops.relu, jnp.ones(3))
  assert hj.layer_op_name(eqn) == "relu" and hj.rule_name(eqn) == "relu"
  assert hj.inline_body(eqn) is None  # one node with its own rule
  (jit_eqn,) = _eqns(jax.jit(jnp.sin), 1.0)
  assert hj.layer_op(jit_eqn) is None and hj.rule_name(jit_eqn) == "jit"
  assert [e.primitive.name for e in hj.equations(jax.make_jaxpr(jax.jit(jnp.sin))(1.0))] == [
      "jit", "sin"]


def test_source_line_falls_back_to_the_enclosing_equation():
  outer = next(e for e in _eqns(lambda x: jnp.linalg.cholesky(x), jnp.eye(2))
               if e.primitive.name == "jit")
  inner = next(e for e in hj.equations(outer.params["jaxpr"]) if e.primitive.name == "cholesky")
  assert "test_jaxpr.py" in hj.source_line(inner, [outer])
  line = hj.source_line(_eqns(lambda x: jnp.sin(x), 1.0)[0])
  assert "test_jaxpr.py" in line


def test_scope_names_leave_out_transforms():
  def f(x):
    with jax.named_scope("layers/0"):
      return jnp.sin(x)

  (eqn,) = _eqns(f, 1.0)
  assert hj.scope_names(eqn) == ("layers/0",)


def test_backward_pass_marker_is_read_back():
  (fwd,) = _eqns(jnp.sin, 1.0)
  assert not hj.in_backward_pass(fwd)
  with hj.backward_pass():
    closed = jax.make_jaxpr(jnp.sin)(1.0)
  # Equations traced under the marker carry it.
  grad_eqns = _eqns(hg.grad(jnp.sin), 1.0)
  assert any(hj.in_backward_pass(e) for e in grad_eqns)
  assert not all(hj.in_backward_pass(e) for e in grad_eqns)
  del closed


def test_depends_on_and_is_read():
  closed = jax.make_jaxpr(lambda x, y, z: (jnp.sin(x) * 2.0, y + 1.0))(1.0, 2.0, 3.0)
  x, y, z = closed.jaxpr.invars
  assert hj.reached_outputs(closed.jaxpr, hj.depends_on(closed.jaxpr, [x])) == [True, False]
  assert hj.is_read(closed.jaxpr, y) and not hj.is_read(closed.jaxpr, z)


def test_hi_primitive_message_names_the_flag():
  class CustomVJPTraced:
    pass

  eqn = types.SimpleNamespace(params={"_prim": CustomVJPTraced()})
  assert "unset `jax_custom_vjp3`" in hj.hi_primitive_message(eqn)
  eqn = types.SimpleNamespace(params={"_prim": object()})
  assert "jax_remat3" in hj.hi_primitive_message(eqn)
