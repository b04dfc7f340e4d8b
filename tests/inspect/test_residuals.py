"""What the hand backward pass saves from its forward pass (saved_residuals)."""

import jax
import jax.numpy as jnp
import pytest

import handgrad as hg


pytestmark = pytest.mark.usefixtures("x64")  # tests/conftest.py


def test_saved_residuals_plain_versus_checkpoint():
  w = jnp.ones((4, 3)) * 0.1
  x = jnp.ones((5, 4))
  block = lambda w: jnp.sin(jnp.tanh(x @ w) @ w.T)
  plain = hg.saved_residuals(lambda w, x: jnp.sum(block(w)), w, x)
  remat = hg.saved_residuals(lambda w, x: jnp.sum(jax.checkpoint(block)(w)), w, x)
  assert any("tanh" in r.source for r in plain)
  assert not any(r.source.startswith("output") for r in remat)
  assert sum(r.nbytes for r in remat) < sum(r.nbytes for r in plain)


def test_arguments_are_named_by_their_path():
  params = {"W": jnp.ones((3, 2)), "b": jnp.zeros(2)}
  residuals = hg.inspect.saved_residuals(
      lambda p, x: jnp.sum(jnp.tanh(x @ p["W"] + p["b"])), params, jnp.ones((4, 3)))
  sources = [r.source for r in residuals]
  assert "argument [0]['W']" in sources
  assert any(r.source.startswith("output of tanh") and r.shape == (4, 2) and r.nbytes == 64
             for r in residuals)


def test_print_saved_residuals(capsys):
  hg.print_saved_residuals(lambda w: jnp.sum(jnp.exp(w) ** 2), jnp.ones(3))
  out = capsys.readouterr().out
  assert "output of exp" in out and "total" in out
