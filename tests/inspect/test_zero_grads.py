"""Missing versus zero gradients, which jax.grad cannot tell apart, and dead ReLUs."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import handgrad as hg
from handgrad import inspect as hgi
from handgrad._src.inspect import zero_grads


def _setup(dead_bias=-100.0):
  k = jax.random.split(jax.random.key(0), 4)
  params = {
      "layers": [{"W": jax.random.normal(k[0], (4, 8)), "b": jnp.zeros(8)},
                 {"W": jax.random.normal(k[1], (8, 8)), "b": jnp.full((8,), dead_bias)},
                 {"W": jax.random.normal(k[2], (8, 3)), "b": jnp.zeros(3)}],
      "unused": jnp.ones(3),
      "detached": jnp.ones(3),
      "discarded": jnp.ones(3),
  }
  x = jax.random.normal(k[3], (16, 4))
  y = jnp.arange(16) % 3

  def model(p, x):
    h = x
    for i, lp in enumerate(p["layers"]):
      with jax.named_scope(f"layers/{i}"):
        h = hg.ops.dense(h, lp["W"], lp["b"])
        if i < 2:
          h = hg.ops.relu(h)
    return h

  def loss(p, x, y):
    _ = jnp.sum(p["discarded"] * 2.0)  # computed, never used
    logits = model(p, x) + jax.lax.stop_gradient(p["detached"])
    return hg.ops.softmax_cross_entropy(logits, y)

  return params, x, y, model, loss


def test_missing_versus_zero():
  params, x, y, _, loss = _setup()
  reports = hgi.find_zero_gradients(loss, params, x, y, frozen="layers/2/b")
  by_path = {r.path: r for r in reports}
  # jax.grad gives zeros for all of them, missing or not.
  g = jax.grad(loss)(params, x, y)
  for path in ("unused", "detached", "discarded"):
    assert not np.any(np.asarray(g[path]))
  assert not np.any(np.asarray(g["layers"][0]["W"]))
  assert np.any(np.asarray(g["layers"][2]["b"]))  # frozen, but jax.grad differentiates it

  assert by_path["unused"] == (("unused", "missing", (zero_grads.UNUSED,)))
  assert by_path["detached"].kind == "missing"
  assert by_path["detached"].reasons == (zero_grads.DETACHED,)
  assert by_path["discarded"].reasons == (zero_grads.DISCARDED,)
  assert by_path["layers/2/b"].reasons == (zero_grads.FROZEN,)
  # Layer 1's ReLU is dead (bias -100): nothing flows to layers 0 and 1, and layer 2
  # sees only zero inputs, so its W gets a zero gradient; its b still learns (frozen
  # here, so missing).
  zero = [r.path for r in reports if r.kind == "zero"]
  assert zero == ["layers/0/W", "layers/0/b", "layers/1/W", "layers/1/b", "layers/2/W"]
  assert by_path["layers/0/W"].reasons[0] == (
      "ReLU 'layers/1/relu' is dead on this batch (every unit inactive)")
  assert zero_grads.SOFTMAX in by_path["layers/0/W"].reasons
  # Order follows the parameters.
  assert [r.path for r in reports] == [
      "detached", "discarded", "layers/0/W", "layers/0/b", "layers/1/W", "layers/1/b",
      "layers/2/W", "layers/2/b", "unused"]


def test_healthy_network_reports_nothing():
  params, x, y, model, _ = _setup(dead_bias=0.0)
  params = {"layers": params["layers"]}

  def loss(p, x, y):
    return hg.ops.softmax_cross_entropy(model(p, x), y)

  assert hgi.find_zero_gradients(loss, params, x, y) == []
  assert hgi.format_zero_gradients([]) == "All parameters have gradients"


def test_atol_and_frozen_forms():
  params, x, y, model, _ = _setup(dead_bias=0.0)
  params = {"layers": params["layers"], "unused": params["unused"]}

  def loss(p, x, y):
    return hg.ops.softmax_cross_entropy(model(p, x), y) + 1e-9 * jnp.sum(p["unused"])

  assert [r.path for r in hgi.find_zero_gradients(loss, params, x, y)] == []
  reports = hgi.find_zero_gradients(loss, params, x, y, atol=1e-8)
  assert [(r.path, r.kind) for r in reports] == [("unused", "zero")]
  # frozen as a callable and as a mask pytree
  r1 = hgi.find_zero_gradients(loss, params, x, y, frozen=lambda p: p.startswith("layers/0"))
  mask = jax.tree.map(lambda _: False, params)
  mask["layers"][0] = {"W": True, "b": True}
  r2 = hgi.find_zero_gradients(loss, params, x, y, frozen=mask)
  assert r1 == r2 == [hgi.ZeroGradReport(p, "missing", (zero_grads.FROZEN,))
                      for p in ("layers/0/W", "layers/0/b")]


def test_format_like_the_seed():
  params, x, y, _, loss = _setup()
  text = hgi.format_zero_gradients(hgi.find_zero_gradients(loss, params, x, y))
  lines = text.splitlines()
  assert lines[0] == "=== parameters with zero gradients ==="
  assert "  unused: grad is None - not in the computation graph" in lines
  assert "  layers/0/W: grad is effectively zero" in lines
  assert "Possible causes:" in lines
  assert any("dead ReLU" in line for line in lines)


def test_dead_relu_report_on_a_constructed_dead_layer():
  params, x, _, model, _ = _setup()
  # Half of layer 0's units dead: a very negative bias on units 0..3.
  params["layers"][0]["b"] = jnp.array([-100.0] * 4 + [0.0] * 4)
  report = jax.jit(lambda p, x: hgi.dead_relu_report(model, p, x))(params, x)
  assert set(report) == {"layers/0/relu", "layers/1/relu"}
  # By hand, in numpy.
  z0 = np.asarray(x) @ np.asarray(params["layers"][0]["W"]) + np.asarray(params["layers"][0]["b"])
  dead0 = np.all(z0 <= 0, axis=0)
  assert dead0[:4].all()
  r0 = report["layers/0/relu"]
  assert int(r0.units) == 8 and int(r0.dead_units) == dead0.sum()
  np.testing.assert_allclose(r0.dead_fraction, dead0.mean())
  r1 = report["layers/1/relu"]
  assert int(r1.dead_units) == 8 and float(r1.dead_fraction) == 1.0


def test_dead_relu_report_finds_jax_nn_relu_and_nested_regions():
  w = jnp.array([[1.0, -1.0, 0.5]])
  x = jnp.array([[1.0], [2.0]])  # column 1 always negative

  def fn(w, x):
    with jax.named_scope("enc"):
      a = jax.nn.relu(x @ w)
    b = jax.checkpoint(lambda t: hg.ops.relu(t - 1.5))(a)
    c = jax.jit(jax.nn.relu)(-b)
    d = jnp.maximum(0.0, c - 1.0)  # the NumPy-style ReLU
    return jnp.maximum(d, 0.5) + jnp.maximum(x, x)  # not ReLUs: no literal zero

  report = hgi.dead_relu_report(fn, w, x)
  assert list(report) == ["enc/relu", "relu", "relu_1", "relu_2"]
  np.testing.assert_allclose(report["enc/relu"].dead_fraction, 1 / 3)
  # t - 1.5 = [[-0.5, -1.5, -1], [0.5, -1.5, -0.5]]: units 1 and 2 dead
  np.testing.assert_allclose(report["relu"].dead_fraction, 2 / 3)
  np.testing.assert_allclose(report["relu_1"].dead_fraction, 1.0)  # -b <= 0 everywhere
  np.testing.assert_allclose(report["relu_2"].dead_fraction, 1.0)  # c - 1 = -1 everywhere


@pytest.mark.parametrize("shape", [(), (5,), (2, 3, 4)])
def test_dead_units_are_the_last_axis(shape):
  x = jax.random.normal(jax.random.key(1), shape)
  report = hgi.dead_relu_report(hg.ops.relu, x)["relu"]
  xs = np.asarray(x).reshape(-1, shape[-1] if shape else 1)
  np.testing.assert_allclose(report.dead_fraction, np.all(xs <= 0, axis=0).mean())
  assert int(report.units) == (shape[-1] if shape else 1)
