"""Datasets and batching; the public names live in ``handgrad.data``."""
