"""Splits a convolution whose quantized weights are too large for the TFLite converter.

The converter turns the FakeQuant of a constant weight into int8 constants by evaluating it with
TF's MLIR constant folder, which skips any op whose operands hold more than 2**30 bits (128 MiB;
`kOperandsSizeThreshold` in tensorflow/compiler/mlir/tensorflow/transforms/constant_fold.cc; the
result's size does not matter). Measured on TF 2.21 with a 1x1 conv of 8000 input channels:

- FakeQuantWithMinMaxVarsPerChannel of N weights, C channels: folds while N + 2C <= 2**25
  floats (4193 channels convert, 4194 do not, though the weight alone is under). Over it the op
  stays and the converter refuses it ("neither a custom op nor a flex op"). slim's vgg_16 fc6
  weight (7x7x512x4096) is 3.1 times over.
- FakeQuantWithMinMaxVars (per-tensor) over N + 2 > 2**25 is not folded either, but converted:
  the converter quantizes the float weights itself, and near-ties may round the other way
  (8000x4195: 116 of the 33.6M weights one step off the FakeQuant grid).

Both are split here. A 1x1 Conv2D from `converter_compat.dense_per_channel_as_conv` is handled
too; run this after it.
"""

import collections

import numpy as np
import tensorflow as tf

from qat_rewrite.export import frozen
from qat_rewrite.export.converter_compat import (PASS_TYPES, node_def, producer_through,
                                                type_attr)
from qat_rewrite.graph.frozen import const_node

OPERAND_LIMIT_BITS = 1 << 30
_FLOAT_BITS = 32
_WEIGHT_QUANT_TYPES = ("FakeQuantWithMinMaxVarsPerChannel", "FakeQuantWithMinMaxVars")
_ELEMENTWISE_TYPES = ("Identity", "Relu", "Relu6")
_PER_TENSOR_TYPES = ("FakeQuantWithMinMaxVars", "FakeQuantWithMinMaxArgs")


def split_large_weights(graph_def, output_nodes, limit_bits=OPERAND_LIMIT_BITS):
  """Each Conv2D whose weight FakeQuant reads more than `limit_bits` -> the same layer
  computed as several convolutions over slices of the output channels, concatenated.

  Every output channel depends only on its own weights, range, bias and activation, so the
  slices compute exactly the same numbers, and each slice's FakeQuant is small enough to be
  folded into the integers and scales of the FakeQuant grid. The bias and the channel-wise ops
  up to the layer's activation FakeQuant (BiasAdd, Relu, Relu6, Identity, a Reshape keeping the
  channel axis) move into the slices, so each slice still converts to one fused CONV_2D; the
  FakeQuant then reads the CONCATENATION (which takes its range) and is unchanged. A layer
  whose output reaches no such FakeQuant, or whose weight or range is not constant, is left
  as it is. Returns `graph_def` itself when nothing is too large.
  """
  nodes = {n.name: n for n in graph_def.node}
  plans = []
  for node in graph_def.node:
    if node.op == "Conv2D":
      plan = _plan(graph_def, nodes, node, limit_bits)
      if plan is not None:
        plans.append(plan)
  if not plans:
    return graph_def
  out = tf.compat.v1.GraphDef()
  out.CopyFrom(graph_def)
  by_name = {n.name: n for n in out.node}
  for plan in plans:
    _split(out, by_name, graph_def, nodes, plan, limit_bits)
  return tf.compat.v1.graph_util.extract_sub_graph(out, list(output_nodes))


# One convolution to split: its weight's FakeQuant, constant and range, and the ops after it.
_Plan = collections.namedtuple("_Plan", "conv fake_quant weight_const low high chain")


