"""AMCT's calibration (post-training) rewrite: fold batch norms, then observe each layer's input
range over `batch_num` runs and write the record file after the last one.

The observers are py_funcs on the forward path (the layer reads its input through them), so
ordinary inference runs calibrate, as with AMCT's quantize_model. The data range is the min/max
of all batches (AMCT searches a percentile clip, IFMR); weights use ARQ's scale of the folded
weights, and a layer without weights (AvgPool) records scale_w [1.0] (see record.py).
"""

import os
import threading

import numpy as np
import tensorflow as tf
from absl import logging

from qat_rewrite import files
from qat_rewrite.graph import editor, roles
from qat_rewrite.passes.rewrite import fold_for_quantization
from qat_rewrite.quant import range_estimators
from qat_rewrite.report import FloatOp, LayerReport
from qat_rewrite.targets.ascend import config as ascend_config
from qat_rewrite.targets.ascend import layers as ascend_layers
from qat_rewrite.targets.ascend import numerics, record

SCOPE = "calibration"
OBSERVE_ROLE = "amct_observe"  # the py_func that hands a layer's statistics to the record


class Calibration:
  """Collects each layer's batch ranges; writes the record when every layer has `batch_num`."""

  def __init__(self, layers, batch_num, activation_offset, record_file, range_method="min_max"):
    self.layers, self.batch_num = layers, batch_num
    self.range_method = range_estimators.check(range_method)
    self.activation_offset, self.record_file = activation_offset, record_file
    self.ranges = {name: [] for name in layers}
    self.scale_w = {}
    self.written = False
    self._lock = threading.Lock()

  def observe(self, name, batch_min, batch_max, scale_w, data=None):
    """Counts one batch of layer `name`: its range (from `data` when the range method needs
    the values) and its weight scales."""
    if data is not None:
      batch_min, batch_max = range_estimators.batch_range(data, self.range_method)
    with self._lock:
      seen = self.ranges[name]
      if len(seen) >= self.batch_num:
        if self.written:
          logging.log_first_n(logging.WARNING, "calibration already wrote %s after %d batches; "
                              "later batches are ignored", 1, self.record_file,
                              self.batch_num)
        return
      seen.append((float(batch_min), float(batch_max)))
      self.scale_w[name] = tuple(float(s) for s in np.reshape(scale_w, [-1]))
      if all(len(r) >= self.batch_num for r in self.ranges.values()):
        record.write(self.record_file, self.records())
        self.written = True
        logging.info("AMCT calibration: wrote %d layers to %s", len(self.layers),
                     self.record_file)

  def records(self):
    out = {}
    for name in self.layers:
      low, high = range_estimators.combine(self.ranges[name], self.range_method)
      if self.activation_offset:
        scale_d, offset_d = numerics.data_scale_offset_np(low, high)
      else:
        scale_d, offset_d = numerics.symmetric_scale_np([low, high]), 0
      scale_w = self.scale_w[name]
      out[name] = record.LayerRecord(float(scale_d), int(offset_d), scale_w, (0,) * len(scale_w))
    return out


def rewrite(graph, config_file, record_file, range_method="min_max"):
  """Rewrites the inference `graph` in place for calibration; returns (added ops, report).
  `range_method`: how data ranges are chosen, see qat_rewrite.quant.range_estimators."""
  with graph.as_default(), graph.name_scope(None):
    batch_num, activation_offset, configs = ascend_config.read_calibration_json(config_file)
    files.check_output_dir(os.path.dirname(os.path.abspath(record_file)))
    if any(roles.of(op) == OBSERVE_ROLE for op in graph.get_operations()):
      raise ValueError("the graph already holds AMCT calibration ops: call quantize_model once")
    found = ascend_layers.find_layers(graph)
    names = {op.name for op in graph.get_operations()}
    missing = sorted(set(configs) - names)
    if missing:
      raise ValueError("config file %s: layer %r is not in the graph" % (config_file, missing[0]))
    reasons = {f.op: f.reason for f in found.float_ops}
    for name, cfg in configs.items():
      if cfg.quant_enable and name in reasons:
        raise ValueError("config file %s: layer %r cannot be quantized: %s"
                         % (config_file, name, reasons[name]))
    layers = [op for op in found.layers if op.name in configs and configs[op.name].quant_enable]
    for op in layers:
      if configs[op.name].channel_wise and not ascend_layers.supports_channel_wise(op):
        raise ValueError("config file %s: layer %r is a %s; channel_wise is allowed only for "
                         "convolutions" % (config_file, op.name, op.type))
    report, folds, excluded, _ = fold_for_quantization(graph, False, lambda op: True)
    report.float_ops.extend(found.float_ops)
    report.float_ops.extend(FloatOp(op.name, op.type, "quant_enable is false or not in the config")
                            for op in found.layers if op not in layers)
    layers = [op for op in layers if op not in excluded]
    calibration = Calibration([op.name for op in layers], batch_num, activation_offset,
                              os.path.abspath(record_file), range_method)
    added = []
    for op in layers:
      added.append(_observe(graph, op, configs[op.name].channel_wise, calibration))
      report.layers.append(LayerReport(op.name, ascend_layers.kind(op).name, folds.folded.get(op.name),
                                       ascend_layers.has_weights(op),
                                       ["%s/%s" % (op.name, SCOPE)]))
    return added, report


def _observe(graph, op, channel_wise, calibration):
  kind = ascend_layers.kind(op)
  with graph.name_scope("%s/%s/" % (op.name, SCOPE)):
    # A NaN would be cast into the record and the int8 weights (min/max reductions and ReLU
    # can drop it, so each element is checked): stop instead, naming the layer.
    x = tf.debugging.check_numerics(op.inputs[kind.data_input],
                                    "NaN or Inf in the input of layer %s" % op.name)
    if kind.weight_input is None:
      scale_w = tf.constant(record.NO_WEIGHTS_SCALE_W, tf.float32, name="scale_w")
    else:
      weights = tf.debugging.check_numerics(op.inputs[kind.weight_input],
                                            "NaN or Inf in the folded weights of layer %s"
                                            % op.name)
      scale_w = numerics.weight_scale(weights, ascend_layers.reduce_axes(op, channel_wise))
    statistics = [tf.reduce_min(x), tf.reduce_max(x), scale_w]
    if calibration.range_method != "min_max":  # the values themselves, one batch at a time
      statistics.append(x)
    observe = tf.compat.v1.py_func(
        lambda *args, name=op.name: calibration.observe(name, *args) or 0,
        statistics, tf.int64, stateful=True, name="observe")
    roles.mark(observe, OBSERVE_ROLE)
    with tf.control_dependencies([observe]):
      editor.replace_input(op, kind.data_input, tf.identity(x, name="output"))
  return observe.op
