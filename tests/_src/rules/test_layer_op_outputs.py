"""Multi-output layer ops: rules see None for an unused output and stay exact either way."""

import chex
import jax
import jax.numpy as jnp
import pytest

import handgrad as hg
from handgrad._src.rules import layers


pytestmark = pytest.mark.usefixtures("x64")  # tests/conftest.py


@pytest.mark.parametrize("use", ["loss", "log_probs", "both"])
def test_cross_entropy_outputs(use):
  logits = jnp.linspace(-2.0, 3.0, 15).reshape(5, 3)
  labels = jnp.array([0, 2, 1, 1, 0])
  assert logits.dtype == jnp.float64

  def f(z):
    loss, log_probs = layers._cross_entropy_and_log_probs(z, labels)
    terms = {"loss": loss, "log_probs": jnp.sum(jnp.sin(log_probs)),
             "both": loss * 2.0 + jnp.sum(log_probs ** 2)}
    return terms[use]
  chex.assert_trees_all_close(hg.grad(f)(logits), jax.grad(f)(logits), rtol=1e-7, atol=1e-9)


@pytest.mark.parametrize("use", ["out", "weights", "both"])
def test_attention_outputs(use):
  k = jax.random.split(jax.random.key(0), 3)
  q, kk, v = (jax.random.normal(key, (2, 4, 2, 3), jnp.float64) for key in k)

  def f(q, kk, v):
    out, weights = layers._attention_with_weights(q, kk, v, causal=True)
    terms = {"out": jnp.sum(out ** 2), "weights": jnp.sum(jnp.cos(weights)),
             "both": jnp.sum(out) + jnp.sum(weights ** 2)}
    return terms[use]
  chex.assert_trees_all_close(hg.grad(f, (0, 1, 2))(q, kk, v), jax.grad(f, (0, 1, 2))(q, kk, v),
                              rtol=1e-7, atol=1e-9)
