"""intermediate_grads against the perturbation trick (jax.grad wrt an added zero)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.ad_checkpoint import checkpoint_name

import handgrad as hg
from handgrad import inspect as hgi


def _tag(x, name, eps):
  # The value named `name` is x + eps[name]: jax.grad wrt eps[name] at 0 is its cotangent.
  return checkpoint_name(x, name) + eps.get(name, 0.0)


def _close(a, b):
  np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-6, atol=1e-6)


def _mlp_loss(p, x, y, eps=None):
  eps = eps or {}
  h = x
  for i, layer in enumerate(p):
    with jax.named_scope(f"layers/{i}"):
      z = hg.ops.dense(h, layer["W"], layer["b"]) + eps.get(f"dense{i}", 0.0)
      h = _tag(hg.ops.relu(z), f"h{i}", eps) if i < len(p) - 1 else z
  return hg.ops.softmax_cross_entropy(h, y)


def _mlp():
  k = jax.random.split(jax.random.key(0), 4)
  sizes = [6, 8, 5, 3]
  p = [{"W": jax.random.normal(k[i], (a, b)) * 0.5, "b": jnp.full((b,), 0.1)}
       for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:]))]
  x = jax.random.normal(k[3], (4, 6))
  return p, x, jnp.array([0, 1, 2, 1])


def _perturbation_grads(loss, shapes, *args):
  eps = {k: jnp.zeros(s) for k, s in shapes.items()}
  return jax.grad(lambda e: loss(*args, eps=e))(eps)


def test_mlp_named_and_layer_cotangents_equal_the_perturbation_trick():
  p, x, y = _mlp()
  got = jax.jit(lambda p, x: hgi.intermediate_grads(_mlp_loss, p, x, y))(p, x)
  assert list(got["names"]) == ["h0", "h1"]
  assert list(got["layers"]) == ["layers/0 dense", "layers/0 relu", "layers/1 dense",
                                 "layers/1 relu", "layers/2 dense", "softmax_cross_entropy"]
  shapes = {"h0": (4, 8), "h1": (4, 5), "dense0": (4, 8), "dense1": (4, 5), "dense2": (4, 3)}
  want = _perturbation_grads(_mlp_loss, shapes, p, x, y)
  _close(got["names"]["h0"], want["h0"])
  _close(got["names"]["h1"], want["h1"])
  for i in range(3):
    _close(got["layers"][f"layers/{i} dense"], want[f"dense{i}"])
  # The loss op's output cotangent is the seed 1 (its log-prob output got no blame).
  loss_ct, lp_ct = got["layers"]["softmax_cross_entropy"]
  assert float(loss_ct) == 1.0 and not np.any(np.asarray(lp_ct))
  only = hgi.intermediate_grads(_mlp_loss, p, x, y, names=["h1"], layers=False)
  assert list(only["names"]) == ["h1"] and only["layers"] == {}
  with pytest.raises(KeyError, match="no value named"):
    hgi.intermediate_grads(_mlp_loss, p, x, y, names=["nope"])


def _block_loss(p, x, eps=None):
  eps = eps or {}
  h = _tag(hg.ops.layer_norm(x, p["g1"], p["b1"]), "ln1", eps)
  q = _tag(hg.ops.dense(h, p["Wq"], p["bq"]), "q", eps)
  k = hg.ops.dense(h, p["Wk"], p["bk"])
  v = hg.ops.dense(h, p["Wv"], p["bv"])
  heads = lambda z: z.reshape(z.shape[0], 2, -1)  # noqa: E731  [T, H, D]
  a = hg.ops.attention(heads(q), heads(k), heads(v), causal=True)
  a = _tag(a.reshape(x.shape), "attn", eps)
  x = _tag(x + hg.ops.dense(a, p["Wo"], p["bo"]), "resid", eps)
  h = hg.ops.layer_norm(x, p["g2"], p["b2"])
  f = _tag(hg.ops.relu(hg.ops.dense(h, p["W1"], p["c1"])), "ffn", eps)
  x = x + hg.ops.dense(f, p["W2"], p["c2"])
  return jnp.mean(jnp.tanh(x) ** 2)


def test_transformer_block_cotangents_equal_the_perturbation_trick():
  d, t, hid = 8, 5, 16
  ks = iter(jax.random.split(jax.random.key(1), 16))
  p = {n: jax.random.normal(next(ks), s) * 0.3 for n, s in [
      ("Wq", (d, d)), ("Wk", (d, d)), ("Wv", (d, d)), ("Wo", (d, d)), ("W1", (d, hid)),
      ("W2", (hid, d))]}
  p.update({n: jnp.zeros(s) for n, s in [("bq", d), ("bk", d), ("bv", d), ("bo", d),
                                         ("c1", hid), ("c2", d), ("b1", d), ("b2", d)]})
  p.update(g1=jnp.ones(d), g2=jnp.ones(d))
  x = jax.random.normal(next(ks), (t, d))
  got = jax.jit(lambda p, x: hgi.intermediate_grads(_block_loss, p, x))(p, x)
  shapes = {"ln1": (t, d), "q": (t, d), "attn": (t, d), "resid": (t, d), "ffn": (t, hid)}
  want = _perturbation_grads(_block_loss, shapes, p, x)
  assert set(got["names"]) == set(shapes)
  for name in shapes:
    _close(got["names"][name], want[name])


def _rnn_loss(p, xs, eps=None):
  eps = eps or {}
  h0 = _tag(jnp.tanh(xs[0] @ p["U"]), "h0", eps)

  def cell(h, x):
    h = jnp.tanh(h @ p["W"] + x @ p["U"])
    return h, checkpoint_name(h, "inside")

  h, hs = jax.lax.scan(cell, h0, xs)
  hs = _tag(hs, "hs", eps)
  return jnp.sum(hs ** 2) + jnp.sum(_tag(h, "last", eps))


def test_rnn_through_scan_reachable_and_not():
  k = jax.random.split(jax.random.key(2), 3)
  p = {"W": jax.random.normal(k[0], (4, 4)) * 0.5, "U": jax.random.normal(k[1], (3, 4))}
  xs = jax.random.normal(k[2], (6, 3))
  got = jax.jit(lambda p, xs: hgi.intermediate_grads(
      _rnn_loss, p, xs, names=["h0", "hs", "last"]))(p, xs)
  want = _perturbation_grads(_rnn_loss, {"h0": (4,), "hs": (6, 4), "last": (4,)}, p, xs)
  for name in ("h0", "hs", "last"):
    _close(got["names"][name], want[name])
  # A value named inside the scan body exists only per iteration, inside the loop.
  with pytest.raises(ValueError, match="inside a scan"):
    hgi.intermediate_grads(_rnn_loss, p, xs, names=["inside"])


def test_per_example_norms_under_vmap():
  p, x, y = _mlp()
  norms = jax.jit(lambda p, x, y: hgi.per_example_grad_norms(
      _mlp_loss, p, x, y, batch_argnums=(1, 2)))(p, x, y)
  for i in range(x.shape[0]):
    one = _perturbation_grads(_mlp_loss, {"h0": (1, 8), "dense2": (1, 3)}, p, x[i:i + 1],
                              y[i:i + 1])
    np.testing.assert_allclose(norms["names"]["h0"][i], np.linalg.norm(one["h0"]),
                               rtol=1e-5)
    np.testing.assert_allclose(norms["layers"]["layers/2 dense"][i],
                               np.linalg.norm(one["dense2"]), rtol=1e-5)
