"""Opt-in fixes for packaging gaps between TensorFlow 2.21 and the libraries TF1 scripts use.

tf-slim 1.1.0's `batch_norm` goes through `tensorflow.python.layers.normalization`, which
imports `tf_keras.legacy_tf_layers.normalization`; tf_keras 2.21 ships that module as
`tf_keras.src.legacy_tf_layers.normalization`, so a slim model fails on its first batch norm
with `ModuleNotFoundError: No module named 'tf_keras.legacy_tf_layers'`. Not this library's
bug, but its users meet it first.
"""

import importlib
import sys

_LEGACY = "tf_keras.legacy_tf_layers"


def install_tf_slim_shim():
  """Makes `tf_keras.legacy_tf_layers` (and its `normalization`) importable under the name
  TensorFlow asks for. Idempotent; changes nothing where tf_keras already provides it.

  Call it before building a tf-slim model: `qat_rewrite.compat.install_tf_slim_shim()`.
  """
  try:
    importlib.import_module(_LEGACY + ".normalization")
    return
  except ModuleNotFoundError:
    pass
  tf_keras = importlib.import_module("tf_keras")
  package = importlib.import_module("tf_keras.src.legacy_tf_layers")
  sys.modules.setdefault(_LEGACY, package)
  sys.modules.setdefault(_LEGACY + ".normalization",
                         importlib.import_module("tf_keras.src.legacy_tf_layers.normalization"))
  if not hasattr(tf_keras, "legacy_tf_layers"):
    tf_keras.legacy_tf_layers = package
