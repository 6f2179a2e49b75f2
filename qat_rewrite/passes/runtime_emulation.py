"""Eval graphs that compute as a TFLite runtime does: once every quantizer is in place, the
output quantizer of each layer, add, multiply, spatial mean and ReLU is fed the output
integers that runtime computes (`qat_rewrite.quant.integer_requantize`, `integer_elementwise`),
for `requantize="xnnpack"|"tflite_builtin"`."""

import numpy as np
import tensorflow as tf

from qat_rewrite.graph import editor, roles
from qat_rewrite.graph.view import (SHAPE_TYPES, GraphView, constant_value, context,
                                    folded_constant, join)
from qat_rewrite.layers import kind_of
from qat_rewrite.layers.catalogue import ADD_TYPES
from qat_rewrite.passes.fold_batch_norm import folded_away_ops
from qat_rewrite.passes.quantizer_grids import input_quantizer, weight_quantizer
from qat_rewrite.quant import integer_elementwise, integer_requantize, pool_rounding

_CONCAT_TYPES = ("ConcatV2",)
_ELEMENTWISE_TYPES = ADD_TYPES + ("Mul", "Sub", "RealDiv", "Mean", "Relu", "Relu6")
# Ops between an op and its output quantizer that leave the integers as they are (TFLite drops an
# Identity and reshapes without requantizing).
_VALUE_PRESERVING_TYPES = ("Identity", "Reshape", "Squeeze", "ExpandDims")
# Emulated only as a quantized tensor by a constant: (x - c), x / c (Keras' Normalization).
_BY_CONSTANT_TYPES = ("Sub", "RealDiv")
# TFLite's LOGISTIC writes 8 bits on a fixed grid: 1/256, zero point -128.
_SIGMOID_SCALE = 1.0 / 256.0


def emulate(graph, layers, mode, in_scope):
  """`layers`: (layer op, its LayerReport) pairs; a layer the emulation does not cover says why
  in its report's notes. Then the adds, multiplies and means in scope."""
  dead = folded_away_ops(GraphView(graph))
  ops = graph.get_operations()
  for op in ops:
    if op not in dead and in_scope(op) and _passed_on(op) is not None:
      _skip_output_quantizer(op, dead, mode)
  for layer, report in layers:
    _emulate_requantization(layer, mode, report, dead)
  _emulate_elementwise(graph, ops, mode, in_scope, dead)


def _emulate_requantization(layer, mode, report, dead):
  """Feeds the output quantizer of `layer` its output as the runtime `mode` computes it in
  integers (see qat_rewrite.quant.integer_requantize); a layer whose chain the emulation does
  not cover keeps its float output and says why in `report.notes`. `dead`: folded-away ops."""
  why = _requantization_chain(layer, dead)
  if isinstance(why, str):
    report.notes.append("output requantized in float32, not as %s: %s"
                        % (integer_requantize.MODES[mode].runtime, why))
    return
  in_q, w_q, bias, activation, output, out_q, (reader, index) = why
  kind = kind_of(layer)
  graph = layer.graph
  with graph.as_default(), graph.name_scope(editor.unique_scope(graph, join(context(layer),
                                                                             "requantize"))):
    emulated = integer_requantize.emulate_layer(layer, layer.inputs[kind.weight_input], in_q, w_q,
                                                bias, activation, output, out_q, mode)
  editor.replace_input(reader, index, emulated)


def _requantization_chain(layer, dead):
  """(input quantizer, weight quantizer, bias or None, "Relu"/"Relu6"/None, the tensor the
  output quantizer reads, the output quantizer) of `layer`, or why the emulation skips it: it
  covers layer -> [quantized bias] -> [ReLU/ReLU6] -> FakeQuant, 8 bits, without quant_delay."""
  if layer.type not in integer_requantize.LAYER_TYPES:
    return "%s is not emulated" % layer.type
  if layer.type == "MatMul" and (layer.get_attr("transpose_a") or layer.get_attr("transpose_b")):
    return "a transposed MatMul is not emulated"
  kind = kind_of(layer)
  in_q, in_delay = input_quantizer(layer.inputs[kind.data_input])
  w_q, w_delay = weight_quantizer(layer.inputs[kind.weight_input])
  if in_q is None or w_q is None:
    return "its input or weights are not on a FakeQuant grid"
  if in_delay is not None or w_delay is not None:
    return "quant_delay switches its quantizers"
  chain = _to_output_quantizer(layer.outputs[0], dead, with_bias=True)
  if isinstance(chain, str):
    return chain
  bias, activation, output, out_q, target = chain
  if any(q.get_attr("num_bits") != 8 for q in (in_q, w_q, out_q)):
    return "not 8 bits"
  return in_q, w_q, bias, activation, output, out_q, target


