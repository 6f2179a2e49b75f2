"""Graph edits that let TF 2.21's TFLite converter take what the rewrite produces.

Only rewrites that compute exactly the same numbers belong here.
"""

import numpy as np
import tensorflow as tf

from qat_rewrite.export import frozen
from qat_rewrite.graph.frozen import const_node

PASS_TYPES = ("Identity", "Reshape")


def dense_per_channel_as_conv(graph_def, output_nodes):
  """MatMul with per-channel weights -> the same product as a 1x1 Conv2D.

  The converter turns MatMul into FULLY_CONNECTED by transposing the weights, and refuses to
  transpose per-channel quantized weights ("'tfl.transpose' op has mismatched quantized
  axes"). A 1x1 convolution of the input reshaped to [N, 1, 1, Cin] computes the same sums
  and converts to an int8 CONV_2D with per-channel weights. A BiasAdd that alone reads the
  MatMul moves before the Reshape back to [N, Cout], so the converter fuses it into the
  convolution; that Reshape takes the name of the last op replaced, so its readers are
  unchanged.
  """
  nodes = {n.name: n for n in graph_def.node}
  targets = []
  for node in graph_def.node:
    if node.op != "MatMul" or node.attr["transpose_a"].b or node.attr["transpose_b"].b:
      continue
    fake_quant = producer_through(nodes, node.input[1])
    if fake_quant is not None and fake_quant.op == "FakeQuantWithMinMaxVarsPerChannel":
      targets.append((node, fake_quant))
  if not targets:
    return graph_def
  shapes = _static_shapes(graph_def, [fq.input[0] for _, fq in targets])
  out = tf.compat.v1.GraphDef()
  out.CopyFrom(graph_def)
  by_name = {n.name: n for n in out.node}
  for matmul, fake_quant in targets:
    weight_shape = shapes[fake_quant.input[0]]
    if weight_shape is None or len(weight_shape) != 2 or None in weight_shape:
      continue
    cin, cout = weight_shape
    readers = frozen.consumers(out).get(matmul.name, [])
    bias_add = readers[0] if len(readers) == 1 and readers[0].op == "BiasAdd" else None
    _replace_with_conv(out, by_name[matmul.name], fake_quant, cin, cout, bias_add)
  return tf.compat.v1.graph_util.extract_sub_graph(out, list(output_nodes))


def batch_free_reshapes(graph_def, output_nodes):
  """Reshapes that the converter would fix to a batch of 1 -> Reshape to [-1, static dims].

  The converter is given a batch of 1 and constant-folds every shape it can: a Squeeze of
  non-batch axes (slim's SpatialSqueeze before the logits) becomes a RESHAPE to [1, C], and so
  does a Reshape whose target shape is computed from the input's batch (Keras' Reshape layer,
  `[tf.shape(x)[0], C]`: the head of Keras' MobileNet). The interpreter cannot resize either
  to another batch. When the output's static shape is [None, known dims], a Reshape to
  [-1, those dims] gives the same values (row-major order, one free dimension) at any batch.
  A Reshape of a spatial mean to [N, 1, 1, C] becomes the mean keeping its dimensions instead
  (`_keep_mean_dims`).
  """
  ops = {n.name: n.op for n in graph_def.node}
  candidates = [n for n in graph_def.node
                if (n.op == "Squeeze" and n.attr["squeeze_dims"].list.i)
                or (n.op == "Reshape" and ops.get(frozen.node_name(n.input[1])) != "Const")]
  if not candidates:
    return graph_def
  shapes = _static_shapes(graph_def, [n.name for n in candidates])
  out = tf.compat.v1.GraphDef()
  out.CopyFrom(graph_def)
  by_name = {n.name: n for n in out.node}
  readers = frozen.consumers(out)
  for candidate in candidates:
    shape = shapes[candidate.name]
    if shape is None or not shape or shape[0] is not None or None in shape[1:]:
      continue
    node = by_name[candidate.name]
    if _keep_mean_dims(out, by_name, readers, node, shape):
      continue
    shape_name = node.name + "/batch_free/shape"
    out.node.append(const_node(shape_name, [-1] + shape[1:], "int32"))
    replacement = node_def(node.name, "Reshape", [node.input[0], shape_name], T=node.attr["T"],
                           Tshape=type_attr(tf.int32))
    node.Clear()
    node.CopyFrom(replacement)
  return tf.compat.v1.graph_util.extract_sub_graph(out, list(output_nodes))