def _plan(graph_def, nodes, conv, limit_bits):
  if conv.attr["data_format"].s not in (b"", b"NHWC"):
    return None
  fake_quant = producer_through(nodes, conv.input[1])
  if fake_quant is None or fake_quant.op not in _WEIGHT_QUANT_TYPES:
    return None
  weight_const = producer_through(nodes, fake_quant.input[0])
  if (weight_const is None or weight_const.op != "Const"
      or weight_const.attr["dtype"].type != tf.float32.as_datatype_enum):
    return None
  elements = int(np.prod(_const_shape(weight_const)))
  if 3 * _FLOAT_BITS * elements <= limit_bits:  # small even with a min and max per element
    return None
  low, high = (frozen.constant_value(graph_def, fake_quant.input[i]) for i in (1, 2))
  if low is None or high is None or _FLOAT_BITS * (elements + low.size + high.size) <= limit_bits:
    return None
  shapes = [_shape_through(graph_def, nodes, t) for t in (fake_quant.input[0], conv.input[1])]
  if None in shapes or shapes[0][-1] != shapes[1][-1] or low.size not in (1, shapes[1][-1]):
    return None
  chain = _channelwise_chain(graph_def, conv, shapes[1][-1])
  return None if chain is None else _Plan(conv, fake_quant, weight_const, low, high, chain)


def _const_shape(node):
  return [d.size for d in node.attr["value"].tensor.tensor_shape.dim]


def _channelwise_chain(graph_def, conv, channels):
  """The ops after `conv` that act on each output channel alone, up to (not including) the
  per-tensor FakeQuant that quantizes the layer's output; None if there is no such FakeQuant
  or an op on the way is read elsewhere or mixes channels."""
  readers = frozen.consumers(graph_def)
  chain, current = [], conv
  while True:
    after = readers.get(current.name, [])
    if len(after) != 1 or after[0].input[0] not in (current.name, current.name + ":0"):
      return None
    if after[0].op in _PER_TENSOR_TYPES:
      return chain
    if not _keeps_channels(graph_def, after[0], channels):
      return None
    current = after[0]
    chain.append(current)


def _keeps_channels(graph_def, node, channels):
  if node.op in _ELEMENTWISE_TYPES:
    return True
  if node.op == "BiasAdd":
    return node.attr["data_format"].s in (b"", b"NHWC")
  if node.op == "Reshape":
    shape = frozen.constant_value(graph_def, node.input[1])
    return shape is not None and shape.ndim == 1 and shape[-1] == channels
  return False


