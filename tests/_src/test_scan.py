"""The hand engine through ``lax.scan`` (and ``fori_loop`` with static bounds).

Every test compares with ``jax.grad``/``jax.hessian`` on the same function.
"""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

import handgrad as hg
from handgrad import inspect as hgi


def _normal(key, *shapes, dtype=jnp.float32):
  keys = jax.random.split(jax.random.key(key), len(shapes))
  return [jax.random.normal(k, s, dtype) for k, s in zip(keys, shapes)]


def rnn_loss(params, xs):
  """A tanh RNN over xs: [T, 3]; the loss uses every ys and the final state."""
  W, U, b = params

  def step(h, x):
    h = jnp.tanh(h @ W + x @ U + b)
    return h, jnp.sum(h ** 2)

  h, ys = lax.scan(step, jnp.zeros(W.shape[0], W.dtype), xs)
  return jnp.sum(ys) + jnp.sum(h)


def _assert_same_grads(f, args, argnums, rtol=1e-5, atol=1e-5):
  chex.assert_trees_all_close(hg.grad(f, argnums)(*args), jax.grad(f, argnums)(*args),
                              rtol=rtol, atol=atol)


def test_rnn_gradients_wrt_params_and_inputs():
  W, U, b, xs = _normal(0, (4, 4), (3, 4), (4,), (7, 3))
  _assert_same_grads(rnn_loss, ((W * 0.5, U, b), xs), (0, 1))


@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("unroll", [1, 3])
def test_reverse_and_unroll_with_an_integer_counter_in_the_carry(reverse, unroll):
  scales, xs = _normal(1, (5,), (5, 2))

  def f(scales, xs):
    def step(carry, x):
      i, h = carry
      h = h * jnp.sin(scales[i]) + x  # the counter indexes a constant
      return (i + 1, h), h * scales[i]
    (_, h), ys = lax.scan(step, (0, jnp.ones(2)), xs, reverse=reverse, unroll=unroll)
    return jnp.sum(h ** 2) + jnp.sum(ys * jnp.arange(10.0).reshape(5, 2))

  _assert_same_grads(f, (scales, xs), (0, 1))


def test_a_carry_that_starts_constant_becomes_active():
  """The initial carry is a constant; the body mixes w in, so the carry needs blame."""
  w, xs = _normal(2, (), (6,))
  f = lambda w, xs: lax.scan(lambda c, x: (c * x + w, c), 0.0, xs)[1].sum()
  _assert_same_grads(f, (w, xs), (0, 1))


def test_only_the_final_carry_or_only_ys_used():
  W, U, b, xs = _normal(3, (4, 4), (3, 4), (4,), (5, 3))

  def run(params, xs):
    W, U, b = params
    return lax.scan(lambda h, x: (jnp.tanh(h @ W + x @ U + b), h), jnp.ones(4), xs)

  final_only = lambda p, xs: jnp.sum(run(p, xs)[0])
  ys_only = lambda p, xs: jnp.sum(run(p, xs)[1] ** 2)
  _assert_same_grads(final_only, ((W, U, b), xs), (0, 1))
  _assert_same_grads(ys_only, ((W, U, b), xs), (0, 1))


def test_fori_loop_with_static_bounds():
  (x,) = _normal(4, (3,))
  f = lambda x: jnp.sum(lax.fori_loop(0, 4, lambda i, y: jnp.sin(y) * (i + 1.0), x))
  _assert_same_grads(f, (x,), 0)


def test_scan_without_xs_uses_length():
  (x,) = _normal(5, (2,))
  f = lambda x: jnp.sum(lax.scan(lambda c, _: (c * jnp.cos(c), None), x, None, length=6)[0])
  _assert_same_grads(f, (x,), 0)


