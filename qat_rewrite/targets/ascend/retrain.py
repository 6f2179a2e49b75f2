"""AMCT's retrain rewrite: fold batch norms, then put ULQ on each layer's input and ARQ on its
weights (a layer without weights, AvgPool, gets ULQ only), and build the op that writes the
record file.

Names are deterministic, so the training and the eval graph share variables and a frozen eval
graph can be read back by `deploy`: for layer L, `L/ULQ/input` → ... → `L/ULQ/output` (with the
trainable `L/ULQ/clip_max`, `L/ULQ/clip_min` and the flag `L/ULQ/initialized`), and
`L/ARQ/input` → ... → `L/ARQ/output` (with `L/ARQ/scale_w`).
"""

import os
import time

import tensorflow as tf
from absl import logging

from qat_rewrite import files
from qat_rewrite.graph import editor, roles
from qat_rewrite.graph.view import GraphView
from qat_rewrite.passes.fold_batch_norm import find_batch_norm_folds, unscale_on_weights
from qat_rewrite.passes.rewrite import fold_for_quantization
from qat_rewrite.report import FloatOp, LayerReport
from qat_rewrite.targets.ascend import config as ascend_config
from qat_rewrite.targets.ascend import layers as ascend_layers
from qat_rewrite.targets.ascend import numerics, record

DATA_SCOPE, WEIGHT_SCOPE = "ULQ", "ARQ"
RECORD_SCOPE = "amct_record"
ULQ_ROLE = "amct_ulq"  # the Identity a retrained layer reads its quantized data from


class RetrainOps(list):
  """What create_quant_retrain_model returns: the clip variables, then the record op (last).

  A list, as AMCT's; `report` says what was quantized and what stayed float.
  """
  report = None


def rewrite(graph, config_file, record_file):
  """Rewrites `graph` in place; returns RetrainOps. Refusals leave the graph as it was."""
  with graph.as_default(), graph.name_scope(None):
    started = time.perf_counter()
    batch_num, configs = ascend_config.read_retrain_json(config_file)
    files.check_output_dir(os.path.dirname(os.path.abspath(record_file)))
    layers, float_ops, warnings = _plan(graph, configs, config_file)
    training = any(f.batch_mean is not None
                   for f in find_batch_norm_folds(GraphView(graph), lambda op: True)[0])
    report, folds, excluded, use_resource = fold_for_quantization(graph, training,
                                                                  lambda op: True)
    report.float_ops.extend(float_ops)
    ops, writers = RetrainOps(), []
    for op in layers:
      if op in excluded:
        report.float_ops.append(FloatOp(op.name, op.type, excluded[op]))
        continue
      cfg = configs[op.name]
      clip_vars, record_inputs = _quantize_layer(graph, op, cfg, use_resource)
      ops.extend(clip_vars)
      writers.append(record_inputs)
      weighted = ascend_layers.has_weights(op)
      report.layers.append(LayerReport(
          layer=op.name, kind=ascend_layers.kind(op).name, folded_batch_norm=folds.folded.get(op.name),
          weights_quantized=weighted,
          quantizers=["%s/%s" % (op.name, scope)
                      for scope in ((DATA_SCOPE, WEIGHT_SCOPE) if weighted else (DATA_SCOPE,))],
          notes=[warnings[op.name]] if op.name in warnings else []))
    unscale_on_weights(graph, folds.unscales)
    ops.append(_record_op(graph, writers, record_file))
    ops.report = report
    for warning in warnings.values():
      logging.warning("%s", warning)
    logging.info("%s (%.2f s)", report.summary(), time.perf_counter() - started)
    return ops


def _plan(graph, configs, config_file):
  """The layers to quantize, the float ops with reasons, the warnings; raises on a bad config."""
  if any(roles.of(op) == ULQ_ROLE for op in graph.get_operations()):
    raise ValueError("the graph already holds AMCT retrain quantizers: call "
                     "create_quant_retrain_model once per graph, on the float graph")
  found = ascend_layers.find_layers(graph)
  reasons = {f.op: f.reason for f in found.float_ops}
  names = {op.name for op in graph.get_operations()}
  for name, cfg in configs.items():
    if name not in names:
      raise ValueError("config file %s: layer %r is not in the graph (was the config made for "
                       "another model?)" % (config_file, name))
    if cfg.retrain_enable and name in reasons:
      raise ValueError("config file %s: layer %r cannot be retrained: %s"
                       % (config_file, name, reasons[name]))
  layers, float_ops = [], list(found.float_ops)
  for op in found.layers:
    cfg = configs.get(op.name)
    if cfg is None:
      float_ops.append(FloatOp(op.name, op.type, "not in the config file %s" % config_file))
    elif not cfg.retrain_enable:
      float_ops.append(FloatOp(op.name, op.type, "retrain_enable is false in the config file"))
    else:
      if cfg.weight.channel_wise and not ascend_layers.supports_channel_wise(op):
        raise ValueError("config file %s: layer %r is a %s; channel_wise is allowed only for "
                         "convolutions" % (config_file, op.name, op.type))
      layers.append(op)
  return layers, float_ops, {n: w for n, w in found.warnings.items()
                             if n in {op.name for op in layers}}


def _variable(name, value, dtype, trainable, use_resource):
  collections = [tf.compat.v1.GraphKeys.GLOBAL_VARIABLES]
  if trainable:
    collections.append(tf.compat.v1.GraphKeys.TRAINABLE_VARIABLES)
  return tf.compat.v1.Variable(tf.constant(value, dtype=dtype), trainable=trainable, name=name,
                               use_resource=use_resource, collections=collections)


