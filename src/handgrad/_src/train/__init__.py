"""Training with optax: train state, jitted steps, clipping, freezing, checkpoints, loop.

The public names live in ``handgrad.train``.
"""
