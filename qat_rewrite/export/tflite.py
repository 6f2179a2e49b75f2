"""Exports a QAT eval graph as a fully integer TFLite model (int8, or uint8 per-tensor).

TF 2.21 still ships the TF1 converter path that turns FakeQuant ranges into integer
arithmetic (`tf.compat.v1.lite.TFLiteConverter` with `inference_type` and
`quantized_input_stats`); this drives it, then checks the result, because a tensor without
a range now silently stays float.
"""

import dataclasses
import os
from typing import Dict, List, Tuple

import tensorflow as tf

from qat_rewrite import files, native_output
from qat_rewrite.export import arguments, converter_compat, frozen, integer_check, large_weights
from qat_rewrite.quant import pool_rounding

_TYPES = {"int8": (tf.int8, -128, 127), "uint8": (tf.uint8, 0, 255)}


@dataclasses.dataclass
class TFLiteExport:
  """What `to_tflite` wrote, and what `agreement.compare_tflite` needs to check it."""
  path: str
  inference_type: str
  input_nodes: List[str]  # the eval graph's input placeholders, in the model's input order
  output_nodes: List[str]  # the eval graph's quantized outputs (FakeQuant ops), in order
  input_ranges: Dict[str, Tuple[float, float]]
  eval_graph_def: tf.compat.v1.GraphDef  # the frozen eval graph, before converter edits
  size_bytes: int


def to_tflite(model, output_path, input_nodes, output_nodes, checkpoint=None, input_ranges=None,
              input_shapes=None, inference_type="int8"):
  """Converts a QAT eval graph to a fully integer TFLite model at `output_path`.

  Args:
    model: the eval graph (a tf.Graph rewritten by `quantize.create_eval_graph`, with
      `checkpoint`), or a frozen eval graph: a tf.compat.v1.GraphDef or a .pb path.
    output_path: the .tflite file to write; written only if everything succeeded.
    input_nodes: names of the input placeholders.
    output_nodes: names of the output ops; an op followed by its FakeQuant (the logits'
      `act_quant`) exports the quantized tensor.
    checkpoint: checkpoint directory or prefix holding the graph's variables.
    input_ranges: {input node: (min, max)}, the float range the integer input covers. Taken
      from a FakeQuant reading the input when there is one; required otherwise.
    input_shapes: {input node: shape}; default: the placeholder's shape with an unknown
      batch dimension set to 1 (the interpreter can resize it; a Squeeze, or a Reshape to a
      shape computed from the batch, is exported as a Reshape to [-1, ...] so that it can).
    inference_type: "int8" (per-channel or per-tensor weights) or "uint8" (per-tensor
      weights only; TFLite has no uint8 per-channel kernels).

  Returns:
    a TFLiteExport. Raises ValueError naming the node, file or argument on bad input, and
    NotFullyIntegerError naming the tensors and ops that would stay float; nothing is written
    in either case.
  """
  if inference_type not in _TYPES:
    raise ValueError("inference_type must be 'int8' or 'uint8', got %r" % (inference_type,))
  output_path = arguments.check_output_path(output_path)
  graph_def, input_nodes, quantized_outputs, ranges = arguments.prepare(
      model, input_nodes, output_nodes, checkpoint, input_ranges)
  per_channel = frozen.per_channel_fake_quants(graph_def)
  if inference_type == "uint8" and per_channel:
    raise ValueError("inference_type='uint8' needs per-tensor weights, but %s is per-channel "
                     "(TFLite has no uint8 per-channel kernels): use 'int8', or rewrite with "
                     "per_channel_weights=False" % per_channel[0])

  converted = _convert(graph_def, input_nodes, quantized_outputs, ranges,
                       arguments.input_shapes(graph_def, input_nodes, input_shapes), inference_type)
  integer_check.check_fully_integer(converted)
  directory, name = os.path.split(output_path)
  files.write_all(directory, {name: converted})
  return TFLiteExport(output_path, inference_type, input_nodes, quantized_outputs, ranges,
                      graph_def, len(converted))


def quantized_input_stats(value_range, inference_type):
  """(mean, std_dev) so that the integer grid of `inference_type` covers `value_range`:
  real = (q - mean) / std_dev, as the converter defines them."""
  low, high = value_range
  _, qmin, qmax = _TYPES[inference_type]
  std = (qmax - qmin) / (high - low)
  return qmin - low * std, std


def _convert(graph_def, input_nodes, output_nodes, ranges, shapes, inference_type):
  pool_rounding.warn_if_not(graph_def, "away_from_zero")
  graph_def = frozen.without_ties_nudges(graph_def, output_nodes)
  if inference_type == "int8":
    graph_def = converter_compat.dense_per_channel_as_conv(graph_def, output_nodes)
  graph_def = large_weights.split_large_weights(graph_def, output_nodes)
  graph_def = converter_compat.batch_free_reshapes(graph_def, output_nodes)
  converter = tf.compat.v1.lite.TFLiteConverter(
      graph_def, None, None, input_arrays_with_shape=[(n, shapes[n]) for n in input_nodes],
      output_arrays=list(output_nodes))
  converter.inference_type = _TYPES[inference_type][0]
  converter.quantized_input_stats = {
      n: quantized_input_stats(ranges[n], inference_type) for n in input_nodes}
  try:
    with native_output.dropping(2, native_output.CONVERTER_CHATTER):
      return converter.convert()
  except Exception as err:  # the converter raises ConverterError and friends
    raise ValueError("the TFLite converter refused the eval graph (outputs %s): %s"
                     % (", ".join(output_nodes), converter_errors(err))) from err


def converter_errors(err):
  """The lines of a converter error that say what failed, without the MLIR dumps around them.

  The converter prints each failing op with its location and often a constant dump of
  megabytes; the cause ("op is neither a custom op nor a flex op", "mismatched quantized axes")
  is the `error:` line, and the op it names is in the `note:`/`loc(` lines.
  """
  lines = [line.strip() for line in str(err).splitlines() if line.strip()]
  causes = [_shorten(line) for line in lines
            if any(key in line for key in ("error:", "note:", "TF Select ops:", "Custom ops:"))]
  return "\n".join(dict.fromkeys(causes)) if causes else _shorten(" ".join(lines))


def _shorten(line, limit=400):
  return line if len(line) <= limit else line[:limit] + " ... (%d characters cut)" % (
      len(line) - limit)