def _split(out, by_name, graph_def, nodes, plan, limit_bits):
  weights = _weights(graph_def, nodes, plan)
  channels = weights.shape[-1]
  # the floats a slice's FakeQuant reads: per channel its weights (and a min and max if
  # per-channel), plus one min and max if per-tensor
  per_channel_range = plan.fake_quant.op == "FakeQuantWithMinMaxVarsPerChannel"
  per_channel = weights.size // channels + (2 if per_channel_range else 0)
  width = (limit_bits // _FLOAT_BITS - (0 if per_channel_range else 2)) // per_channel
  parts = -(-channels // width)
  ends = []
  for index, part in enumerate(np.array_split(np.arange(channels), parts)):
    scope = _unique(by_name, "%s/split_%d" % (plan.conv.name, index)) + "/"
    new_nodes, end = _part(graph_def, plan, weights, part[0], part[-1] + 1, scope)
    out.node.extend(new_nodes)
    by_name.update((n.name, n) for n in new_nodes)
    ends.append(end)
  last = plan.chain[-1] if plan.chain else plan.conv
  reshapes = [n for n in plan.chain if n.op == "Reshape"]
  rank = frozen.constant_value(graph_def, reshapes[-1].input[1]).size if reshapes else 4
  axis = _unique(by_name, last.name + "_split_axis")
  out.node.append(const_node(axis, rank - 1, "int32"))
  concat = by_name[last.name]
  concat.Clear()
  concat.CopyFrom(node_def(last.name, "ConcatV2", ends + [axis], N=_int(len(ends)),
                           T=last.attr["T"], Tidx=type_attr(tf.int32)))


def _weights(graph_def, nodes, plan):
  """The weight in the convolution's filter shape. Reshapes on its way that keep the channels
  last (the rewrite's per_channel_reshape and _restore) only regroup the other dimensions, so
  each channel's values and range stay the same."""
  value = tf.make_ndarray(plan.weight_const.attr["value"].tensor)
  return value.reshape(_shape_through(graph_def, nodes, plan.conv.input[1]))


def _shape_through(graph_def, nodes, tensor):
  """The static shape of `tensor` if Identity, Reshape and FakeQuant ops make it from a
  constant, else None."""
  node = nodes.get(frozen.node_name(tensor))
  if node is None or node.op == "Const":
    return None if node is None else _const_shape(node)
  if node.op not in PASS_TYPES + _WEIGHT_QUANT_TYPES:
    return None
  source = _shape_through(graph_def, nodes, node.input[0])
  if source is None or node.op != "Reshape":
    return source
  shape = frozen.constant_value(graph_def, node.input[1])
  if shape is None:
    return None
  shape = [int(d) for d in shape]
  if -1 in shape:
    shape[shape.index(-1)] = int(np.prod(source)) // -int(np.prod(shape))
  return shape


def _part(graph_def, plan, weights, start, stop, scope):
  """The nodes computing output channels [start, stop) of the layer, and the last one's name."""
  fake_quant = _copy(plan.fake_quant, scope + "weights_quant")
  fake_quant.input[:] = [scope + "weights", scope + "min", scope + "max"]
  new_nodes = [
      const_node(scope + "weights", np.ascontiguousarray(weights[..., start:stop])),
      const_node(scope + "min", _channels(plan.low, start, stop)),
      const_node(scope + "max", _channels(plan.high, start, stop)),
      fake_quant,
  ]
  conv = _copy(plan.conv, scope + "Conv2D")
  conv.input[1] = fake_quant.name
  new_nodes.append(conv)
  previous = conv.name
  for index, node in enumerate(plan.chain):
    step = _copy(node, "%s%s_%d" % (scope, node.op, index))
    step.input[0] = previous
    new_nodes.extend(_sliced_operand(graph_def, node, step, start, stop))
    new_nodes.append(step)
    previous = step.name
  return new_nodes, previous


def _channels(value, start, stop):
  """A per-channel range's slice; a per-tensor range whole."""
  return value if value.ndim == 0 else value[start:stop]


def _sliced_operand(graph_def, node, step, start, stop):
  """The channel slice of a BiasAdd's bias (a Slice: the rewrite computes it from the ranges),
  or a Reshape's target shape with the slice's width; other steps have no second operand."""
  if node.op == "BiasAdd":
    begin, size = step.name + "/begin", step.name + "/size"
    step.input[1] = step.name + "/bias"
    return [const_node(begin, [start], "int32"), const_node(size, [stop - start], "int32"),
            node_def(step.input[1], "Slice", [node.input[1], begin, size], T=node.attr["T"],
                     Index=type_attr(tf.int32))]
  if node.op == "Reshape":
    shape = frozen.constant_value(graph_def, node.input[1]).copy()
    shape[-1] = stop - start
    step.input[1] = step.name + "/shape"
    return [const_node(step.input[1], shape)]
  return []


def _unique(by_name, base):
  name, index = base, 0
  while name in by_name or any(n.startswith(name + "/") for n in by_name):
    index += 1
    name = "%s_%d" % (base, index)
  return name


def _copy(node, name):
  copy = tf.compat.v1.NodeDef()
  copy.CopyFrom(node)
  copy.name = name
  if "_output_shapes" in copy.attr:  # the whole layer's: wrong for a slice
    del copy.attr["_output_shapes"]
  return copy


def _int(value):
  attr = tf.compat.v1.AttrValue()
  attr.i = value
  return attr