def test_layers_stacked_along_the_scanned_axis():
  """Parameters as xs (a stack of identical layers): the per-layer gradients come out
  stacked, as with jax.grad."""
  Ws, bs, x = _normal(6, (3, 5, 5), (3, 5), (8, 5))
  y = jnp.arange(8) % 5

  def loss(params, x):
    def layer(h, p):
      return hg.ops.relu(hg.ops.dense(h, p["W"], p["b"])) + h, None  # residual
    h, _ = lax.scan(layer, x, params)
    return hg.ops.softmax_cross_entropy(h, y)

  params = {"W": Ws * 0.3, "b": bs}
  _assert_same_grads(loss, (params, x), (0, 1))


def test_cond_and_jit_inside_the_body():
  w, xs = _normal(7, (3,), (4, 3))

  @jax.jit
  def inner(h, w):
    return h * w + 1.0

  def f(w, xs):
    def step(h, x):
      h = lax.cond(jnp.sum(x) > 0, lambda h: inner(h, w), lambda h: jnp.sin(h) * w, h)
      return h + x, h
    return jnp.sum(lax.scan(step, jnp.ones(3), xs)[1])

  _assert_same_grads(f, (w, xs), (0, 1))


def test_under_jit_and_vmap():
  W, U, b, xs = _normal(8, (4, 4), (3, 4), (4,), (6, 7, 3))
  params = (W * 0.5, U, b)
  per_example = jax.jit(jax.vmap(hg.grad(rnn_loss), in_axes=(None, 0)))(params, xs)
  expected = jax.vmap(jax.grad(rnn_loss), in_axes=(None, 0))(params, xs)
  chex.assert_trees_all_close(per_example, expected, rtol=1e-5, atol=1e-5)


def test_second_order_matches_jax_hessian(x64):
  (x,) = _normal(9, (3,), dtype=jnp.float64)
  f = lambda x: jnp.sum(lax.scan(lambda c, xi: (c * jnp.sin(xi) + xi ** 3, c), 1.0, x)[1])
  expected = jax.hessian(f)(x)
  chex.assert_trees_all_close(hg.hessian(f)(x), expected, rtol=1e-10, atol=1e-10)
  chex.assert_trees_all_close(jax.jacfwd(hg.grad(f))(x), expected, rtol=1e-10, atol=1e-10)
  chex.assert_trees_all_close(hg.grad(lambda x: jnp.sum(hg.grad(f)(x) ** 2))(x),
                              jax.grad(lambda x: jnp.sum(jax.grad(f)(x) ** 2))(x),
                              rtol=1e-10, atol=1e-10)


def test_float64_against_finite_differences(x64):
  W, U, b, xs = _normal(10, (4, 4), (3, 4), (4,), (5, 3), dtype=jnp.float64)
  params = (W * 0.5, U, b)
  analytic = hg.grad(rnn_loss, 1)(params, xs)
  numerical = hg.numerical_gradient(lambda xs: rnn_loss(params, xs), xs)
  rel_error, ok = hg.gradient_check(analytic, numerical, threshold=1e-6)
  assert ok, rel_error


def test_trace_backward_sees_the_loop_as_one_layer():
  W, U, b, xs = _normal(11, (4, 4), (3, 4), (4,), (5, 3))
  params = (W * 0.5, U, b)

  def after_embed(params, z):
    W, U, b = params
    with jax.named_scope("rnn"):
      h, ys = lax.scan(lambda h, x: (jnp.tanh(h @ W + x @ U + b), h), jnp.zeros(4), z)
    with jax.named_scope("head"):
      return jnp.sum(h ** 2) + jnp.sum(ys)

  def loss(params, xs):
    with jax.named_scope("embed"):
      z = jnp.tanh(xs)
    return after_embed(params, z)

  grads, trace = hgi.trace_backward(loss, params, xs)
  chex.assert_trees_all_close(grads, jax.grad(loss)(params, xs), rtol=1e-5, atol=1e-5)
  assert trace.names == ("head", "rnn", "embed")
  blame_into_rnn = jax.grad(after_embed, 1)(params, jnp.tanh(xs))
  np.testing.assert_allclose(trace.grad_in[1], jnp.linalg.norm(blame_into_rnn), rtol=1e-5)
  np.testing.assert_allclose(trace.grad_in[2], jnp.linalg.norm(jax.grad(loss, 1)(params, xs)),
                             rtol=1e-5)


