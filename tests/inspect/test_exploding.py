"""rank_gradients / explain_exploding against jax.grad norms."""

import math

import jax
import jax.numpy as jnp
import numpy as np

import handgrad as hg
from handgrad import inspect as hgi
from handgrad._src.inspect import exploding


def _setup(scale):
  k = jax.random.split(jax.random.key(0), 4)
  params = {"layers": [{"W": scale * jax.random.normal(k[i], (6, 6)), "b": jnp.zeros(6)}
                       for i in range(3)]}
  x = jax.random.normal(k[3], (10, 6))

  def loss(p, x):
    h = x
    for lp in p["layers"]:
      h = hg.ops.tanh(hg.ops.dense(h, lp["W"], lp["b"]))
    return jnp.sum(h ** 2) * 100.0

  return params, x, loss


def test_ranking_matches_jax_grad_norms():
  params, x, loss = _setup(scale=1.0)
  grads = jax.jit(hg.grad(loss))(params, x)
  ranking = hgi.rank_gradients(grads, max_norm=5.0, top_k=4)
  ref = jax.grad(loss)(params, x)
  want = {f"layers/{i}/{n}": float(jnp.linalg.norm(ref["layers"][i][n]))
          for i in range(3) for n in ("W", "b")}
  order = sorted(want, key=lambda k: -want[k])[:4]
  assert [r.path for r in ranking] == order
  for r in ranking:
    np.testing.assert_allclose(r.norm, want[r.path], rtol=1e-5)
    assert r.status == exploding.status(want[r.path], 5.0)
  # From the statistics of a jitted step, the same ranking.
  stats = jax.jit(hgi.gradient_stats)(grads)
  assert [r.path for r in hgi.rank_gradients(stats, max_norm=5.0, top_k=4)] == order
  # gradient_norms is jit-safe and agrees.
  norms = jax.jit(hgi.gradient_norms)(grads)
  for k, v in want.items():
    np.testing.assert_allclose(norms[k], v, rtol=1e-5)
  assert len(hgi.rank_gradients(grads, top_k=None)) == 6


def test_status_thresholds():
  assert exploding.status(0.5, 1.0) == "OK"
  assert exploding.status(1.0, 1.0) == "OK"
  assert exploding.status(1.5, 1.0) == "HIGH"
  assert exploding.status(10.0, 1.0) == "HIGH"
  assert exploding.status(10.5, 1.0) == "EXPLODING"
  assert exploding.status(math.nan, 1.0) == "EXPLODING"
  grads = {"a": jnp.array([3.0, 4.0]), "b": jnp.array([0.3, 0.4]),
           "c": jnp.array([30.0, 40.0]), "d": jnp.array([jnp.nan, 1.0])}
  ranking = hgi.rank_gradients(grads, max_norm=1.0)
  assert [(r.path, r.status) for r in ranking] == [
      ("d", "EXPLODING"), ("c", "EXPLODING"), ("a", "HIGH"), ("b", "OK")]
  np.testing.assert_allclose([r.norm for r in ranking[1:]], [50.0, 5.0, 0.5], rtol=1e-6)


def test_explain_includes_recommendations_only_when_exploding():
  grads = {"a": jnp.array([3.0, 4.0]), "c": jnp.array([30.0, 40.0])}
  text = hgi.explain_exploding(hgi.rank_gradients(grads, max_norm=1.0))
  lines = text.splitlines()
  assert lines[:3] == ["=== gradient norm ranking ===", "1. c: 50.0000 [EXPLODING]",
                       "2. a: 5.0000 [HIGH]"]
  assert "=== recommendations ===" in lines
  assert "1. Lower the learning rate (to 1/10 of the current one)" in lines
  assert any("clip_grad_norm" in line for line in lines)
  assert any("He or Xavier" in line for line in lines)
  assert any("LayerNorm" in line for line in lines)
  calm = hgi.explain_exploding(hgi.rank_gradients(grads, max_norm=10.0))
  assert "recommendations" not in calm
  assert calm.splitlines()[1] == "1. c: 50.0000 [HIGH]"
