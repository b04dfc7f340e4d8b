"""The inspection tools' shared helpers: named leaves and norms in at least float32."""

import jax
import jax.numpy as jnp
import numpy as np
import optax

from handgrad._src.inspect import _tree


def test_l2_norm_is_optax_tree_norm_in_float32_at_least():
  tree = {"a": jnp.arange(6.0).reshape(2, 3), "b": [jnp.array([3.0, -4.0])]}
  leaves = jax.tree.leaves(tree)
  got = _tree.l2_norm(leaves + [None])
  assert got.dtype == jnp.float32
  np.testing.assert_allclose(got, optax.tree.norm(tree), rtol=1e-7)
  np.testing.assert_allclose(got, np.sqrt(55.0 + 25.0), rtol=1e-7)
  assert _tree.l2_norm([]) == 0 and _tree.l2_norm([]).dtype == jnp.float32


def test_l2_norm_does_not_overflow_in_half_precision():
  # 1000 in float16 is exact, but its square (1e6) is past float16's 65504.
  x = jnp.full((4,), 1000.0, jnp.float16)
  assert not jnp.isfinite(optax.tree.norm([x]))
  got = _tree.l2_norm([x])
  assert got.dtype == jnp.float32 and float(got) == 2000.0


def test_l2_norm_of_complex_leaves():
  z = jnp.array([3.0 + 4.0j, 0.0 + 1.0j], jnp.complex64)
  np.testing.assert_allclose(_tree.l2_norm([z]), np.sqrt(26.0), rtol=1e-7)


def test_named_leaves_use_parameter_paths():
  tree = {"layers": [{"W": jnp.ones(2), "b": jnp.zeros(1)}], "step": jnp.array(3)}
  assert [p for p, _ in _tree.named_leaves(tree)] == ["layers/0/W", "layers/0/b"]
