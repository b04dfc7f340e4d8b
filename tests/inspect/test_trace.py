"""trace_backward: per-layer cotangent norms against jax.grad, inside jit."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import handgrad as hg
from handgrad import inspect as hgi
from handgrad import nn

RTOL = 1e-5


def _params(dims, key=0, scale=1.0):
  keys = jax.random.split(jax.random.key(key), len(dims) - 1)
  return [{"W": scale * jax.random.normal(k, (i, o)) / np.sqrt(i),
           "b": 0.1 * jax.random.normal(jax.random.fold_in(k, 1), (o,))}
          for k, i, o in zip(keys, dims[:-1], dims[1:])]


def _model(params, x, act, taps=None):
  """Layer i (dense, then act except for the last) under the scope "layers/i"; with
  ``taps``, ``taps[i]`` (zeros) is added to layer i's output so that jax.grad with
  respect to it is the cotangent arriving at that output."""
  h = x
  for i, p in enumerate(params):
    with jax.named_scope(f"layers/{i}"):
      h = hg.ops.dense(h, p["W"], p["b"])
      if i < len(params) - 1:
        h = act(h)
    if taps is not None:
      h = h + taps[i]
  return h


def _loss(act):
  def loss(params, x, y, taps=None):
    return hg.ops.softmax_cross_entropy(_model(params, x, act, taps), y)
  return loss


def _data(n=12, d=6, classes=3, key=1):
  x = jax.random.normal(jax.random.key(key), (n, d))
  y = jnp.arange(n) % classes
  return x, y


def _reference(loss, params, x, y):
  """jax.grad norms: of each layer's output (grad_out) and of its input (grad_in)."""
  out_shapes = [(x.shape[0], p["b"].shape[0]) for p in params]
  taps = [jnp.zeros(s) for s in out_shapes]
  g_taps, g_x = jax.jit(jax.grad(lambda t, x: loss(params, x, y, t), argnums=(0, 1)))(
      taps, x)
  outs = [float(jnp.linalg.norm(t)) for t in g_taps]
  ins = [float(jnp.linalg.norm(g_x))] + outs[:-1]
  return outs, ins


@pytest.mark.parametrize("act", [hg.ops.relu, hg.ops.sigmoid, jax.nn.relu],
                         ids=["hg.relu", "hg.sigmoid", "jax.nn.relu"])
