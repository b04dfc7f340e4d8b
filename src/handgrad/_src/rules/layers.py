"""Layer-level operations and their hand-derived backward passes.

Each operation is plain JAX (``jax.grad`` descends into it like any jit) that stays a
single node in a jaxpr; inside ``handgrad.grad`` the engine applies the rule below it
instead of descending.  These are the seed's formulas, written once, next to their
forward pass.

Shapes: ``B`` batch (any number of leading dims), ``I``/``O`` in/out features, ``C``
classes, ``T``/``S`` query/key positions, ``H`` heads, ``D`` head size.  The signatures
say the same as jaxtyping annotations (``Float[Array, "*batch in"]``): documentation
that a type checker or ``jaxtyping.jaxtyped`` can verify, never checked at run time.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from jax import lax
from jaxtyping import Array, Float, Int

from handgrad._src import jaxpr as hj
from handgrad._src.layer_ops import layer_op
from handgrad._src.registry import defvjp


def _lead_axes(x):
  return tuple(range(x.ndim - 1))


# --- dense ---------------------------------------------------------------------------

@layer_op("dense")
def dense(x: Float[Array, "*batch in"], W: Float[Array, "in out"],
          b: Float[Array, "out"]) -> Float[Array, "*batch out"]:
  """z = x·W + b.   x: [B…, I], W: [I, O], b: [O] -> z: [B…, O]."""
  return jnp.matmul(x, W) + b


@defvjp("dense")
def _dense_vjp(dZ, z, x, W, b):
  """The seed's three formulas, for any number of leading batch dimensions ``lead``:

      dW = xᵀ · dZ        (sum over the batch of outer products)
      db = Σ_batch dZ
      dx = dZ · Wᵀ

  They compile to the ops of ``jax.grad``'s dense backward.  ``jnp.inner`` contracts
  dZ's and W's last axes directly: ``dZ @ W.T`` is the same math, but for a single
  input vector XLA:CPU materialises a transposed copy of W for it.  dW takes W's
  sharding: under a mesh the batch it sums over may be sharded.
  """
  lead = _lead_axes(x)
  dW = jnp.tensordot(x, dZ, (lead, lead), out_sharding=hj.sharding_of(W))
  db = dZ.sum(lead)
  # dZ · Wᵀ, contracting the last axes of both (as jnp.inner does)
  dx = jnp.tensordot(dZ, W, (dZ.ndim - 1, 1), out_sharding=hj.sharding_of(x))
  return dx, dW.astype(W.dtype), db.astype(b.dtype)


# --- activations ---------------------------------------------------------------------

@layer_op("relu")
def relu(x: Float[Array, "*shape"]) -> Float[Array, "*shape"]:
  """max(x, 0), elementwise.

  The forward is ``jax.nn.relu`` (a custom_jvp with relu'(0) = 0), so ``jax.grad``
  through this op agrees with the hand rule at the kink; ``jnp.maximum(x, 0)`` would
  give ½ there, JAX's tie-splitting rule for ``max``.
  """
  return jax.nn.relu(x)


@defvjp("relu")
def _relu_vjp(g, a, x):
  """da/dx = 1 where x > 0, else 0.  relu'(0) = 0, the convention of ``jax.nn.relu``
  (``jnp.maximum(x, 0)`` alone would give ½ at 0: JAX's max splits ties)."""
  return (jnp.where(x > 0, g, jnp.zeros_like(g)),)


@layer_op("sigmoid")
def sigmoid(x: Float[Array, "*shape"]) -> Float[Array, "*shape"]:
  """σ(x) = 1 / (1 + e^(−x)), elementwise."""
  return jax.nn.sigmoid(x)


@defvjp("sigmoid")
def _sigmoid_vjp(g, s, x):
  """dσ/dx = σ(1 − σ): at most ¼, which is why deep sigmoid stacks lose gradient."""
  return (g * s * (1 - s),)


@layer_op("tanh")
def tanh(x: Float[Array, "*shape"]) -> Float[Array, "*shape"]:
  """tanh(x), elementwise.

  Its rule is the ``tanh`` primitive's (``rules/transcendental.py``): the layer op and
  the primitive share the registry key ``"tanh"`` and the math, d tanh/dx = 1 − tanh²
  = (1 + t)(1 − t), the factored form exact near |t| = 1.  One registration serves both,
  so overriding ``"tanh"`` overrides both (a second one here would silently lose to, or
  replace, the other depending on import order).
  """
  return jnp.tanh(x)


# --- softmax family ------------------------------------------------------------------

@layer_op("softmax")
def softmax(x: Float[Array, "*shape"], *, axis: int = -1) -> Float[Array, "*shape"]:
  """softmax along ``axis``; the max is subtracted first so exp never overflows.

  The max starts from -inf (as ``jax.nn.softmax``'s does), so a zero-size ``axis``
  gives an empty result instead of an error."""
  m = lax.stop_gradient(jnp.max(x, axis=axis, keepdims=True, initial=-jnp.inf))
  e = jnp.exp(x - m)
  return e / jnp.sum(e, axis=axis, keepdims=True)


@defvjp("softmax")
def _softmax_vjp(g, s, x, *, axis=-1):
  """ds/dx is the Jacobian diag(s) − s sᵀ, so dx = s ⊙ (g − Σ g·s)."""
  return (s * (g - jnp.sum(g * s, axis=axis, keepdims=True)),)


@layer_op("log_softmax")
def log_softmax(x: Float[Array, "*shape"], *, axis: int = -1) -> Float[Array, "*shape"]:
  """log softmax along ``axis``: x − max − log Σ exp(x − max) (max from -inf, as in
  ``jax.nn.log_softmax``: a zero-size ``axis`` gives an empty result)."""
  shifted = x - lax.stop_gradient(jnp.max(x, axis=axis, keepdims=True, initial=-jnp.inf))
  return shifted - jnp.log(jnp.sum(jnp.exp(shifted), axis=axis, keepdims=True))


@defvjp("log_softmax")
def _log_softmax_vjp(g, ls, x, *, axis=-1):
  """dx = g − softmax(x)·Σg, with softmax(x) = exp(log_softmax(x))."""
  return (g - jnp.exp(ls) * jnp.sum(g, axis=axis, keepdims=True),)


@layer_op("softmax_cross_entropy")
def _cross_entropy_and_log_probs(logits, labels):
  num_classes = logits.shape[-1]
  log_probs = log_softmax.impl(logits, axis=-1)
  valid = (labels >= 0) & (labels < num_classes)
  safe = jnp.where(valid, labels, 0)
  picked = jnp.take_along_axis(log_probs, safe[..., None], axis=-1)[..., 0]
  return jnp.mean(jnp.where(valid, -picked, jnp.nan)), log_probs


def softmax_cross_entropy(logits: Float[Array, "*batch classes"],
                          labels: Int[Array, "*batch"]) -> Float[Array, ""]:
  """Mean cross-entropy of integer labels.   logits: [B…, C], labels: [B…] int -> [].

  A label outside ``[0, C)`` makes the loss NaN (never a silently wrong number).
  ``handgrad.train`` checks label ranges on the host before a batch is used.  The
  layer-level op also returns its log-probabilities (dropped here), so the backward
  pass reuses the forward's softmax instead of recomputing it.
  """
  return _cross_entropy_and_log_probs(logits, labels)[0]


@defvjp("softmax_cross_entropy")
def _softmax_cross_entropy_vjp(g, outs, logits, labels):
  """The seed's fused backward: dlogits = (softmax − onehot) / batch, times g.

  softmax = exp(log_probs) from the forward pass.  The scaled one-hot −g/batch is
  built by scattering into zeros at each row's label (what jax.grad's transpose of
  ``take_along_axis`` does) rather than by comparing the labels with an iota: on
  XLA:CPU the iota comparison turns into a label-only fusion that the concurrency-
  optimised scheduler runs beside the forward matmuls and slows them (measured up to
  1.25× a jax.grad step), and subtracting at the labels from the probabilities
  in place puts a scatter on the critical path (1.12× at batch 128).  This form is
  at parity at every batch size (bench/results.md).  Invalid labels give NaN rows,
  like the forward pass.  The op's second output, the log-probabilities, adds
  ``g_lp − softmax·Σ g_lp`` when a caller uses it (``g_lp`` is ``None`` otherwise).
  """
  g_loss, g_log_probs = g  # either may be None: that output received no blame
  _, log_probs = outs
  num_classes = logits.shape[-1]
  probs = jnp.exp(log_probs)
  dlogits = jnp.zeros_like(log_probs)
  if g_loss is not None:
    valid = (labels >= 0) & (labels < num_classes)
    # −g/batch per row (NaN where the label is out of range), placed at the label.
    minus_scale = jnp.where(valid, -g_loss / labels.size, jnp.nan).astype(log_probs.dtype)
    # Each row is addressed by an iota per batch dimension (with one batch dimension,
    # the row numbers), with the labels' sharding: under Explicit axes a batch
    # sharded along a mesh axis, whichever of its dimensions, needs scatter indices
    # that agree, and no batch dimensions are merged (a reshape cannot merge a
    # sharded dimension into the one before it).
    where = hj.sharding_of(labels)
    rows = tuple(lax.broadcasted_iota(labels.dtype, labels.shape, d, out_sharding=where)
                 for d in range(labels.ndim))
    minus_onehot = dlogits.at[(*rows, jnp.where(valid, labels, 0))].add(
        minus_scale, out_sharding=hj.sharding_of(log_probs))
    dlogits = minus_onehot - probs * minus_scale[..., None]
  if g_log_probs is not None:
    dlogits = dlogits + g_log_probs - probs * jnp.sum(g_log_probs, axis=-1, keepdims=True)
  return dlogits.astype(logits.dtype), None


# --- regression loss -----------------------------------------------------------------

@layer_op("mse")
def mse(pred: Float[Array, "*shape"], target: Float[Array, "*shape"]) -> Float[Array, ""]:
  """Mean squared error: mean((pred − target)²) -> []."""
  return jnp.mean(jnp.square(pred - target))


@defvjp("mse")
def _mse_vjp(g, loss, pred, target):
  """d/dpred = 2(pred − target)/N · g;  d/dtarget is its negative."""
  d = (2 * g / pred.size) * (pred - target)
  return d.astype(pred.dtype), (-d).astype(target.dtype)


# --- layer norm ----------------------------------------------------------------------

@layer_op("layer_norm")
def layer_norm(x: Float[Array, "*batch features"], gamma: Float[Array, "features"],
               beta: Float[Array, "features"], *, eps: float = 1e-5
               ) -> Float[Array, "*batch features"]:
  """Normalise the last axis:  y = (x − μ)/√(σ² + ε)·γ + β.   x: [B…, F], γ, β: [F]."""
  mu = jnp.mean(x, axis=-1, keepdims=True)
  var = jnp.mean(jnp.square(x - mu), axis=-1, keepdims=True)
  return (x - mu) * lax.rsqrt(var + eps) * gamma + beta


@defvjp("layer_norm")
def _layer_norm_vjp(g, y, x, gamma, beta, *, eps=1e-5):
  """With x̂ = (x − μ)·r, r = 1/√(σ² + ε) and dx̂ = g·γ:

      dβ = Σ_batch g,   dγ = Σ_batch g·x̂,
      dx = r·(dx̂ − mean(dx̂) − x̂·mean(dx̂·x̂))      (means over the feature axis)

  A constant row has x̂ = 0 and gets dx = r·(dx̂ − mean(dx̂)), finite for ε > 0.
  """
  lead = _lead_axes(x)
  mu = jnp.mean(x, axis=-1, keepdims=True)
  r = lax.rsqrt(jnp.mean(jnp.square(x - mu), axis=-1, keepdims=True) + eps)
  xhat = (x - mu) * r
  dxhat = g * gamma
  dx = r * (dxhat - jnp.mean(dxhat, axis=-1, keepdims=True)
            - xhat * jnp.mean(dxhat * xhat, axis=-1, keepdims=True))
  dgamma = jnp.sum(g * xhat, axis=lead) if lead else g * xhat
  dbeta = jnp.sum(g, axis=lead) if lead else g
  return dx.astype(x.dtype), dgamma.astype(gamma.dtype), dbeta.astype(beta.dtype)


# --- attention -----------------------------------------------------------------------

def _causal_keep(logits):
  """[T, S] mask: query t sees keys s ≤ t + S − T (the last query sees every key)."""
  t, s = logits.shape[-2], logits.shape[-1]
  return jnp.tril(jnp.ones((t, s), dtype=bool), k=s - t)


@layer_op("attention_weights")
def _attention_with_weights(q, k, v, *, causal=False):
  scale = 1.0 / math.sqrt(q.shape[-1])
  logits = jnp.einsum("...thd,...shd->...hts", q, k) * scale
  if causal:
    logits = jnp.where(_causal_keep(logits), logits, -jnp.inf)
  p = softmax.impl(logits, axis=-1)
  return jnp.einsum("...hts,...shd->...thd", p, v), p


def attention(q: Float[Array, "*batch q_len heads head_dim"],
              k: Float[Array, "*batch kv_len heads head_dim"],
              v: Float[Array, "*batch kv_len heads head_dim"], *, causal: bool = False
              ) -> Float[Array, "*batch q_len heads head_dim"]:
  """Scaled dot-product multi-head attention.

  q: [B…, T, H, D], k, v: [B…, S, H, D] -> [B…, T, H, D] (the layout of
  ``jax.nn.dot_product_attention``).  ``causal=True`` lets position t attend to
  positions ≤ t only.
  """
  return _attention_with_weights(q, k, v, causal=causal)[0]


@defvjp("attention_weights")
def _attention_vjp(g, outs, q, k, v, *, causal=False):
  """With P = softmax(q·kᵀ/√D) and out = P·v (per head):

      dv = Pᵀ·g,   dP = g·vᵀ,   dL = P ⊙ (dP − Σ_s dP·P) / √D   (softmax backward),
      dq = dL·k,   dk = dLᵀ·q.

  The weights P come from the forward pass (a second output of the op), so the
  backward does not recompute q·kᵀ.  Masked positions get no blame: their P is 0, and
  dL is zeroed there explicitly, as the transpose of the forward's ``where`` does in
  JAX, so a query that sees no key at all (T > S, a NaN row of P) leaves dq and dk
  finite, exactly like ``jax.vjp``.
  """
  g_out, g_p = g  # either may be None: that output received no blame
  _, p = outs
  scale = 1.0 / math.sqrt(q.shape[-1])
  if g_out is None:
    dv, dp = jnp.zeros_like(v), g_p
  else:
    dv = jnp.einsum("...hts,...thd->...shd", p, g_out)
    dp = jnp.einsum("...thd,...shd->...hts", g_out, v)
    if g_p is not None:
      dp = dp + g_p
  dlogits = p * (dp - jnp.sum(dp * p, axis=-1, keepdims=True)) * scale
  if causal:
    dlogits = jnp.where(_causal_keep(dlogits), dlogits, jnp.zeros_like(dlogits))
  dq = jnp.einsum("...hts,...shd->...thd", dlogits, k)
  dk = jnp.einsum("...hts,...thd->...shd", dlogits, q)
  return dq.astype(q.dtype), dk.astype(k.dtype), dv.astype(v.dtype)
