"""Eval graphs that compute as a TFLite runtime does: once every quantizer is in place, each
layer's and two-input add's output quantizer is fed the output integers that runtime computes
(`qat_rewrite.quant.integer_requantize`), for `requantize="xnnpack"|"tflite_builtin"`."""

from qat_rewrite.graph import editor
from qat_rewrite.graph.view import GraphView, context, join
from qat_rewrite.layers import kind_of
from qat_rewrite.layers.catalogue import ADD_TYPES
from qat_rewrite.passes.fold_batch_norm import folded_away_ops
from qat_rewrite.passes.quantizer_grids import input_quantizer, weight_quantizer
from qat_rewrite.quant import integer_requantize, pool_rounding

_CONCAT_TYPES = ("ConcatV2",)


def emulate(graph, layers, mode, in_scope):
  """`layers`: (layer op, its LayerReport) pairs; a layer the emulation does not cover says why
  in its report's notes. Then the adds in scope."""
  dead = folded_away_ops(GraphView(graph))
  for layer, report in layers:
    _emulate_requantization(layer, mode, report, dead)
  _emulate_adds(graph, mode, in_scope, dead)


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
    readers = [r for r in tensor.consumers() if r not in dead]
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
        and any(p.startswith("bias_quant") for p in others[0].op.name.split("/"))):
      bias = others[0]
    elif reader.type in ("Relu", "Relu6") and activation is None:
      activation = reader.type
    elif reader.type != "Identity":  # TFLite drops an Identity
      return "its output reaches its quantizer through %s (%s)" % (reader.name, reader.type)
    tensor = reader.outputs[0]


def _emulate_adds(graph, mode, in_scope, dead):
  """The residual and other two-input adds whose inputs and output are on 8-bit FakeQuant grids
  compute the runtime's integer ADD; returns how many."""
  count = 0
  for op in list(graph.get_operations()):
    if (op.type not in ADD_TYPES or op in dead or not in_scope(op)
        or len(op.inputs) != 2 or pool_rounding.is_ties_nudge(op.name)
        or integer_requantize.is_emulation(op.name)):
      continue
    quantizers = [input_quantizer(t) for t in op.inputs]
    if any(q is None or delay is not None or q.get_attr("num_bits") != 8
           for q, delay in quantizers):
      continue
    chain = _to_output_quantizer(op.outputs[0], dead, with_bias=False)
    if isinstance(chain, str) or chain[3].get_attr("num_bits") != 8:
      continue
    _, activation, output, out_q, (reader, index) = chain
    with graph.as_default(), graph.name_scope(editor.unique_scope(graph, join(op.name,
                                                                               "requantize"))):
      emulated = integer_requantize.emulate_add(op, quantizers[0][0], quantizers[1][0],
                                                activation, output, out_q,
                                                mode)
    if emulated is not None:
      editor.replace_input(reader, index, emulated)
      count += 1
  return count
