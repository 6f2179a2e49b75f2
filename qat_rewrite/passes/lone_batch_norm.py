"""Gives a batch norm that follows no weight layer a unit depthwise layer to fold into.

ResNet v2's pre-activation batch norms (BN → ReLU → conv) and a final post-norm follow an add,
not a layer, so nothing folds them and nothing quantizes what they compute; TFLite then runs
them as float MUL/ADD. A 1x1 depthwise convolution with unit weights in front of such a batch
norm computes the same values, and the ordinary fold turns the pair into one layer: weights
γ/σ (quantized per channel like any depthwise weight), bias β − μ·γ/σ (on the input × weight
grid), ReLU fused. TFLite runs it as one int8 DEPTHWISE_CONV_2D, as its own converter would run
the batch norm as a per-channel multiply-add. Training folds it like any layer, so the
quantizers learn on batch statistics and the eval graph restores them.
"""

import tensorflow as tf

from qat_rewrite.graph import editor
from qat_rewrite.graph.view import CONTROL_FLOW_TYPES, GraphView, context
from qat_rewrite.layers.patterns import FUSED_BATCH_NORM_TYPES


def lone_batch_norms(graph, in_scope, folds):
  """Fused NHWC batch norms on a 4-D input with static channels that fold into no layer
  (`folds`: those that do), that something reads and that no training-flag conditional
  selects."""
  view = GraphView(graph)
  behind_conditionals = view.behind_control_flow()
  folding = {op for f in folds for op in f.bn_ops}
  found = []
  for op in view.ops:
    if (op.type not in FUSED_BATCH_NORM_TYPES or op in folding or not in_scope(op)
        or view.is_dangling(op) or op in behind_conditionals):
      continue
    x = op.inputs[0]
    if (op.get_attr("data_format").decode() == "NHWC" and x.shape.rank == 4
        and x.shape[-1] is not None and x.op.type not in CONTROL_FLOW_TYPES):
      found.append(op)
  return found


def add_unit_layers(graph, batch_norms):
  """Puts `<bn scope>/depthwise`, a 1x1 depthwise conv with unit weights, before each batch
  norm of `batch_norms`; returns their names."""
  names = []
  with graph.as_default():
    for bn in batch_norms:
      x = bn.inputs[0]
      with graph.name_scope(context(bn) + "/" if context(bn) else None):
        ones = tf.ones([1, 1, int(x.shape[-1]), 1], x.dtype, name="unit_weights")
        unit = tf.nn.depthwise_conv2d(x, ones, [1, 1, 1, 1], "VALID", name="depthwise")
      editor.replace_input(bn, 0, unit)
      names.append(unit.op.name)
  return names
