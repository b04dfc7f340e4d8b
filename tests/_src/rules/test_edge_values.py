"""Edge values: saturated and masked softmax, log near 0, layer norm of a constant row,
empty batches.  Hand VJPs equal jax.vjp, with NaN and inf in the same places."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

import handgrad as hg
from handgrad._src import check

F32, F64 = "float32", "float64"


def vjps(f, *args, seed=0):
  """``((out, hand cts), (out, jax cts))`` on one random cotangent, in one jitted program."""
  out = jax.eval_shape(f, *args)
  ct = np.random.default_rng(seed).standard_normal(out.shape).astype(out.dtype)

  def both(args, ct):
    out_h, vjp_h = hg.vjp(f, *args)
    out_r, vjp_r = jax.vjp(f, *args)
    return (out_h, vjp_h(ct)), (out_r, vjp_r(ct))

  return jax.jit(both)(args, ct)


def assert_matches_jax(f, *args, seed=0):
  hand, ref = vjps(f, *args, seed=seed)
  report = check.compare("edge", "jax.vjp", hand, ref)
  assert report.passed, str(report)
  return hand


def _x64(dtype):
  return jax.enable_x64(dtype == F64)


# --- softmax family at ±1e4 and with -inf masks ------------------------------------------

SOFTMAXES = {
    "jax.nn.softmax": jax.nn.softmax,
    "hg.ops.softmax": hg.ops.softmax,
    "jax.nn.log_softmax": jax.nn.log_softmax,
    "hg.ops.log_softmax": hg.ops.log_softmax,
}


@pytest.mark.parametrize("dtype", [F32, F64])
@pytest.mark.parametrize("name", list(SOFTMAXES))
def test_softmax_of_huge_logits(name, dtype):
  with _x64(dtype):
    x = np.array([[1e4, -1e4, 0.0, 1e4 - 1.0], [-1e4, -1e4, -1e4, -1e4]], dtype)
    out, (dx,) = assert_matches_jax(SOFTMAXES[name], x)
    assert np.all(np.isfinite(out)) and np.all(np.isfinite(dx))


@pytest.mark.parametrize("dtype", [F32, F64])
@pytest.mark.parametrize("name", list(SOFTMAXES))
def test_softmax_with_minus_inf_masks(name, dtype):
  with _x64(dtype):
    x = np.random.default_rng(1).standard_normal((3, 4)).astype(dtype)
    mask = np.array([[True, False, True, True],   # partly masked
                     [False, False, False, False],  # fully masked: NaN row
                     [True, True, True, True]])
    f = lambda x: SOFTMAXES[name](jnp.where(mask, x, -jnp.inf))
    out, (dx,) = assert_matches_jax(f, x)
    assert np.all(np.asarray(dx)[~mask] == 0)  # a masked logit gets no blame
    assert np.all(np.isfinite(np.asarray(dx)[0])) and np.all(np.isfinite(np.asarray(dx)[2]))


@pytest.mark.parametrize("dtype", [F32, F64])
def test_cross_entropy_of_huge_and_masked_logits(dtype):
  with _x64(dtype):
    x = np.array([[1e4, -1e4, 0.0], [3.0, -np.inf, 1.0], [-1e4, 1e4, 1e4]], dtype)
    labels = np.array([1, 2, 2], np.int32)
    out, (dx, _) = assert_matches_jax(hg.ops.softmax_cross_entropy, x, labels)
    assert np.isfinite(out) and np.all(np.isfinite(dx))
    assert np.asarray(dx)[1, 1] == 0


@pytest.mark.parametrize("dtype", [F32, F64])
def test_cross_entropy_with_the_label_on_a_masked_class_is_infinite(dtype):
  with _x64(dtype):
    x = np.array([[0.0, -np.inf, 1.0]], dtype)
    out, _ = assert_matches_jax(hg.ops.softmax_cross_entropy, x, np.array([1], np.int32))
    assert out == np.inf


# --- log near 0 ---------------------------------------------------------------------------

def test_log_near_zero_in_float64():
  with jax.enable_x64(True):
    x = np.array([1e-30, 1e-300, 5e-324, 0.0, 1.0])  # 5e-324: the smallest subnormal
    _, (dx,) = assert_matches_jax(jnp.log, x)
    hand = hg.grad(lambda x: jnp.sum(jnp.log(x)))(x)
    np.testing.assert_array_equal(hand, jax.grad(lambda x: jnp.sum(jnp.log(x)))(x))
    np.testing.assert_allclose(hand[0], 1e30, rtol=1e-15)
    assert hand[3] == np.inf


def test_log_near_zero_in_float32():
  x = np.array([1e-30, 1e-38, 0.0], np.float32)
  hand = hg.grad(lambda x: jnp.sum(jnp.log(x)))(x)
  np.testing.assert_array_equal(hand, jax.grad(lambda x: jnp.sum(jnp.log(x)))(x))


# --- layer norm of a constant row ---------------------------------------------------------

@pytest.mark.parametrize("dtype", [F32, F64])
def test_layer_norm_of_a_constant_row(dtype):
  with _x64(dtype):
    x = np.array([[0.3, 0.3, 0.3, 0.3], [1.0, -1.0, 2.0, 0.5]], dtype)
    gamma = np.array([1.0, 2.0, -1.0, 0.5], dtype)
    beta = np.array([0.1, 0.0, -0.2, 0.3], dtype)
    loss = lambda x, g, b: jnp.sum(hg.ops.layer_norm(x, g, b) * jnp.arange(8.0).reshape(2, 4))
    hand, ref = jax.jit(lambda *a: (hg.grad(loss, (0, 1, 2))(*a),
                                    jax.grad(loss, (0, 1, 2))(*a)))(x, gamma, beta)
    report = check.compare("layer_norm constant row", "jax.grad", hand, ref)
    assert report.passed, str(report)
    assert all(np.all(np.isfinite(h)) for h in hand)
    # With x̂ = 0 the row's gradient is rsqrt(ε)·(dx̂ − mean(dx̂)): it sums to 0.
    np.testing.assert_allclose(np.sum(hand[0][0]), 0.0, atol=1e-2 if dtype == F32 else 1e-9)


# --- empty batches --------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", [F32, F64])
def test_empty_batch(dtype):
  with _x64(dtype):
    rng = np.random.default_rng(0)
    x = np.zeros((0, 3), dtype)
    W, b = rng.standard_normal((3, 2)).astype(dtype), rng.standard_normal(2).astype(dtype)
    labels = np.zeros((0,), np.int32)

    out, (dx, dW, db) = assert_matches_jax(hg.ops.dense, x, W, b)
    assert out.shape == (0, 2) and dx.shape == (0, 3)
    np.testing.assert_array_equal(dW, np.zeros((3, 2)))
    np.testing.assert_array_equal(db, np.zeros(2))

    loss, (dx, _) = assert_matches_jax(hg.ops.softmax_cross_entropy, x, labels)
    assert np.isnan(loss) and dx.shape == (0, 3)  # the mean over no rows is NaN, as in jnp
    loss, (dp, dt) = assert_matches_jax(hg.ops.mse, x, x)
    assert np.isnan(loss) and dp.shape == dt.shape == (0, 3)

    # jnp.max refuses an empty axis; lax.reduce_max gives -inf, its identity.
    for reduce in (jnp.sum, jnp.prod, jnp.mean, lambda x, axis: lax.reduce_max(x, (axis,)),
                   lambda x, axis: lax.reduce_min(x, (axis,))):
      out, (dx,) = assert_matches_jax(lambda x: reduce(x, axis=0), x)
      assert out.shape == (3,) and dx.shape == (0, 3)
    for reduce in (jnp.sum, jnp.mean):
      out, (dx,) = assert_matches_jax(lambda x: reduce(x, axis=1), x)
      assert out.shape == (0,) and dx.shape == (0, 3)


def test_empty_batch_training_loss_gradient():
  # A whole loss over an empty batch: NaN loss, gradients like jax.grad's.
  rng = np.random.default_rng(0)
  W, b = rng.standard_normal((3, 2)).astype(np.float32), np.zeros(2, np.float32)
  x, y = np.zeros((0, 3), np.float32), np.zeros((0,), np.int32)
  loss = lambda W, b: hg.ops.softmax_cross_entropy(hg.ops.dense(x, W, b), y)
  hand, ref = hg.grad(loss, (0, 1))(W, b), jax.grad(loss, (0, 1))(W, b)
  report = check.compare("empty batch loss", "jax.grad", hand, ref)
  assert report.passed, str(report)
