"""Builds AMCT's deploy model, `<save_path>_quantized.pb`, and its stock-TensorFlow twin.

Per quantized layer L (batch norm already folded into its weights and bias):

    data ─► L/AscendQuant ─► L ◄─ L/AscendWeightQuant ◄─ L/weight_int8, L/weight_offset
                             └─► L/AscendDequant (◄─ L/deq_scale) ─► bias add ─► ...

AscendQuant (attrs scale = 1/scale_d, offset = offset_d, dst_type, quant_bits) gives
int8 = clip(round(x·scale) + offset); the cube multiplies int8 - offset_d (Ascend's offset_x)
with the int8 weights; AscendDequant multiplies the int32 sums by deq_scale = scale_d·scale_w,
one per output channel, packed in a uint64 (the float32 bits in the low 32 bits). The op
schemas are AMCT's (tf_adapter amct_ops.cc); stock TensorFlow has no kernels for them, so
`fake_quant_model` replaces each by the stock ops that compute the same numbers.

An AvgPool has no weights: AscendQuant ─► AvgPool (of int8 - offset_d) ─► AscendDequant with
deq_scale = scale_d (its record's scale_w is 1.0). AscendDequant's `ksize` is set to the
pool's ksize: we read the schema's pooling-style attrs (ksize, data_format) as the dequant's
way to know the window it follows; AMCT's use of them is not confirmed (convolutions get an
empty ksize). TF's AvgPool averages, so deq_scale carries no 1/window factor.
"""

import dataclasses
from typing import Optional

import numpy as np
import tensorflow as tf

from qat_rewrite.graph.frozen import const_node, session_for_one_run
from qat_rewrite.graph.matcher import find_matches
from qat_rewrite.layers.patterns import compute_layer
from qat_rewrite.targets.ascend import layers as ascend_layers
from qat_rewrite.targets.ascend import numerics
from qat_rewrite.targets.ascend import record as records_module

ASCEND_OPS = ("AscendQuant", "AscendWeightQuant", "AscendDequant", "AscendAntiQuant")
_FLOAT = tf.float32.as_datatype_enum


@dataclasses.dataclass
class LayerSource:
  """Where a quantized layer's float data comes from and which tensor holds its float weights
  (None for a layer without weights)."""
  op: tf.Operation
  data: tf.Tensor
  weight: Optional[tf.Tensor]


def build(graph, sources, records, record_path, outputs):
  """(quantized GraphDef, fake-quant GraphDef, {layer: int8 weights}) for `graph` cut to
  `outputs`; `sources` are the layers to quantize, `records` their scales. Layers without
  weights get no entry in the int8 weights."""
  layer_records = {s.op.name: records_module.layer(records, s.op.name, record_path)
                   for s in sources}
  biases = _biases(graph, sources)
  values = _evaluate(graph, sources, biases)
  graph_def = graph.as_graph_def()
  nodes = {n.name: n for n in graph_def.node}
  weights_int8, reroutes = {}, {}
  for s in sources:
    r = layer_records[s.op.name]
    w_int8 = _quantize_layer(graph_def, nodes, s, r, values.get(s.op.name), record_path)
    if w_int8 is not None:
      weights_int8[s.op.name] = w_int8
    reroutes[s.op.name] = reroutes[s.op.name + ":0"] = s.op.name + "/AscendDequant"
    if s.op.name in biases:
      bias_op, index = biases[s.op.name]
      const = const_node(bias_op.name + "/folded_bias", values["bias:" + s.op.name])
      graph_def.node.append(const)
      nodes[bias_op.name].input[index] = const.name
  dequants = set(reroutes.values())
  for node in graph_def.node:
    if node.name not in dequants:
      node.input[:] = [reroutes.get(inp, inp) for inp in node.input]
  quantized = tf.compat.v1.graph_util.extract_sub_graph(graph_def, outputs)
  return quantized, fake_quant_model(quantized), weights_int8


def _biases(graph, sources):
  """{layer: (bias op, input index of the bias)} for layers followed by a bias add."""
  wanted = {s.op for s in sources}
  found = {}
  for m in find_matches(compute_layer(), graph.get_operations(), "layer"):
    if m.op("layer") in wanted and m.has("bias"):
      bias_op, value = m.op("bias"), m.tensor("bias_value")
      index = next(i for i, t in enumerate(bias_op.inputs) if t is value)
      found[m.op("layer").name] = (bias_op, index)
  return found


