"""Gradient diagnostics that run inside ``jax.jit``: see :mod:`handgrad.inspect`."""
