"""handgrad.grad differentiates flax.linen convolutional models like jax.grad: Conv
(strided, dilated, grouped, 1-D), ConvTranspose, BatchNorm in training mode with mutable
batch_stats, GroupNorm, Embed, max and average pooling."""

import chex
import flax.linen as linen
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import handgrad as hg


class ConvNet(linen.Module):

  @linen.compact
  def __call__(self, x, train: bool = True):
    x = linen.Conv(6, (3, 3), strides=(2, 1), padding="SAME")(x)
    x = linen.BatchNorm(use_running_average=not train, momentum=0.9)(x)
    x = linen.relu(x)
    x = linen.max_pool(x, (2, 2), strides=(1, 1), padding="SAME")
    x = linen.Conv(6, (2, 2), kernel_dilation=(2, 1), feature_group_count=3,
                   padding="VALID")(x)
    x = linen.GroupNorm(num_groups=2)(x)
    x = linen.ConvTranspose(4, (3, 3), strides=(2, 2))(x)
    x = linen.avg_pool(x, (2, 2))
    x = linen.Conv(2, (1, 1), kernel_dilation=1, padding=((1, 0), (0, 1)))(x)
    return jnp.mean(x, axis=(1, 2))


class Conv1D(linen.Module):

  @linen.compact
  def __call__(self, ids):
    x = linen.Embed(11, 4)(ids)                   # [B, T, 4]
    x = linen.Conv(5, (3,), padding="CAUSAL")(x)  # 1-D convolution over T
    x = linen.Conv(5, (2,), strides=(2,), input_dilation=(2,), padding=((1, 1),))(x)
    return jnp.sum(jnp.tanh(x), axis=1)


def _agree(got, want, tol):
  chex.assert_trees_all_equal_shapes_and_dtypes(got, want)
  chex.assert_trees_all_close(got, want, rtol=tol, atol=tol)


@pytest.mark.parametrize("dtype,tol", [(jnp.float64, 1e-7), (jnp.float32, 1e-5)])
def test_conv_batch_norm_group_norm_transpose(dtype, tol):
  with jax.enable_x64(True):
    model = ConvNet()
    x = jnp.asarray(np.random.default_rng(0).standard_normal((3, 8, 7, 3)), dtype)
    variables = model.init(jax.random.key(0), x)
    variables = jax.tree.map(lambda a: jnp.asarray(a, dtype), variables)
    params, stats = variables["params"], variables["batch_stats"]

    def loss(params, x):
      # training mode: batch statistics, running statistics updated as mutable state
      out, updates = model.apply({"params": params, "batch_stats": stats}, x,
                                 mutable=["batch_stats"])
      return jnp.sum(jnp.sin(out)), updates["batch_stats"]

    both = jax.jit(lambda p, x: (hg.grad(loss, argnums=(0, 1), has_aux=True)(p, x),
                                 jax.grad(loss, argnums=(0, 1), has_aux=True)(p, x)))
    (got, got_stats), (want, want_stats) = both(params, x)
    _agree(got, want, tol)
    _agree(got_stats, want_stats, tol)
    moved = jax.tree.map(lambda a, b: float(jnp.max(jnp.abs(a - b))), got_stats, stats)
    assert max(jax.tree.leaves(moved)) > 0  # the running statistics did move

    def eval_loss(params, x):
      return jnp.sum(jnp.sin(model.apply({"params": params, "batch_stats": stats}, x,
                                         train=False)))

    both = jax.jit(lambda p, x: (hg.grad(eval_loss, (0, 1))(p, x),
                                 jax.grad(eval_loss, (0, 1))(p, x)))
    _agree(*both(params, x), tol)


def test_embed_and_1d_convs():
  with jax.enable_x64(True):
    model = Conv1D()
    ids = jnp.asarray(np.random.default_rng(1).integers(0, 11, (2, 9)))
    params = model.init(jax.random.key(1), ids)["params"]
    loss = lambda p: jnp.sum(model.apply({"params": p}, ids) ** 2)  # noqa: E731
    both = jax.jit(lambda p: (hg.grad(loss)(p), jax.grad(loss)(p)))
    _agree(*both(params), 1e-5)