def _keep_mean_dims(graph_def, by_name, readers, reshape, shape):
  """A spatial Mean that only `reshape` reads (directly or through its FakeQuant), back to
  [N, 1, 1, C] (Keras' squeeze-excite: GlobalAveragePooling2D, then Reshape) -> the Mean
  keeping its dimensions and the Reshape an Identity: the same values,
  and what the converter made of the pair at a fixed batch (a MEAN that keeps its dimensions,
  dropped over a 1x1 map). With the Reshape to [-1, 1, 1, C] it kept a MEAN to [N, C], which
  the builtin kernels round another way. Returns whether `reshape` was replaced."""
  def sole_reader(node, reader):
    return [r for r in readers.get(node.name, []) if r.op != "Shape"] == [reader]

  reader = reshape
  mean = by_name.get(frozen.node_name(reshape.input[0]))
  if mean is not None and mean.op == "FakeQuantWithMinMaxVars" and sole_reader(mean, reshape):
    reader, mean = mean, by_name.get(frozen.node_name(mean.input[0]))  # the mean's own range
  if (mean is None or mean.op != "Mean" or mean.attr["keep_dims"].b or len(shape) != 4
      or shape[1:3] != [1, 1] or not sole_reader(mean, reader)):
    return False
  axes = frozen.constant_value(graph_def, mean.input[1])
  if axes is None or sorted(int(a) % 4 for a in np.ravel(axes)) != [1, 2]:
    return False
  mean.attr["keep_dims"].b = True
  replacement = node_def(reshape.name, "Identity", [mean.name], T=reshape.attr["T"])
  reshape.Clear()
  reshape.CopyFrom(replacement)
  return True


def producer_through(nodes, tensor, pass_types=PASS_TYPES):
  """The node behind `tensor`, looking through `pass_types` ops (None if absent)."""
  node = nodes.get(frozen.node_name(tensor))
  while node is not None and node.op in pass_types:
    node = nodes.get(frozen.node_name(node.input[0]))
  return node


def _static_shapes(graph_def, tensors):
  with tf.Graph().as_default() as graph:
    tf.import_graph_def(graph_def, name="")
  result = {}
  for name in tensors:
    tensor = graph.get_tensor_by_name(name if ":" in name else name + ":0")
    result[name] = tensor.shape.as_list() if tensor.shape.rank is not None else None
  return result


def _replace_with_conv(graph_def, matmul, fake_quant, cin, cout, bias_add):
  matmul_name = matmul.name
  scope = matmul_name + "/as_conv/"
  dtype = matmul.attr["T"]
  graph_def.node.extend([
      const_node(scope + "input_shape", [-1, 1, 1, cin], "int32"),
      const_node(scope + "weights_shape", [1, 1, cin, cout], "int32"),
      const_node(scope + "output_shape", [-1, cout], "int32"),
      node_def(scope + "input_4d", "Reshape", [matmul.input[0], scope + "input_shape"],
               T=dtype, Tshape=type_attr(tf.int32)),
      node_def(scope + "weights_4d", "Reshape", [fake_quant.input[0], scope + "weights_shape"],
               T=dtype, Tshape=type_attr(tf.int32)),
  ])
  quantized = graph_def.node.add()
  quantized.CopyFrom(fake_quant)
  quantized.name = scope + "weights_quant"
  quantized.input[0] = scope + "weights_4d"
  conv = node_def(scope + "Conv2D", "Conv2D", [scope + "input_4d", quantized.name], T=dtype)
  conv.attr["strides"].list.i.extend([1, 1, 1, 1])
  conv.attr["dilations"].list.i.extend([1, 1, 1, 1])
  conv.attr["padding"].s = b"VALID"
  conv.attr["data_format"].s = b"NHWC"
  graph_def.node.append(conv)
  last = conv
  if bias_add is not None:
    last = graph_def.node.add()
    last.CopyFrom(bias_add)
    last.name = scope + "BiasAdd"
    last.input[0] = conv.name
    matmul.Clear()  # nothing reads it once the BiasAdd is replaced
    matmul.CopyFrom(node_def(matmul_name, "NoOp", []))
  replaced = bias_add if bias_add is not None else matmul
  name = replaced.name
  replaced.Clear()
  replaced.CopyFrom(node_def(name, "Reshape", [last.name, scope + "output_shape"], T=dtype,
                             Tshape=type_attr(tf.int32)))


def type_attr(dtype):
  """An AttrValue holding `dtype`."""
  value = tf.compat.v1.AttrValue()
  value.type = dtype.as_datatype_enum
  return value


def node_def(name, op, inputs, **attrs):
  """A NodeDef with AttrValue `attrs`."""
  node = tf.compat.v1.NodeDef(name=name, op=op, input=inputs)
  for key, value in attrs.items():
    node.attr[key].CopyFrom(value)
  return node