def test_layer_norms_match_jax_grad_inside_jit(act):
  params = _params([6, 8, 8, 5, 3])
  x, y = _data()
  loss = _loss(act)
  grads, trace = jax.jit(lambda p, x, y: hgi.trace_backward(loss, p, x, y))(params, x, y)
  ref_grads = jax.jit(jax.grad(loss))(params, x, y)
  for a, b in zip(jax.tree.leaves(grads), jax.tree.leaves(ref_grads)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
  # Backward order: the loss, then layers 3, 2, 1, 0.
  assert trace.names == ("softmax_cross_entropy", "layers/3", "layers/2", "layers/1",
                         "layers/0")
  outs, ins = _reference(loss, params, x, y)
  np.testing.assert_allclose(trace.grad_out[1:], outs[::-1], rtol=RTOL)
  np.testing.assert_allclose(trace.grad_in[1:], ins[::-1], rtol=RTOL)
  # The loss layer: blame 1 arrives, the logits' cotangent leaves.
  assert float(trace.grad_out[0]) == 1.0
  np.testing.assert_allclose(trace.grad_in[0], outs[-1], rtol=RTOL)
  np.testing.assert_allclose(trace.loss, loss(params, x, y), rtol=1e-6)


def test_eager_equals_jit():
  params = _params([6, 8, 3])
  x, y = _data()
  loss = _loss(hg.ops.relu)
  _, eager = hgi.trace_backward(loss, params, x, y)
  _, jitted = jax.jit(lambda p, x, y: hgi.trace_backward(loss, p, x, y))(params, x, y)
  assert eager.names == jitted.names and eager.ops == jitted.ops
  np.testing.assert_allclose(eager.grad_out, jitted.grad_out, rtol=1e-6)
  np.testing.assert_allclose(eager.grad_in, jitted.grad_in, rtol=1e-6)


def test_by_op_dense_grad_in_is_dx_not_dW():
  params = _params([6, 8, 3])
  x, y = _data()
  loss = _loss(hg.ops.sigmoid)
  _, trace = hgi.trace_backward(loss, params, x, y, by="op")
  assert trace.names == ("softmax_cross_entropy", "layers/1 dense", "layers/0 sigmoid",
                         "layers/0 dense")
  assert trace.ops[1:] == (("dense",), ("sigmoid",), ("dense",))
  # Reference by hand: z0 = x W0 + b0, a0 = σ(z0), logits = a0 W1 + b1.
  p0, p1 = params
  z0 = x @ p0["W"] + p0["b"]
  a0 = jax.nn.sigmoid(z0)
  d_logits = jax.grad(lambda l: hg.ops.softmax_cross_entropy(l, y))(a0 @ p1["W"] + p1["b"])
  d_a0 = d_logits @ p1["W"].T
  d_z0 = d_a0 * a0 * (1 - a0)
  d_x = d_z0 @ p0["W"].T
  want_out = [1.0, np.linalg.norm(d_logits), np.linalg.norm(d_a0), np.linalg.norm(d_z0)]
  want_in = [np.linalg.norm(d_logits), np.linalg.norm(d_a0), np.linalg.norm(d_z0),
             np.linalg.norm(d_x)]
  np.testing.assert_allclose(trace.grad_out, want_out, rtol=RTOL)
  np.testing.assert_allclose(trace.grad_in, want_in, rtol=RTOL)


def _residual_model(params, x, taps=None):
  h = x
  for i, p in enumerate(params):
    with jax.named_scope(f"blocks/{i}"):
      with jax.named_scope("linear1"):
        a = hg.ops.relu(hg.ops.dense(h, p["W1"], p["b1"]))
      with jax.named_scope("linear2"):
        f = hg.ops.dense(a, p["W2"], p["b2"])
      h = hg.ops.relu(f + h)
    if taps is not None:
      h = h + taps[i]
  return jnp.sum(h ** 2) / h.shape[0]


def test_residual_block_grad_in_includes_skip_path():
  d, n = 5, 7
  key = jax.random.key(3)
  params = []
  for i in range(3):
    k = jax.random.split(jax.random.fold_in(key, i), 4)
    params.append({"W1": jax.random.normal(k[0], (d, d)) / np.sqrt(d),
                   "b1": 0.1 * jax.random.normal(k[1], (d,)),
                   "W2": jax.random.normal(k[2], (d, d)) / np.sqrt(d),
                   "b2": 0.1 * jax.random.normal(k[3], (d,))})
  x = jax.random.normal(jax.random.key(4), (n, d))
  _, trace = jax.jit(lambda p, x: hgi.trace_backward(_residual_model, p, x))(params, x)
  assert trace.names == ("blocks/2", "blocks/1", "blocks/0")
  assert trace.ops == (("dense", "relu", "dense", "relu"),) * 3
  taps = [jnp.zeros((n, d))] * 3
  g_taps, g_x = jax.jit(jax.grad(lambda t, x: _residual_model(params, x, t),
                                 argnums=(0, 1)))(taps, x)
  outs = [float(jnp.linalg.norm(t)) for t in g_taps]
  ins = [float(jnp.linalg.norm(g_x))] + outs[:-1]
  np.testing.assert_allclose(trace.grad_out, outs[::-1], rtol=RTOL)
  np.testing.assert_allclose(trace.grad_in, ins[::-1], rtol=RTOL)
  # depth=2 splits the blocks into their sub-scopes and the add/relu left at depth 1.
  _, fine = hgi.trace_backward(_residual_model, params, x, depth=2)
  assert fine.names[:3] == ("blocks/2", "blocks/2/linear2", "blocks/2/linear1")
  assert fine.ops[:3] == (("relu",), ("dense",), ("dense", "relu"))


def test_residual_block_grad_in_equals_block_vjp():
  d, n = 4, 6
  k = jax.random.split(jax.random.key(5), 4)
  p = {"W1": jax.random.normal(k[0], (d, d)), "b1": jnp.zeros(d),
       "W2": jax.random.normal(k[1], (d, d)), "b2": jnp.zeros(d)}
  x = jax.random.normal(k[2], (n, d))
  _, trace = hgi.trace_backward(_residual_model, [p], x)

  def block(h):
    a = jax.nn.relu(h @ p["W1"] + p["b1"])
    return jax.nn.relu(a @ p["W2"] + p["b2"] + h)

  out, vjp = jax.vjp(block, x)
  ct = 2 * out / n  # d(sum(out²)/n)/d out
  (dx,) = vjp(ct)
  np.testing.assert_allclose(trace.grad_out[0], jnp.linalg.norm(ct), rtol=RTOL)
  np.testing.assert_allclose(trace.grad_in[0], jnp.linalg.norm(dx), rtol=RTOL)
  # That is the blame through linear1 plus the blame through the skip connection.
  d_pre = ct * (out > 0)  # through the final relu
  (dx_branch,) = jax.vjp(lambda h: jax.nn.relu(h @ p["W1"] + p["b1"]) @ p["W2"], x)[1](d_pre)
  np.testing.assert_allclose(trace.grad_in[0], jnp.linalg.norm(dx_branch + d_pre), rtol=RTOL)
  assert not np.isclose(float(trace.grad_in[0]), float(jnp.linalg.norm(dx_branch)))


def _trace_norms(loss, params, x, y):
  _, trace = jax.jit(lambda p, x, y: hgi.trace_backward(loss, p, x, y))(params, x, y)
  return trace


def test_sigmoid_stack_vanishes_residual_stack_does_not():
  """The seed's claim: deep sigmoid stacks lose gradient norm layer by layer; residual
  connections (∂y/∂x = ∂F/∂x + 1) carry it to the input."""
  key = jax.random.key(0)
  x = jax.random.normal(jax.random.key(1), (32, 16))
  y = jnp.arange(32) % 4
  depth = 6

  sig = nn.mlp.init([16] * (depth + 1) + [4], key=key, activation="sigmoid")
  sig_loss = lambda p, x, y: hg.ops.softmax_cross_entropy(
      nn.mlp.apply(p, x, activation="sigmoid"), y)
  res = nn.residual_mlp.init(16, 16, 4, depth, key=key)
  res_loss = lambda p, x, y: hg.ops.softmax_cross_entropy(nn.residual_mlp.apply(p, x), y)

  t_sig = _trace_norms(sig_loss, sig, x, y)
  t_res = _trace_norms(res_loss, res, x, y)
  # Every sigmoid layer passes back less than half of what reached it (σ' ≤ 1/4) ...
  sig_layers = [i for i, ops in enumerate(t_sig.ops) if "sigmoid" in ops]
  assert len(sig_layers) == depth
  assert np.all(np.asarray(t_sig.ratios())[sig_layers] < 0.5)
  # ... so the input gets under 1e-3 of the blame that reached the last layer,
  sig_gain = float(t_sig.grad_in[-1] / t_sig.grad_out[1])
  assert sig_gain < 1e-3
  # while no residual block shrinks it and the input gets more than the output layer.
  blocks = [i for i, n in enumerate(t_res.names) if n.startswith("blocks/")]
  assert len(blocks) == depth
  assert np.all(np.asarray(t_res.ratios())[blocks] > 0.9)
  res_gain = float(t_res.grad_in[-1] / t_res.grad_out[1])
  assert res_gain > 1.0
  # The first layer's parameters tell the same story through jax.grad itself.
  g_sig = jax.jit(jax.grad(sig_loss))(sig, x, y)
  g_res = jax.jit(jax.grad(res_loss))(res, x, y)
  assert (jnp.linalg.norm(g_sig["layers"][0]["W"])
          < 1e-3 * jnp.linalg.norm(g_sig["layers"][-1]["W"]))
  assert (jnp.linalg.norm(g_res["input"]["W"])
          > 0.1 * jnp.linalg.norm(g_res["output"]["W"]))


@pytest.mark.parametrize("wrap", ["jit", "checkpoint"])
def test_nested_jit_and_checkpoint_regions_are_looked_into(wrap):
  params = nn.mlp.init([6, 8, 8, 3], key=jax.random.key(0))
  x, y = _data()
  wrapper = jax.jit if wrap == "jit" else jax.checkpoint
  plain = lambda p, x, y: hg.ops.softmax_cross_entropy(nn.mlp.apply(p, x), y)
  wrapped = lambda p, x, y: hg.ops.softmax_cross_entropy(wrapper(nn.mlp.apply)(p, x), y)
  t_plain = _trace_norms(plain, params, x, y)
  t_wrapped = _trace_norms(wrapped, params, x, y)
  assert t_wrapped.names == t_plain.names == (
      "softmax_cross_entropy", "layers/2", "layers/1", "layers/0")
  np.testing.assert_allclose(t_wrapped.grad_out, t_plain.grad_out, rtol=1e-6)
  np.testing.assert_allclose(t_wrapped.grad_in, t_plain.grad_in, rtol=1e-6)


def test_without_inputs_first_grad_in_is_zero():
  params = _params([6, 8, 3])
  x, y = _data()
  loss = _loss(hg.ops.relu)
  g1, t1 = hgi.trace_backward(loss, params, x, y)
  g0, t0 = hgi.trace_backward(loss, params, x, y, wrt_inputs=False)
  assert float(t0.grad_in[-1]) == 0.0 and float(t1.grad_in[-1]) > 0
  np.testing.assert_allclose(t0.grad_out, t1.grad_out, rtol=1e-6)
  for a, b in zip(jax.tree.leaves(g0), jax.tree.leaves(g1)):
    np.testing.assert_allclose(a, b, rtol=1e-6)


def test_layer_cut_by_stop_gradient_reports_zero_in():
  params = _params([6, 8, 3])
  x, y = _data()

  def loss(params, x, y):
    with jax.named_scope("layers/0"):
      h = hg.ops.relu(hg.ops.dense(x, params[0]["W"], params[0]["b"]))
    h = jax.lax.stop_gradient(h)
    with jax.named_scope("layers/1"):
      logits = hg.ops.dense(h, params[1]["W"], params[1]["b"])
    return hg.ops.softmax_cross_entropy(logits, y)

  grads, trace = hgi.trace_backward(loss, params, x, y)
  assert trace.names[1:] == ("layers/1", "layers/0")
  # Blame reaches layers/1 but not its input (stop_gradient makes h a constant), and
  # nothing reaches layers/0.
  assert float(trace.grad_out[1]) > 0 and float(trace.grad_in[1]) == 0.0
  assert float(trace.grad_out[2]) == 0.0 and float(trace.grad_in[2]) == 0.0
  assert not np.any(np.asarray(grads[0]["W"]))


def test_table_and_pytree():
  params = _params([6, 8, 3])
  x, y = _data()
  _, trace = jax.jit(lambda p, x, y: hgi.trace_backward(_loss(hg.ops.relu), p, x, y))(
      params, x, y)
  lines = trace.table().splitlines()
  assert lines[0] == "=== backward flow (output → input) ==="
  assert lines[1].startswith("0. softmax_cross_entropy: grad_out=1.000000 → grad_in=")
  assert lines[2].startswith("1. layers/1 [dense]: grad_out=")
  assert lines[3].startswith("2. layers/0 [dense, relu]: grad_out=")
  assert f"grad_in={float(trace.grad_in[2]):.6f}" in lines[3]
  assert str(trace) == trace.table() and len(trace) == 3
  leaves, treedef = jax.tree.flatten(trace)
  assert len(leaves) == 3  # grad_out, grad_in, loss; names and ops are static
  again = jax.tree.unflatten(treedef, leaves)
  assert again.names == trace.names


def test_bad_arguments():
  params = _params([6, 3])
  x, y = _data()
  with pytest.raises(ValueError, match="by must be"):
    hgi.trace_backward(_loss(hg.ops.relu), params, x, y, by="module")
  with pytest.raises(TypeError, match="scalar loss"):
    hgi.trace_backward(lambda p, x: _model(p, x, hg.ops.relu), params, x)
