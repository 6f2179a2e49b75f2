"""Exports a QAT eval graph as an ONNX model with QuantizeLinear/DequantizeLinear pairs.

tf2onnx (1.17.0) converts TF 2.21 GraphDefs and turns each activation FakeQuant into a
QuantizeLinear/DequantizeLinear pair, which ONNX Runtime fuses into integer kernels. tf2onnx
folds the weights' FakeQuants into float constants; `onnx_weights` puts them back as integers
+ DequantizeLinear on the eval graph's grid. The input gets its own pair from `input_ranges`
(or its FakeQuant), so the first layer runs in integers too.

onnx, onnxruntime and tf2onnx are the optional `onnx` extra.
"""

import dataclasses
import importlib
import os
from typing import Dict, List, Tuple

import tensorflow as tf
from absl import logging

from qat_rewrite import files
from qat_rewrite.export import arguments, frozen
from qat_rewrite.quant import integer_requantize, pool_rounding

INSTALL_HINT = "pip install qat_rewrite[onnx]"
# ONNX ops that move values without changing them: an output they make is as quantized as
# their input (tf2onnx transposes NCHW results back to NHWC).
LAYOUT_OPS = ("Identity", "Transpose", "Reshape", "Squeeze", "Unsqueeze", "Flatten")


def _import_tf2onnx():
  try:
    importlib.import_module("onnx")
    tf2onnx = importlib.import_module("tf2onnx")
  except ImportError as err:
    raise ImportError("ONNX export needs onnx and tf2onnx: %s (%s)" % (INSTALL_HINT, err)) from err
  return tf2onnx


@dataclasses.dataclass
class ONNXExport:
  """What `to_onnx` wrote, and what `agreement.compare_onnx` needs to check it."""
  path: str
  input_nodes: List[str]
  output_nodes: List[str]  # eval graph tensors (quantized outputs), also the ONNX output names
  input_ranges: Dict[str, Tuple[float, float]]
  eval_graph_def: tf.compat.v1.GraphDef
  size_bytes: int


def to_onnx(model, output_path, input_nodes, output_nodes, checkpoint=None, input_ranges=None,
            opset=13):
  """Converts a QAT eval graph to ONNX with QuantizeLinear/DequantizeLinear pairs.

  Arguments as `to_tflite` (model, output_path, input_nodes, output_nodes, checkpoint,
  input_ranges); `opset` >= 13 (per-axis QuantizeLinear). ONNX inputs and outputs are named
  `<node>:0`. Returns an ONNXExport; bad input raises ValueError naming it, nothing written.
  """
  tf2onnx = _import_tf2onnx()
  if not isinstance(opset, int) or opset < 13:
    raise ValueError("opset must be an integer >= 13, got %r" % (opset,))
  output_path = arguments.check_output_path(output_path)
  graph_def, input_nodes, quantized_outputs, ranges = arguments.prepare(
      model, input_nodes, output_nodes, checkpoint, input_ranges)
  with_input_quant = _quantize_inputs(frozen.without_ties_nudges(graph_def, quantized_outputs),
                                      ranges)
  try:
    model_proto, _ = tf2onnx.convert.from_graph_def(
        with_input_quant, input_names=[n + ":0" for n in input_nodes],
        output_names=[n + ":0" for n in quantized_outputs], opset=opset)
  except Exception as err:  # tf2onnx raises many types
    raise ValueError("tf2onnx refused the eval graph (outputs %s): %s"
                     % (", ".join(quantized_outputs), err)) from err
  _check_quantized(model_proto, quantized_outputs)
  from qat_rewrite.export import onnx_weights  # pylint: disable=import-outside-toplevel
  left_float = onnx_weights.quantize_weights(model_proto,
                                             onnx_weights.weight_grids(with_input_quant))
  if left_float:
    logging.warning("the weights of ONNX node(s) %s are not on a FakeQuant grid of the eval "
                    "graph and stay float: ONNX Runtime quantizes them with scales of its own",
                    ", ".join(left_float))
  pool_rounding.warn_if_not(graph_def, "to_even")
  integer_requantize.warn_if_not(graph_def, "float", "ONNX Runtime")
  data = model_proto.SerializeToString()
  directory, name = os.path.split(output_path)
  files.write_all(directory, {name: data})
  return ONNXExport(output_path, input_nodes, quantized_outputs, ranges, graph_def, len(data))


def _quantize_inputs(graph_def, ranges):
  """Puts a FakeQuant(min, max) after each input that has none, rerouting its readers."""
  out = tf.compat.v1.GraphDef()
  out.CopyFrom(graph_def)
  readers = frozen.consumers(out)
  for name, (low, high) in ranges.items():
    if frozen.input_fake_quant_range(out, name) is not None:
      continue
    quant = name + "/input_quant"
    for reader in readers.get(name, []):
      for i, inp in enumerate(reader.input):
        if inp in (name, name + ":0"):
          reader.input[i] = quant
    node = out.node.add(name=quant, op="FakeQuantWithMinMaxArgs", input=[name])
    node.attr["min"].f, node.attr["max"].f = low, high
    node.attr["num_bits"].i = 8
    node.attr["narrow_range"].b = False
  return out


def output_producer(model_proto, output):
  """The node whose values ONNX output `output` holds, seen through LAYOUT_OPS (a quantized
  output's DequantizeLinear), or None."""
  producers = {o: n for n in model_proto.graph.node for o in n.output}
  node = producers.get(output)
  while node is not None and node.op_type in LAYOUT_OPS:
    node = producers.get(node.input[0])
  return node


def _check_quantized(model_proto, outputs):
  """Every output must come from a DequantizeLinear: else the model ends in float compute."""
  for name in outputs:
    node = output_producer(model_proto, name + ":0")
    if node is None or node.op_type != "DequantizeLinear":
      raise ValueError("ONNX output %s:0 is not quantized (produced by %s, not a "
                       "DequantizeLinear): name the op its FakeQuant follows"
                       % (name, node.op_type if node is not None else "nothing"))