def test_a_while_loop_is_refused_with_the_way_out():
  f = lambda x: lax.while_loop(lambda c: c[0] < 3, lambda c: (c[0] + 1, c[1] * 2.0), (0, x))[1]
  with pytest.raises(NotImplementedError, match=r"while_loop.*fori_loop with static bounds"):
    hg.grad(f)(1.0)
  with pytest.raises(ValueError):  # jax.grad refuses it too
    jax.grad(f)(1.0)


# --- a body checkpointed with a policy: residuals kept per iteration -------------------

_POLICIES = {"everything": jax.checkpoint_policies.everything_saveable,
             "dots": jax.checkpoint_policies.dots_saveable,
             "dots_no_batch": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
             "nothing": jax.checkpoint_policies.nothing_saveable,
             "none": None}


def _policy_loss(policy, reverse=False):
  def loss(params, h0, xs):
    def step(carry, x):
      h, acc = carry
      z = hg.ops.dense(h, params["W"], params["b"]) + x @ params["U"]
      h = jnp.tanh(z) * jax.nn.sigmoid(z)
      return (h, acc + jnp.sum(jnp.sin(h))), jnp.mean(h ** 2, axis=-1)

    body = jax.checkpoint(step, policy=policy)
    (h, acc), ys = lax.scan(body, (h0, jnp.float32(0)), xs, reverse=reverse)
    return jnp.sum(h ** 2) + acc + jnp.sum(ys * jnp.arange(ys.shape[0])[:, None])
  return loss


@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("policy", sorted(_POLICIES))
def test_checkpoint_policy_on_the_body_matches_jax(policy, reverse):
  W, b, U, h0, xs = _normal(5, (6, 6), (6,), (3, 6), (2, 6), (7, 2, 3))
  params = {"W": W * 0.5, "b": b, "U": U}
  loss = _policy_loss(_POLICIES[policy], reverse)
  want = jax.grad(loss, (0, 1, 2))(params, h0, xs)
  for fn in (hg.grad(loss, (0, 1, 2)), jax.jit(hg.grad(loss, (0, 1, 2)))):
    chex.assert_trees_all_close(fn(params, h0, xs), want, rtol=2e-5, atol=2e-5)
  per_example = jax.vmap(hg.grad(loss), (None, 0, None))(params, h0[:, None], xs[:, :1])
  chex.assert_trees_all_close(
      per_example, jax.vmap(jax.grad(loss), (None, 0, None))(params, h0[:, None], xs[:, :1]),
      rtol=2e-5, atol=2e-5)


def _count(jaxpr, name):
  return sum((eqn.primitive.name == name) + sum(_count(j, name) for j in _subjaxprs(eqn))
             for eqn in jaxpr.eqns)


def _subjaxprs(eqn):
  from handgrad._src import jaxpr as hj
  return hj.nested_jaxprs(eqn)


def test_everything_saveable_body_is_not_recomputed_and_default_is():
  W, b, U, h0, xs = _normal(6, (6, 6), (6,), (3, 6), (2, 6), (4, 2, 3))
  params = {"W": W, "b": b, "U": U}
  tanh = {}
  for name in ("everything", "dots", "none"):
    jaxpr = jax.make_jaxpr(hg.grad(_policy_loss(_POLICIES[name])))(params, h0, xs).jaxpr
    tanh[name] = _count(jaxpr, "tanh")
  # The forward pass evaluates tanh once; recomputing the body in the backward pass
  # evaluates it again (once: a checkpoint region is not recomputed a second time
  # inside the recomputed iteration).  dots_saveable keeps the products only.
  assert tanh["everything"] == 1
  assert tanh["dots"] == tanh["none"] == 2