def _to_output_quantizer(tensor, dead, with_bias):
  """(bias or None, "Relu"/"Relu6"/None, the tensor that reaches the quantizer, the per-tensor
  FakeQuant, (op, input index) where that tensor enters it or its concat) on the way
  tensor -> [quantized bias] -> [ReLU/ReLU6] -> [concats] -> FakeQuant (Identity ops
  anywhere), or why not."""
  bias, activation = None, None
  while True:
    readers = [r for r in tensor.consumers() if r not in dead and r.type not in SHAPE_TYPES]
    if len(readers) != 1:
      return "%s has %d readers" % (tensor.op.name, len(readers))
    reader = readers[0]
    if reader.type == "FakeQuantWithMinMaxVars":
      return bias, activation, tensor, reader, (reader, 0)
    if reader.type in _CONCAT_TYPES:
      # A branch TFLite requantizes straight onto its concat's grid (no range of its own),
      # the outer concat's when only a concat reads this one.
      after = [r for r in reader.outputs[0].consumers() if r not in dead]
      while len(after) == 1 and after[0].type in _CONCAT_TYPES:
        after = [r for r in after[0].outputs[0].consumers() if r not in dead]
      if len(after) == 1 and after[0].type == "FakeQuantWithMinMaxVars":
        index = next(i for i, t in enumerate(reader.inputs) if t is tensor)
        return bias, activation, tensor, after[0], (reader, index)
    others = [t for t in reader.inputs if t is not tensor]
    if (with_bias and reader.type in ADD_TYPES + ("BiasAdd",) and bias is None
        and activation is None and len(others) == 1
        and roles.of(others[0].op) == "bias_quant"):
      bias = others[0]
    elif reader.type in ("Relu", "Relu6") and activation is None:
      activation = reader.type
    elif reader.type not in _VALUE_PRESERVING_TYPES:
      return "its output reaches its quantizer through %s (%s)" % (reader.name, reader.type)
    tensor = reader.outputs[0]


def _emulate_elementwise(graph, ops, mode, in_scope, dead):
  """The adds, multiplies, means and ReLUs among `ops` (the graph's ops before any emulation)
  whose inputs are on 8-bit FakeQuant grids or constants and whose output reaches an 8-bit
  FakeQuant compute the runtime's integer ADD, MUL, MEAN or RELU; returns how many."""
  count = 0
  for op in ops:
    if (op.type not in _ELEMENTWISE_TYPES or op in dead or not in_scope(op)
        or pool_rounding.is_ties_nudge(op) or _passed_on(op) is not None):
      continue
    operands = _operands(op)
    if operands is None:
      continue
    chain = _to_output_quantizer(op.outputs[0], dead, with_bias=False)
    if isinstance(chain, str) or chain[3].get_attr("num_bits") != 8:
      continue
    _, activation, output, out_q, (reader, index) = chain
    with graph.as_default(), graph.name_scope(editor.unique_scope(graph, join(op.name,
                                                                               "requantize"))):
      if op.type in ("Relu", "Relu6"):
        emulated = integer_elementwise.emulate_relu(op, operands[0], output, out_q, mode)
      elif op.type == "Mean":
        # A mean reshaped to 4-D is converted to a mean that keeps its dimensions.
        keep_dims = op.get_attr("keep_dims") or output.shape.rank == 4
        emulated = integer_elementwise.emulate_mean(op, operands[0], keep_dims, activation,
                                                    output, out_q, mode)
      else:
        kind, values = _binary_operation(op)
        values = [_runtime_sigmoid(v) if isinstance(v, tf.Tensor) and v.op.type == "Sigmoid"
                  else v for v in values]
        scales = [integer_requantize.converter_scale(q) if isinstance(q, tf.Operation)
                  else tf.constant(q, tf.float64) for q in operands]
        emulated = integer_elementwise.emulate_binary(kind, values, scales, activation, output,
                                                      out_q, mode)
    editor.replace_input(reader, index, emulated)
    count += 1
  return count


def _passed_on(op):
  """The input that `op` passes on unchanged, or None: a product with a constant 1 (Keras'
  swish computes beta·x), a sum with a constant 0, a mean over a 1x1 map that keeps its
  dimensions or is reshaped back to 4-D (one that drops them the converter keeps: a MEAN that
  requantizes)."""
  if op.type == "Mean":
    shape = op.inputs[0].shape
    if not (shape.rank == 4 and shape[1] == 1 and shape[2] == 1):
      return None
    readers = [r for r in op.outputs[0].consumers() if r.type not in SHAPE_TYPES]
    reshaped = (len(readers) == 1 and readers[0].type in _VALUE_PRESERVING_TYPES
                and readers[0].outputs[0].shape.rank == 4)
    return op.inputs[0] if op.get_attr("keep_dims") or reshaped else None
  if op.type not in ADD_TYPES + ("Mul",) or len(op.inputs) != 2:
    return None
  neutral = 1.0 if op.type == "Mul" else 0.0
  for i, tensor in enumerate(op.inputs):
    value = constant_value(tensor)
    if value is not None and np.size(value) == 1 and float(np.ravel(value)[0]) == neutral:
      return op.inputs[1 - i]
  return None


