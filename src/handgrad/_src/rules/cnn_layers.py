"""Layer-level operations of convolutional networks and their hand-derived backward passes.

``conv2d``, ``max_pool``, ``avg_pool``, ``batch_norm``, ``embedding`` and ``flatten``,
each one node in a jaxpr (see ``rules/layers.py`` for the mechanism).  Images are NHWC:
x: [N, H, W, C]; kernels HWIO: W: [kh, kw, C, O].  The padding arithmetic of the
convolution and pooling backward passes lives beside the primitive rules
(``rules/conv.py``, ``rules/windows.py``); here are the formulas.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jaxtyping import Array, Float, Int

from handgrad._src.layer_ops import layer_op
from handgrad._src.registry import defvjp
from handgrad._src.rules.conv import _input_grad_padding, _kernel_grad_padding
from handgrad._src.rules.windows import _route_to_first_extremum, _window_sum_transpose

NHWC = ("NHWC", "HWIO", "NHWC")
# "SAME", "VALID" or ((lo, hi), (lo, hi)): a static, hashable keyword argument.
Padding = str | tuple[tuple[int, int], ...]


def _pairs(padding, window, strides, spatial_shape):
  """Explicit (lo, hi) pairs for "SAME", "VALID" or explicit padding (as lax does)."""
  if isinstance(padding, str):
    return tuple(lax.padtype_to_pads(spatial_shape, window, strides, padding))
  return tuple((int(lo), int(hi)) for lo, hi in padding)


# --- conv2d --------------------------------------------------------------------------

@layer_op("conv2d")
def conv2d(x: Float[Array, "batch height width in"], W: Float[Array, "kh kw in out"],
           b: Float[Array, "out"], *, strides: tuple[int, int] = (1, 1), padding: Padding = "SAME"
           ) -> Float[Array, "batch out_height out_width out"]:
  """z = x ⋆ W + b, a cross-correlation as in every deep-learning library.

  x: [N, H, W, C], W: [kh, kw, C, O], b: [O] -> z: [N, H', W', O] with
  H' = ⌊(H + lo + hi − kh)/sh⌋ + 1 (``padding`` "SAME", "VALID" or ((lo, hi), (lo, hi))).
  """
  return lax.conv_general_dilated(x, W, strides, padding, dimension_numbers=NHWC) + b


@defvjp("conv2d")
def _conv2d_vjp(dZ, z, x, W, b, *, strides=(1, 1), padding="SAME"):
  """A convolution is a dense layer applied to every window, z[p] = x[window p]·W + b,
  so it has the dense layer's three formulas, summed over windows:

      db = Σ_{n,p} dZ[n, p]                                   (Σ_batch dZ)
      dW[j] = Σ_{n,p} x[n, p·s + j]ᵀ · dZ[n, p]               (xᵀ · dZ, per offset j)
            = correlate(x, dZ): the cotangent slides over the input as a kernel
              dilated by the stride
      dx = Σ_p dZ[n, p] · W[x − p·s]ᵀ                         (dZ · Wᵀ, per window)
         = convolve(dZ dilated by s, W): correlation with the kernel flipped in space
           and its in/out channels swapped

  Padding of each: ``rules/conv.py`` (``_kernel_grad_padding``, ``_input_grad_padding``).
  """
  spatial, k, s = x.shape[1:3], W.shape[:2], tuple(strides)
  pads = _pairs(padding, k, s, spatial)
  # per axis: (size, lhs dilation, lo, hi, kernel, kernel dilation, stride, outputs)
  dims = [(n, 1, lo, hi, kk, 1, ss, o)
          for n, (lo, hi), kk, ss, o in zip(spatial, pads, k, s, z.shape[1:3])]
  if dZ.size == 0 or x.size == 0:
    return jnp.zeros_like(x), jnp.zeros_like(W), jnp.sum(dZ, axis=(0, 1, 2)).astype(b.dtype)
  db = jnp.sum(dZ, axis=(0, 1, 2))
  dW = lax.conv_general_dilated(            # batch ↔ channels: [C, H, W, N] ⋆ [H', W', N, O]
      x, dZ, window_strides=(1, 1), padding=[_kernel_grad_padding(*d) for d in dims],
      rhs_dilation=s, dimension_numbers=("CHWN", "IHWO", "HWNC"),
      out_sharding=jax.typeof(W).sharding)
  W_flipped = lax.rev(W, (0, 1))             # [kh, kw, C, O], used as HWOI: O in, C out
  dx = lax.conv_general_dilated(
      dZ, W_flipped, window_strides=(1, 1), padding=[_input_grad_padding(*d) for d in dims],
      lhs_dilation=s, dimension_numbers=("NHWC", "HWOI", "NHWC"),
      out_sharding=jax.typeof(x).sharding)
  return dx.astype(x.dtype), dW.astype(W.dtype), db.astype(b.dtype)


# --- pooling -------------------------------------------------------------------------

def _window(window, strides):
  strides = window if strides is None else strides
  return (1, *window, 1), (1, *strides, 1)


@layer_op("max_pool")
def max_pool(x: Float[Array, "batch height width channels"], *, window: tuple[int, int] = (2, 2),
             strides: tuple[int, int] | None = None, padding: Padding = "VALID"
             ) -> Float[Array, "batch out_height out_width channels"]:
  """Max over each window.   x: [N, H, W, C] -> [N, H', W', C]; ``strides`` defaults
  to ``window`` (non-overlapping windows); padding never wins (it is −∞)."""
  win, st = _window(window, strides)
  return lax.reduce_window(x, -jnp.inf, lax.max, win, st, padding)


@defvjp("max_pool")
def _max_pool_vjp(g, y, x, *, window=(2, 2), strides=None, padding="VALID"):
  """dx[m] = Σ_windows g[p]·[x[m] is the maximum of window p]: each window's blame goes
  to its arg-max, the rest of the window gets none.  A tied window gives it all to its
  first maximum in row-major order, as ``jax.grad`` does (``select_and_scatter_add``)."""
  win, st = _window(window, strides)
  pads = _pairs(padding, win, st, x.shape)
  if g.size == 0 or x.size == 0:
    return (jnp.zeros_like(x),)
  ones = (1,) * x.ndim
  return (_route_to_first_extremum(g, x, y, -np.inf, win, st, pads, ones, ones),)


@layer_op("avg_pool")
def avg_pool(x: Float[Array, "batch height width channels"], *, window: tuple[int, int] = (2, 2),
             strides: tuple[int, int] | None = None, padding: Padding = "VALID"
             ) -> Float[Array, "batch out_height out_width channels"]:
  """Mean over each window, padding counted as zeros (the window size is the divisor,
  like ``flax.linen.avg_pool``'s default).   x: [N, H, W, C] -> [N, H', W', C]."""
  win, st = _window(window, strides)
  return lax.reduce_window(x, 0.0, lax.add, win, st, padding) / math.prod(window)


@defvjp("avg_pool")
def _avg_pool_vjp(g, y, x, *, window=(2, 2), strides=None, padding="VALID"):
  """dx[m] = Σ_{windows p ∋ m} g[p] / K: every element of a window gets 1/K of its blame."""
  win, st = _window(window, strides)
  pads = _pairs(padding, win, st, x.shape)
  if g.size == 0 or x.size == 0:
    return (jnp.zeros_like(x),)
  ones = (1,) * x.ndim
  dx = _window_sum_transpose(g / math.prod(window), x.shape, win, st, pads, ones, ones)
  return (dx.astype(x.dtype),)


# --- flatten -------------------------------------------------------------------------

@layer_op("flatten")
def flatten(x: Float[Array, "batch *rest"]) -> Float[Array, "batch flat"]:
  """[N, d1, d2, …] -> [N, d1·d2·…] (row-major, the layout dense layers expect)."""
  return jnp.reshape(x, (x.shape[0], math.prod(x.shape[1:])))


@defvjp("flatten")
def _flatten_vjp(g, y, x):
  """A reshape moves no value: dx = g reshaped back."""
  return (jnp.reshape(g, x.shape),)


# --- batch norm ----------------------------------------------------------------------

def _stat_axes(x):
  return tuple(range(x.ndim - 1))  # every axis but the features: N (and H, W)


@layer_op("batch_norm")
def batch_norm(x: Float[Array, "batch *rest features"], gamma: Float[Array, "features"],
               beta: Float[Array, "features"], mean: Float[Array, "features"],
               var: Float[Array, "features"], *, train: bool = True, momentum: float = 0.9,
               eps: float = 1e-5) -> tuple[Float[Array, "batch *rest features"],
                                           Float[Array, "features"], Float[Array, "features"]]:
  """Batch normalisation over every axis but the last (features).

  x: [N, …, F]; gamma, beta, mean, var: [F].  Returns ``(y, new_mean, new_var)``:

  * ``train=True``: y = (x − μ_B)/√(σ²_B + ε)·γ + β with the batch statistics
    μ_B, σ²_B (biased variance); the running statistics move towards them,
    new = momentum·running + (1 − momentum)·batch (flax's convention).
  * ``train=False``: y = (x − mean)/√(var + ε)·γ + β; the statistics are returned as
    they came.
  """
  if not train:
    return (x - mean) * lax.rsqrt(var + eps) * gamma + beta, mean, var
  axes = _stat_axes(x)
  mu = jnp.mean(x, axis=axes)
  sigma2 = jnp.mean(jnp.square(x - mu), axis=axes)
  y = (x - mu) * lax.rsqrt(sigma2 + eps) * gamma + beta
  return y, momentum * mean + (1 - momentum) * mu, momentum * var + (1 - momentum) * sigma2


@defvjp("batch_norm")
def _batch_norm_vjp(g, outs, x, gamma, beta, mean, var, *, train=True, momentum=0.9,
                    eps=1e-5):
  """Training mode, with M elements per feature, x̂ = (x − μ_B)·r, r = 1/√(σ²_B + ε) and
  dx̂ = g·γ (means over the batch axes):

      dβ = Σ g,   dγ = Σ g·x̂,
      dx = r·(dx̂ − mean(dx̂) − x̂·mean(dx̂·x̂))

  μ_B and σ²_B depend on every x of the batch: the two subtracted means are that
  dependence (through μ_B, and through σ²_B).  It is why a batch-normalised layer's
  gradient is centred and orthogonal to x̂, and keeps its scale as the network deepens.
  The running statistics, when blamed (g_mean, g_var), add
  dx += (1 − momentum)·(g_mean + 2·(x − μ_B)·g_var)/M and d(mean, var) = momentum·g.

  Eval mode: y = (x − mean)·r·γ + β with r = 1/√(var + ε):
  dx = g·γ·r,  dmean = −Σ g·γ·r,  dvar = −½ Σ g·γ·(x − mean)·r³ (+ g_mean, g_var).
  """
  g_y, g_mean, g_var = g  # any may be None: that output received no blame
  axes = _stat_axes(x)
  zeros = lambda a: jnp.zeros_like(a)  # noqa: E731
  if not train:
    r = lax.rsqrt(var + eps)
    gy = zeros(x) if g_y is None else g_y
    dx = gy * gamma * r
    xhat = (x - mean) * r
    dmean = -jnp.sum(dx, axis=axes)
    dvar = -0.5 * jnp.sum(gy * gamma * xhat, axis=axes) * r * r
    dgamma, dbeta = jnp.sum(gy * xhat, axis=axes), jnp.sum(gy, axis=axes)
    if g_mean is not None:
      dmean = dmean + g_mean
    if g_var is not None:
      dvar = dvar + g_var
  else:
    m = math.prod(x.shape[a] for a in axes)
    mu = jnp.mean(x, axis=axes)
    r = lax.rsqrt(jnp.mean(jnp.square(x - mu), axis=axes) + eps)
    xhat = (x - mu) * r
    dx = zeros(x)
    dgamma, dbeta = zeros(gamma), zeros(beta)
    if g_y is not None:
      dxhat = g_y * gamma
      dx = r * (dxhat - jnp.mean(dxhat, axis=axes)
                - xhat * jnp.mean(dxhat * xhat, axis=axes))
      dgamma, dbeta = jnp.sum(g_y * xhat, axis=axes), jnp.sum(g_y, axis=axes)
    dmean, dvar = zeros(mean), zeros(var)
    if g_mean is not None:
      dx = dx + (1 - momentum) * g_mean / m
      dmean = momentum * g_mean
    if g_var is not None:
      dx = dx + (1 - momentum) * 2 * (x - mu) * g_var / m
      dvar = momentum * g_var
  return (dx.astype(x.dtype), dgamma.astype(gamma.dtype), dbeta.astype(beta.dtype),
          dmean.astype(mean.dtype), dvar.astype(var.dtype))


# --- embedding -----------------------------------------------------------------------

def _rows(ids, v):
  """(row read by each id, whether it is in range): negative ids count from the end."""
  ids = jnp.where(ids < 0, ids + v, ids)
  valid = (ids >= 0) & (ids < v)
  return jnp.where(valid, ids, 0), valid


@layer_op("embedding")
def embedding(table: Float[Array, "vocab features"], ids: Int[Array, "*batch"]
              ) -> Float[Array, "*batch features"]:
  """Rows of ``table`` [V, D] at integer ``ids`` [B…] -> [B…, D].

  As ``jnp.take(table, ids, axis=0)`` (``flax.linen.Embed``): a negative id counts from
  the end, an id outside [−V, V) gives a NaN row (never a silently wrong one).
  """
  rows, valid = _rows(ids, table.shape[0])
  return jnp.where(valid[..., None], table[rows], jnp.nan)


@defvjp("embedding")
def _embedding_vjp(g, y, table, ids):
  """d table[v] = Σ_{positions with id v} g: a scatter-add of the cotangent rows (repeated
  ids accumulate; an out-of-range id read no row, so its cotangent is dropped)."""
  rows, valid = _rows(ids, table.shape[0])
  g = jnp.where(valid[..., None], g, jnp.zeros_like(g)).astype(table.dtype)
  return jnp.zeros_like(table).at[rows].add(g), None
