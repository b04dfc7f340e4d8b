"""Datasets and minibatches: real MNIST (embedded 5,000 digits or the full IDX files)."""

from handgrad._src.data.batching import Batch
from handgrad._src.data.batching import batches
from handgrad._src.data.batching import num_batches
from handgrad._src.data.mnist import DataError
from handgrad._src.data.mnist import Dataset
from handgrad._src.data.mnist import load_embedded_mnist
from handgrad._src.data.mnist import load_mnist
from handgrad._src.data.mnist import load_mnist_idx

__all__ = [
    "Batch", "DataError", "Dataset", "batches", "load_embedded_mnist", "load_mnist",
    "load_mnist_idx", "num_batches",
]