def _skip_output_quantizer(op, dead, mode):
  """An op that passes its input on unchanged is dropped by the converter, together with the
  quantization of its output: the next op reads the input's integers. So the readers of the
  FakeQuant that reads `op` read the input's values instead (through an emulation op, which
  exports bypass and `input_quantizer` sees through)."""
  chain = _to_output_quantizer(op.outputs[0], dead, with_bias=False)
  if (isinstance(chain, str) or chain[1] is not None or chain[4][0] is not chain[3]
      or _quantized_grid(_passed_on(op)) is None):
    return  # an activation or a concat between them, or a float input
  graph, quantized = op.graph, chain[3].outputs[0]
  inputs = [(c, i) for c in quantized.consumers() for i, t in enumerate(c.inputs)
            if t is quantized]
  with graph.as_default(), graph.name_scope(editor.unique_scope(graph, join(op.name,
                                                                             "requantize"))):
    values = tf.reshape(_passed_on(op), tf.shape(quantized))
    skipped = integer_requantize.joined(quantized, values, mode)
  for consumer, i in inputs:
    editor.replace_input(consumer, i, skipped)


def _operands(op):
  """The grids of `op`'s inputs, each its 8-bit FakeQuant or a scale (a float: a constant's, or
  the fixed grid of a sigmoid of a quantized tensor), or None if the emulation does not cover
  `op`: a two-input add or multiply with at least one quantized input, a subtraction or
  division of a quantized tensor by a constant, a mean over axes 1 and 2 of a quantized 4-D
  tensor of static shape, or a ReLU of a quantized tensor."""
  if op.type in ("Relu", "Relu6"):
    grid = _quantized_grid(op.inputs[0])
    return None if grid is None else [grid]
  if op.type == "Mean":
    shape = op.inputs[0].shape
    axes = constant_value(op.inputs[1])
    if (shape.rank != 4 or not shape[1:].is_fully_defined() or axes is None
        or sorted(int(a) % 4 for a in np.ravel(axes)) != [1, 2]):
      return None
    grid = _quantized_grid(op.inputs[0])
    return None if grid is None else [grid]
  if len(op.inputs) != 2:
    return None
  if op.type in _BY_CONSTANT_TYPES:
    grid, (_, constant) = _quantized_grid(op.inputs[0]), _binary_operation(op)[1]
    scale = None if constant is None else integer_elementwise.constant_scale(constant)
    return None if grid is None or scale is None else [grid, scale]
  grids = [_quantized_grid(t) for t in op.inputs]
  if all(g is None for g in grids):
    return None
  for i, tensor in enumerate(op.inputs):
    if grids[i] is None and tensor.op.type == "Sigmoid":
      grids[i] = _SIGMOID_SCALE if _quantized_grid(tensor.op.inputs[0]) else None
    elif grids[i] is None:
      value = constant_value(tensor) if tensor.op.type == "Const" else None
      grids[i] = None if value is None else integer_elementwise.constant_scale(value)
  return None if any(g is None for g in grids) else grids


def _binary_operation(op):
  """(the runtime's operation: "Add", "Sub" or "Mul", its two operands) for the binary `op`.
  The converter turns a division by a constant into a MUL by its reciprocal (float32)."""
  if op.type == "RealDiv":
    divisor = folded_constant(op.inputs[1])
    reciprocal = None if divisor is None else np.float32(1.0) / divisor.astype(np.float32)
    return "Mul", [op.inputs[0], reciprocal]
  if op.type == "Sub":
    return "Sub", [op.inputs[0], folded_constant(op.inputs[1])]
  return ("Mul" if op.type == "Mul" else "Add"), list(op.inputs)


def _runtime_sigmoid(sigmoid):
  """The sigmoid of a quantized tensor as LOGISTIC's table computes it (see
  integer_elementwise.sigmoid_of_integers)."""
  x = sigmoid.op.inputs[0]
  return integer_elementwise.sigmoid_of_integers(
      x, integer_requantize.converter_scale(_quantized_grid(x)))


def _quantized_grid(tensor):
  """The 8-bit FakeQuant (without quant_delay) whose grid `tensor` is on, or None."""
  quantizer, delay = input_quantizer(tensor)
  if quantizer is None or delay is not None or quantizer.get_attr("num_bits") != 8:
    return None
  return quantizer
