"""Convolutional layers of handgrad.nn (conv2d, pooling, flatten, batch norm, embedding)
and the MNIST CNN: hand gradients equal jax.grad, shapes and errors, and
``handgrad train --model cnn`` with hand and jax gradients agreeing."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import handgrad as hg
from handgrad import nn
from handgrad._src import engine
from handgrad.cli import main

from test_layers import F32, F64, assert_hand_grad_matches, cast, rand

KEY = jax.random.key(0)


@pytest.mark.parametrize("dtype", [F64, F32])
def test_conv_pool_stack_hand_grad_equals_jax_grad(dtype):
  with jax.enable_x64(True):
    p1 = cast(nn.conv2d.init(2, 3, 3, key=KEY), dtype)
    p2 = cast(nn.conv2d.init(3, 4, (2, 3), key=jax.random.key(1)), dtype)
    p1["b"], p2["b"] = rand((3,), dtype, 1), rand((4,), dtype, 2)
    x = rand((2, 7, 6, 2), dtype, 3)

    def loss(p1, p2, x):
      h = nn.max_pool(nn.relu(nn.conv2d.apply(p1, x, strides=(1, 2))), 2, 1, "SAME")
      h = nn.avg_pool(nn.conv2d.apply(p2, h, padding="VALID"), (2, 1))
      return jnp.sum(jnp.sin(nn.flatten(h)))

    assert_hand_grad_matches(loss, (p1, p2, x), (0, 1, 2), dtype)


@pytest.mark.parametrize("train", [True, False])
@pytest.mark.parametrize("dtype", [F64, F32])
def test_batch_norm_hand_grad_equals_jax_grad(train, dtype):
  with jax.enable_x64(True):
    p = cast(nn.batch_norm.init(3, key=KEY), dtype)
    p = {"gamma": rand((3,), dtype, 1, shift=1.0), "beta": rand((3,), dtype, 2)}
    state = {"mean": rand((3,), dtype, 3), "var": jnp.asarray([0.5, 1.0, 2.0], dtype)}
    x = rand((4, 2, 2, 3), dtype, 4, scale=2.0, shift=0.5)

    def loss(p, x):
      y, new = nn.batch_norm.apply(p, x, state=state, train=train)
      return jnp.sum(jnp.tanh(y) * jnp.arange(3)) + jnp.sum(new["mean"])

    assert_hand_grad_matches(loss, (p, x), (0, 1), dtype)


def test_batch_norm_state_follows_the_batch():
  x = rand((64, 3), F32, 0, scale=2.0, shift=1.0)
  p, state = nn.batch_norm.init(3, key=KEY), nn.batch_norm_state(3)
  y, new = nn.batch_norm.apply(p, x, state=state, train=True, momentum=0.5)
  np.testing.assert_allclose(jnp.mean(y, 0), 0.0, atol=1e-5)
  np.testing.assert_allclose(jnp.std(y, 0), 1.0, atol=1e-3)
  np.testing.assert_allclose(new["mean"], 0.5 * jnp.mean(x, 0), rtol=1e-5)
  np.testing.assert_allclose(new["var"], 0.5 + 0.5 * jnp.var(x, 0), rtol=1e-5)
  y_eval, same = nn.batch_norm.apply(p, x, state=new, train=False)
  np.testing.assert_allclose(y_eval, (x - new["mean"]) / jnp.sqrt(new["var"] + 1e-5),
                             rtol=1e-5, atol=1e-5)
  assert same is not None and np.array_equal(same["mean"], new["mean"])


@pytest.mark.parametrize("dtype", [F64, F32])
def test_embedding_hand_grad_equals_jax_grad(dtype):
  with jax.enable_x64(True):
    p = cast(nn.embedding.init(5, 3, key=KEY), dtype)
    ids = jnp.asarray([[0, 4, 4], [-1, 2, 0]])
    loss = lambda p: jnp.sum(jnp.sin(nn.embedding.apply(p, ids)))  # noqa: E731
    g = assert_hand_grad_matches(loss, (p,), 0, dtype)
    assert np.all(np.asarray(g["table"][1]) == 0)  # a row nobody looked up


def test_embedding_out_of_range_is_nan_not_wrong():
  p = nn.embedding.init(4, 2, key=KEY)
  out = nn.embedding.apply(p, jnp.asarray([1, 4, -5]))
  assert np.all(np.isfinite(out[0])) and np.all(np.isnan(out[1:]))


def test_cnn_hand_grad_equals_jax_grad():
  with jax.enable_x64(True):
    params = cast(nn.cnn.init(key=KEY, channels=(3, 4)), F64)
    x = rand((3, 784), F64, 1, scale=0.5, shift=0.5)
    y = jnp.asarray([1, 7, 3])
    loss = lambda p, x: hg.ops.softmax_cross_entropy(nn.cnn.apply(p, x), y)  # noqa: E731
    assert_hand_grad_matches(loss, (params, x), (0, 1), F64)


def test_cnn_shapes_and_parameters():
  params = nn.cnn.init(key=KEY)
  assert [p["W"].shape for p in params["blocks"]] == [(3, 3, 1, 16), (3, 3, 16, 32)]
  assert params["head"]["W"].shape == (7 * 7 * 32, 10)
  assert nn.count_params(params) == 20490
  assert nn.cnn.apply(params, jnp.zeros((2, 784))).shape == (2, 10)
  assert nn.cnn.apply(params, jnp.zeros((2, 28, 28, 1))).shape == (2, 10)



def test_cnn_backward_applies_the_layer_rules():
  applied = []
  observer = engine.Observer(lambda eqn, layer, *_: applied.append(layer))
  params, x, y = nn.cnn.init(key=KEY), jnp.zeros((2, 784)), jnp.asarray([0, 1])
  with engine.observe(observer):
    jax.eval_shape(hg.grad(lambda p: hg.ops.softmax_cross_entropy(nn.cnn.apply(p, x), y)),
                   params)
  assert set(applied) >= {"softmax_cross_entropy", "dense", "flatten", "max_pool", "relu",
                          "conv2d"}
  assert applied.count("conv2d") == 2


@pytest.mark.parametrize("scheme,std", [("he", np.sqrt(2 / 72)), ("normal", 0.01),
                                        ("glorot", np.sqrt(2 / (72 + 144)))])
def test_conv2d_initialisers(scheme, std):
  W = nn.conv2d.init(8, 16, 3, key=KEY, init=scheme)["W"]
  assert W.shape == (3, 3, 8, 16)
  assert float(jnp.std(W)) == pytest.approx(std, rel=0.1)


def test_errors_name_the_layer_and_shapes():
  p = nn.conv2d.init(3, 4, key=KEY)
  with pytest.raises(ValueError, match=r"blocks/0: input has 2 channels but the kernel "
                                       r"expects 3"):
    nn.conv2d.apply(p, jnp.zeros((1, 5, 5, 2)), path="blocks/0")
  with pytest.raises(ValueError, match=r"NHWC images \[N, H, W, C\], got shape \(5, 5\)"):
    nn.max_pool(jnp.zeros((5, 5)))
  with pytest.raises(ValueError, match="padding must be 'SAME', 'VALID'"):
    nn.conv2d.apply(p, jnp.zeros((1, 5, 5, 3)), padding="FULL")
  with pytest.raises(ValueError, match="flat input has 100 features"):
    nn.cnn.apply(nn.cnn.init(key=KEY), jnp.zeros((1, 100)))


def test_train_cnn_hand_and_jax_backends_agree(tmp_path, capsys):
  # A few steps of `handgrad train --model cnn` with each backend: same losses.
  results = {}
  for backend in ("hand", "jax"):
    out = tmp_path / backend
    rc = main(["train", "--model", "cnn", "--subset", "96", "--epochs", "2",
               "--backend", backend, "--no-progress", "--out", str(out)])
    assert rc == 0
    results[backend] = hg.train.read_metrics(out / "metrics.jsonl")
  capsys.readouterr()
  hand, ref = results["hand"], results["jax"]
  assert [r["step"] for r in hand] == [3, 6]
  for h, r in zip(hand, ref):
    for key in ("train_loss", "test_loss", "test_accuracy", "grad_norm"):
      assert h[key] == pytest.approx(r[key], rel=1e-4, abs=1e-5), (key, h, r)


def test_train_cnn_defaults_beat_the_mlp(tmp_path, capsys):
  # `handgrad train --model cnn` with its defaults (8 epochs, Adam 1e-3, batch 32, hand
  # gradients) on the embedded MNIST split beats the default MLP's 94.0% test accuracy.
  assert main(["train", "--model", "cnn", "--no-progress", "--out", str(tmp_path)]) == 0
  capsys.readouterr()
  records = hg.train.read_metrics(tmp_path / "metrics.jsonl")
  assert [r["epoch"] for r in records] == list(range(1, 9))
  assert records[-1]["test_accuracy"] > 0.940, records[-1]


@pytest.mark.parametrize("use", ["y", "mean", "var", "all"])
def test_batch_norm_outputs_blamed_alone_or_together(use):
  with jax.enable_x64(True):
    x = rand((5, 3), F64, 1, shift=0.3)
    gamma, beta = rand((3,), F64, 2), rand((3,), F64, 3)
    mean, var = rand((3,), F64, 4), jnp.asarray([0.5, 1.0, 2.0])

    def loss(x, gamma, mean, var):
      y, m, v = hg.ops.batch_norm(x, gamma, beta, mean, var, train=True, momentum=0.7)
      terms = {"y": jnp.sum(jnp.sin(y)), "mean": jnp.sum(m ** 2), "var": jnp.sum(jnp.cos(v))}
      return sum(terms.values()) if use == "all" else terms[use]

    assert_hand_grad_matches(loss, (x, gamma, mean, var), (0, 1, 2, 3), F64)


def test_cnn_hand_grad_under_an_explicit_mesh():
  # Cotangents carry their primals' shardings: with the batch sharded over an Explicit
  # mesh axis, the transposed convolutions and dW contract a sharded axis and must be
  # told their output sharding, and every zero a rule makes must match its operands'.
  from jax.sharding import AxisType, NamedSharding, PartitionSpec
  mesh = jax.make_mesh((1,), ("batch",), axis_types=(AxisType.Explicit,))
  with jax.set_mesh(mesh):
    params = nn.cnn.init(key=KEY, channels=(2, 3))
    x = jax.device_put(rand((4, 784), F32, 1), NamedSharding(mesh, PartitionSpec("batch")))
    loss = lambda p, x: jnp.sum(nn.cnn.apply(p, x) ** 2)  # noqa: E731
    got, want = jax.jit(lambda p, x: (hg.grad(loss, (0, 1))(p, x),
                                      jax.grad(loss, (0, 1))(p, x)))(params, x)
  assert jax.typeof(got[1]) == jax.typeof(want[1])
  assert jax.tree.map(jax.typeof, got[0]) == jax.tree.map(jax.typeof, want[0])
  for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
