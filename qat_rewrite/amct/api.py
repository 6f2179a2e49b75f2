"""AMCT's TensorFlow API on TensorFlow 2.x graphs (tf.compat.v1 Graph + Session).

Same names and arguments as `amct_tensorflow` (including its spelling `config_defination`).
Arguments are checked here; the work is done by `qat_rewrite.targets.ascend`.
"""

import os

import tensorflow as tf
from absl import logging

from qat_rewrite.passes.transaction import all_or_nothing
from qat_rewrite.targets.ascend import calibrate, config, export, retrain

_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING,
           "error": logging.ERROR}


def _graph(graph):
  if not isinstance(graph, tf.Graph):
    raise ValueError("graph must be a tf.Graph, got %r" % (graph,))
  return graph


def _path(name, value, must_exist=False):
  if isinstance(value, os.PathLike):
    value = os.fspath(value)
  if not isinstance(value, str) or not value:
    raise ValueError("%s must be a file path, got %r" % (name, value))
  if must_exist and not os.path.isfile(value):
    raise ValueError("%s %r does not exist" % (name, value))
  return value


def create_quant_retrain_config(config_file, graph, config_defination=None):
  """Writes the per-layer retrain JSON config of `graph` to `config_file`.

  Every MatMul, Conv2D, DepthwiseConv2dNative, Conv2DBackpropInput and AvgPool that AMCT can
  retrain is listed (an AvgPool has no weights: only its data config acts, and its weight
  config must stay per tensor); `config_defination`, a simple config in protobuf text, sets
  batch_num, the data (ulq_quantize) and weight (arq_retrain) configs, skip lists and
  overrides. Returns the float layers with their reasons (AMCT returned None).
  """
  config_file = _path("config_file", config_file)
  if config_defination is not None:
    config_defination = _path("config_defination", config_defination, must_exist=True)
  batch_num, layers, found = config.retrain_layer_configs(_graph(graph), config_defination)
  config.write_json(config_file, config.retrain_json(batch_num, layers))
  for warning in found.warnings.values():
    logging.warning("%s", warning)
  for f in found.float_ops:
    logging.info("stays float: %s (%s): %s", f.op, f.type, f.reason)
  return found.float_ops


def create_quant_retrain_model(graph, config_file, record_file):
  """Inserts the retrain quantizers into `graph` (training or eval graph) in place.

  Call it before building the optimizer. Returns a list: the trainable clip variables, then
  the op that writes the record file when run (`retrain_ops[-1]`); `.report` on the list says
  what was quantized and what stayed float.
  """
  retrain_ops = all_or_nothing(retrain.rewrite)(
      _graph(graph), _path("config_file", config_file, must_exist=True),
      _path("record_file", record_file))
  record_op = retrain_ops[-1]
  record_op.output_tensor = record_op.outputs[0]  # AMCT's samples read it
  return retrain_ops


def save_quant_retrain_model(pb_model, outputs, record_file, save_path):
  """Writes `<save_path>_quantized.pb` (deploy) and `<save_path>_fake_quant.pb` (stock TF).

  `pb_model` is the frozen retrained eval graph, `record_file` the record written by
  `retrain_ops[-1]`. Returns {file name: path}.
  """
  return export.save_retrained(_path("pb_model", pb_model, must_exist=True), outputs,
                               _path("record_file", record_file, must_exist=True),
                               save_path)


def create_quant_config(config_file, graph, skip_layers=None, batch_num=1,
                        activation_offset=True, config_defination=None):
  """Writes the per-layer calibration JSON config of `graph` to `config_file`.

  With `config_defination` (protobuf text: batch_num, activation_offset, skip_layers,
  skip_layer_types) the other keyword arguments are ignored, as in AMCT.
  """
  config_file = _path("config_file", config_file)
  if config_defination is not None:
    config_defination = _path("config_defination", config_defination, must_exist=True)
  batch_num, offset, layers, found = config.calibration_layer_configs(
      _graph(graph), skip_layers, batch_num, activation_offset, config_defination)
  config.write_json(config_file, config.calibration_json(batch_num, offset, layers))
  return found.float_ops


def quantize_model(graph, config_file, record_file):
  """Rewrites the inference `graph` in place for calibration; returns the added ops.

  Then initialise the variables and run exactly `batch_num` inference batches: the record file
  is written after the last one.
  """
  added, report = all_or_nothing(calibrate.rewrite)(
      _graph(graph), _path("config_file", config_file, must_exist=True),
      _path("record_file", record_file))
  logging.info("%s", report.summary())
  return added


def save_model(pb_model, outputs, record_file, save_path):
  """From the ORIGINAL frozen float model and the calibration record, writes the same two files
  as save_quant_retrain_model."""
  return export.save_calibrated(_path("pb_model", pb_model, must_exist=True), outputs,
                                _path("record_file", record_file, must_exist=True), save_path)


def set_logging_level(print_level="info", save_level="info"):
  """Sets the absl log level from AMCT's names; `save_level` is accepted (no log file here)."""
  for name, value in (("print_level", print_level), ("save_level", save_level)):
    if str(value).lower() not in _LEVELS:
      raise ValueError("%s must be one of %s, got %r" % (name, ", ".join(_LEVELS), value))
  logging.set_verbosity(_LEVELS[print_level.lower()])