def _evaluate(graph, sources, biases):
  fetch = {s.op.name: s.weight for s in sources if s.weight is not None}
  fetch.update({"bias:" + name: op.inputs[i] for name, (op, i) in biases.items()})
  with session_for_one_run(graph) as sess:
    try:
      return sess.run(fetch)
    except tf.errors.OpError as e:
      raise ValueError("cannot compute the weights and biases of the model as constants (is it "
                       "frozen, with every variable converted to a constant?): %s"
                       % e.message.splitlines()[0]) from e


def _quantize_layer(graph_def, nodes, source, rec, weight, record_path):
  """AscendQuant on the data, AscendWeightQuant on the weights (if any), AscendDequant after;
  returns the int8 weights or None."""
  op = source.op
  name = op.name
  kind = ascend_layers.kind(op)
  quant = _node(name + "/AscendQuant", "AscendQuant", [_input_name(source.data)])
  quant.attr["dst_type"].s = b"INT8"
  quant.attr["quant_bits"].i = 8
  quant.attr["scale"].f = float(np.float32(1.0) / np.float32(rec.scale_d))
  quant.attr["offset"].f = float(rec.offset_d)
  nodes[name].input[kind.data_input] = quant.name
  if kind.weight_input is None:
    if tuple(rec.scale_w) != records_module.NO_WEIGHTS_SCALE_W:
      raise ValueError("record file %s, layer %r: a %s has no weights, so scale_w must be [1.0], "
                       "got %s" % (record_path, name, op.type, list(rec.scale_w)))
    w_int8, scale_w, weight_nodes = None, np.asarray(rec.scale_w, np.float32), []
  else:
    w_int8, scale_w, weight_nodes = _quantize_weights(op, rec, weight, record_path)
    nodes[name].input[kind.weight_input] = weight_nodes[-1].name
  deq_values = (np.float32(rec.scale_d) * scale_w).astype(np.float32)
  deq_const = const_node(name + "/deq_scale", pack_deq_scale(deq_values))
  dequant = _node(name + "/AscendDequant", "AscendDequant", [name, deq_const.name])
  dequant.attr["data_format"].s = b"NHWC"
  dequant.attr["ksize"].list.SetInParent()
  if op.type == "AvgPool":  # NHWC, as find_layers requires
    dequant.attr["ksize"].list.i.extend(op.get_attr("ksize"))
  graph_def.node.extend([quant] + weight_nodes + [deq_const, dequant])
  return w_int8


def _quantize_weights(op, rec, weight, record_path):
  """(int8 weights, scale_w, [weight const, offset const, AscendWeightQuant]) of a layer."""
  name = op.name
  channels = ascend_layers.output_channels(op)
  if len(rec.scale_w) not in (1, channels):
    raise ValueError("record file %s, layer %r: %d scale_w values, want 1 or %d (one per output "
                     "channel)" % (record_path, name, len(rec.scale_w), channels))
  if len(rec.scale_w) > 1 and not ascend_layers.supports_channel_wise(op):
    raise ValueError("record file %s, layer %r: per-channel scale_w for a %s; AMCT allows it "
                     "only for convolutions" % (record_path, name, op.type))
  scale_w = np.asarray(rec.scale_w, np.float32)
  broadcast = _channel_shape(op, weight.shape) if len(scale_w) > 1 else [1] * weight.ndim
  w_int8 = numerics.quantize_weights_np(weight, scale_w.reshape(broadcast))
  weight_const = const_node(name + "/weight_int8", w_int8)
  offset_const = const_node(name + "/weight_offset",
                            np.asarray(rec.offset_w, np.int8).reshape(
                                broadcast if len(scale_w) > 1 else [1]))
  weight_quant = _node(name + "/AscendWeightQuant", "AscendWeightQuant",
                       [weight_const.name, offset_const.name])
  return w_int8, scale_w, [weight_const, offset_const, weight_quant]


def _channel_shape(op, shape):
  """The shape that lines scale_w up with the weight tensor's output channels."""
  axes = ascend_layers.reduce_axes(op, True)
  return [1 if i in axes else d for i, d in enumerate(shape)]


def pack_deq_scale(values):
  """AscendDequant's uint64 deq_scale: the float32 bits of scale_d·scale_w in the low 32 bits."""
  return np.asarray(values, np.float32).view(np.uint32).astype(np.uint64)