def _quantize_layer(graph, op, cfg, use_resource):
  """ULQ on the data input, ARQ on the weights (if any); returns (clip variables, record
  inputs)."""
  kind = ascend_layers.kind(op)
  data = cfg.data
  given = data.clip_max is not None
  with graph.name_scope("%s/%s/" % (op.name, DATA_SCOPE)):
    x = tf.identity(op.inputs[kind.data_input], name="input")
    clip_max = _variable("clip_max", data.clip_max if given else 0.0, tf.float32, True,
                         use_resource)
    clip_min = _variable("clip_min", data.clip_min if given and not data.fixed_min else 0.0,
                         tf.float32, not data.fixed_min, use_resource)
    initialized = _variable("initialized", given, tf.bool, False, use_resource)
    clip_min_now, clip_max_now = _initialized_from_data(x, clip_min, clip_max, initialized,
                                                         data.fixed_min)
    y = numerics.ulq(x, clip_min_now, clip_max_now, data.fixed_min)
    editor.replace_input(op, kind.data_input,
                         roles.mark(tf.identity(y, name="output"), ULQ_ROLE))
  scale_w = None
  if kind.weight_input is not None:
    with graph.name_scope("%s/%s/" % (op.name, WEIGHT_SCOPE)):
      w = tf.identity(op.inputs[kind.weight_input], name="input")
      scale_w = numerics.weight_scale(w, ascend_layers.reduce_axes(op, cfg.weight.channel_wise))
      editor.replace_input(op, kind.weight_input,
                           tf.identity(numerics.arq(w, scale_w), name="output"))
  with graph.name_scope("%s/%s/%s/" % (RECORD_SCOPE, op.name, DATA_SCOPE)):
    scale_d, offset_d, _ = numerics.data_scale_offset(clip_min.read_value(),
                                                      clip_max.read_value(), data.fixed_min)
    if scale_w is None:  # no weights: the record's scale_w is ours, see record.py
      scale_w = tf.constant(record.NO_WEIGHTS_SCALE_W, tf.float32, name="scale_w")
    inputs = (op.name, initialized.read_value(), scale_d, offset_d, tf.reshape(scale_w, [-1]))
  return [clip_max] + ([] if data.fixed_min else [clip_min]), inputs


def _initialized_from_data(x, clip_min, clip_max, initialized, fixed_min):
  """The clip bounds to use: the variables, or this batch's range until they are initialized.

  The variables take the batch's range in the backward pass of the first training step (before
  the optimizer updates them), so the forward pass holds no assignment: a frozen eval graph
  stays importable, and the eval graph never changes its variables. The bounds pass through an
  IdentityN whose gradient (`_initialize_clips`, registered once for the process) does it.
  """
  ready = initialized.read_value()
  batch_min = tf.stop_gradient(tf.minimum(tf.reduce_min(x), 0.0))
  batch_max = tf.stop_gradient(tf.reduce_max(x))
  low = tf.where(ready, clip_min.read_value(), batch_min)
  high = tf.where(ready, clip_max.read_value(), batch_max)
  with x.graph.gradient_override_map({"IdentityN": _INITIALIZE_GRADIENT[fixed_min]}):
    return tf.identity_n([low, high], name="initialize_on_backward")


def _initialize_clips(op, d_low, d_high, fixed_min):
  """The gradient of `initialize_on_backward`: first assign its inputs (the bounds in use) to
  the clip variables of its scope and mark them initialized, then pass the gradients on. It
  finds the variables by name, so it holds no graph: tf.custom_gradient would keep every
  rewritten graph alive in TensorFlow's gradient registry."""
  scope = op.name.rpartition("/")[0]
  variables = {v.op.name: v for v in op.graph.get_collection(
      tf.compat.v1.GraphKeys.GLOBAL_VARIABLES)}
  low, high = op.inputs
  assigns = [variables[scope + "/clip_max"].assign(high, name="init_clip_max")]
  if not fixed_min:
    assigns.append(variables[scope + "/clip_min"].assign(low, name="init_clip_min"))
  with tf.control_dependencies(assigns):
    marked = variables[scope + "/initialized"].assign(True, name="mark_initialized")
  with tf.control_dependencies([marked]):
    return tf.identity(d_low), tf.identity(d_high)


_INITIALIZE_GRADIENT = {False: "QatRewriteAscendInitializeClips",
                        True: "QatRewriteAscendInitializeClipMax"}
tf.RegisterGradient(_INITIALIZE_GRADIENT[False])(
    lambda op, d_low, d_high: _initialize_clips(op, d_low, d_high, fixed_min=False))
tf.RegisterGradient(_INITIALIZE_GRADIENT[True])(
    lambda op, d_low, d_high: _initialize_clips(op, d_low, d_high, fixed_min=True))


def _record_op(graph, writers, record_file):
  """An op that writes every layer's scale/offset into `record_file` (atomically) when run."""
  names = [w[0] for w in writers]
  path = os.path.abspath(record_file)

  def write(*values):
    records = {}
    for i, name in enumerate(names):
      ready, scale_d, offset_d, scale_w = values[4 * i:4 * i + 4]
      if not ready:
        raise ValueError("layer %r: its clip range was never set; run a training step or "
                         "restore the retrained checkpoint before writing the record" % name)
      records[name] = record.LayerRecord(float(scale_d), int(offset_d),
                                         tuple(float(s) for s in scale_w), (0,) * len(scale_w))
    record.write(path, records)
    logging.info("AMCT record: wrote %d layers to %s", len(records), path)
    return len(records)

  flat = [t for w in writers for t in w[1:]]
  with graph.name_scope(RECORD_SCOPE + "/"):
    out = tf.compat.v1.py_func(write, flat, tf.int64, stateful=True, name="write_record")
  return out.op
