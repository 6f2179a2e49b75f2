"""AMCT's tensor decomposition API: `amct_tensorflow.tensor_decompose` on TensorFlow 2.x.

    add_ops = auto_decomposition(meta_path, ckpt_path, save_path)
    new_convs = decompose_graph(save_path, graph=None)

Each eligible Conv2D (group 1, dilation 1, stride < 3, kernel > 2x2) becomes a Tucker-2 chain
1x1 -> kxk -> 1x1 (`decom_first`, `decom_core`, `decom_last`); see qat_rewrite.decompose.
Files under `save_path`: `.meta`, `.index`, `.data-*`, `checkpoint`, and `.json`, the record of
the graph changes (AMCT writes a `.pkl`; a pickle is never written or read here).

Order in the training script: build the model, `decompose_graph`, then create the optimizer and
the Saver, then restore `save_path` and fine-tune. A Saver made before `decompose_graph` still
lists the replaced kernels, which the decomposed checkpoint does not hold.
"""

import os

import tensorflow as tf

from qat_rewrite.decompose import auto


def _path(name, value):
  if isinstance(value, os.PathLike):
    value = os.fspath(value)
  if not isinstance(value, str) or not value:
    raise ValueError("%s must be a file path, got %r" % (name, value))
  return value


def auto_decomposition(meta_path, ckpt_path, save_path, *, max_error=auto.MAX_ERROR,
                       min_flop_reduction=auto.MIN_FLOP_REDUCTION, ranks=None):
  """Decomposes every eligible Conv2D of the trained model; returns the new conv op names.

  The per-layer report (ranks, kernel and measured output error, FLOPs, or why a conv was
  left alone) is logged, kept in `<save_path>.json` and set as `.report` on the returned list.
  Beyond AMCT's arguments: `max_error` bounds each layer's relative kernel error (the rank
  rule), `min_flop_reduction` is the saving below which a layer is left alone, and `ranks`
  ({conv name: (R_in, R_out)}) forces ranks.
  """
  meta_path = _path("meta_path", meta_path)
  ckpt_path = _path("ckpt_path", ckpt_path)
  save_path = _path("save_path", save_path)
  if not os.path.isfile(meta_path):
    raise ValueError("meta_path %r does not exist" % meta_path)
  if not tf.io.gfile.exists(ckpt_path + ".index"):
    raise ValueError("ckpt_path %r is not a checkpoint prefix (%s.index does not exist)"
                     % (ckpt_path, ckpt_path))
  if os.path.abspath(save_path) == os.path.abspath(ckpt_path):
    raise ValueError("save_path %r would overwrite the original checkpoint" % save_path)
  if not 0.0 < max_error < 1.0:
    raise ValueError("max_error must be in (0, 1), got %r" % (max_error,))
  options = auto.Options(max_error, min_flop_reduction, ranks)
  names, report, _ = auto.auto_decompose(meta_path, ckpt_path, save_path, options)
  return _with_report(names, report)


def decompose_graph(save_path, graph=None):
  """Applies the changes recorded by auto_decomposition to `graph` (default: the default
  graph) in place; returns the new conv op names. Nothing changes if the record does not fit."""
  save_path = _path("save_path", save_path)
  graph = tf.compat.v1.get_default_graph() if graph is None else graph
  if not isinstance(graph, tf.Graph):
    raise ValueError("graph must be a tf.Graph or None, got %r" % (graph,))
  names, report = auto.decompose(graph, save_path)
  return _with_report(names, report)


class _Names(list):
  """A plain list of names, with the per-layer report attached."""
  report = ()


def _with_report(names, report):
  result = _Names(names)
  result.report = report
  return result