def unpack_deq_scale(packed):
  return (np.asarray(packed, np.uint64) & np.uint64(0xFFFFFFFF)).astype(np.uint32).view(
      np.float32)


def _input_name(tensor):
  return tensor.op.name if tensor.value_index == 0 else tensor.name


def _node(name, op, inputs, dtype=_FLOAT):
  node = tf.compat.v1.NodeDef(name=name, op=op)
  node.input.extend(inputs)
  node.attr["T"].type = dtype
  return node


# ---- the stock-TensorFlow twin ----

def fake_quant_model(quantized):
  """`quantized` with every Ascend node replaced by stock ops computing the same values.

  AscendQuant → int8 - offset_d (what the cube multiplies) as a float tensor; AscendWeightQuant
  → the int8 weights as floats; AscendDequant → times scale_d·scale_w. So each layer sums the
  same integers as the NPU, and the model runs anywhere TensorFlow runs.
  """
  out = tf.compat.v1.GraphDef()
  out.versions.CopyFrom(quantized.versions)
  out.library.CopyFrom(quantized.library)
  consts = {n.name: n for n in quantized.node if n.op == "Const"}
  for node in quantized.node:
    expand = _EXPANSIONS.get(node.op)
    out.node.extend(expand(node, consts) if expand else [node])
  return out


def _expand_quant(node, consts):
  n = node.name
  offset = np.float32(node.attr["offset"].f)
  return [
      const_node(n + "/scale", np.float32(node.attr["scale"].f)),
      _binary(n + "/scaled", "Mul", node.input[0], n + "/scale"),
      _unary(n + "/round", "Round", n + "/scaled"),
      const_node(n + "/offset", offset),
      _binary(n + "/shifted", "AddV2", n + "/round", n + "/offset"),
      const_node(n + "/qmin", np.float32(numerics.QMIN)),
      const_node(n + "/qmax", np.float32(numerics.QMAX)),
      _node(n + "/int8", "ClipByValue", [n + "/shifted", n + "/qmin", n + "/qmax"]),
      _binary(n, "Sub", n + "/int8", n + "/offset"),
  ]


def _expand_weight_quant(node, consts):
  n = node.name
  return [_cast(n + "/weight", node.input[0]), _cast(n + "/offset", node.input[1]),
          _binary(n, "Sub", n + "/weight", n + "/offset")]


def _expand_dequant(node, consts):
  n = node.name
  packed = tf.make_ndarray(consts[node.input[1]].attr["value"].tensor)
  return [const_node(n + "/scale", unpack_deq_scale(packed)),
          _binary(n, "Mul", node.input[0], n + "/scale")]


def _binary(name, op, a, b):
  return _node(name, op, [a, b])


def _unary(name, op, a):
  return _node(name, op, [a])


def _cast(name, source):
  node = tf.compat.v1.NodeDef(name=name, op="Cast")
  node.input.append(source)
  node.attr["SrcT"].type = tf.int8.as_datatype_enum
  node.attr["DstT"].type = _FLOAT
  node.attr["Truncate"].b = False
  return node


_EXPANSIONS = {"AscendQuant": _expand_quant, "AscendWeightQuant": _expand_weight_quant,
               "AscendDequant": _expand_dequant}


def layer_sources_from_retrained(graph, data_scope, weight_scope):
  """LayerSource of every layer a frozen retrained graph quantizes (its `L/ULQ/input`, and
  `L/ARQ/input` if the layer has weights)."""
  sources = []
  for op in graph.get_operations():
    kind = ascend_layers.kind(op)
    if kind is None:
      continue
    try:
      data_in = graph.get_operation_by_name("%s/%s/input" % (op.name, data_scope))
      weight = None
      if kind.weight_input is not None:
        weight = graph.get_operation_by_name("%s/%s/input" % (op.name, weight_scope)).inputs[0]
    except KeyError:
      continue
    sources.append(LayerSource(op, data_in.inputs[0], weight))
  return sources


def check_no_training_batch_norm(graph, what):
  for op in graph.get_operations():
    if op.type.startswith("FusedBatchNorm") and op.get_attr("is_training"):
      raise ValueError("%s holds batch norm %r in training mode: freeze the eval graph (built "
                       "with is_training=False) instead" % (what, op.name))


