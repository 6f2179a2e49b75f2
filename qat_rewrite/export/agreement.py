"""Checks that an exported model computes what the QAT eval graph computes.

Both are fed the same input (on the model's input grid: the integer model cannot see
anything finer) and each output is compared in its quantized integer domain: the eval
graph's FakeQuant output x becomes round(x / scale + zero_point) with the exported output's
scale and zero point. Tests, examples and benchmarks all measure agreement with this.
"""

import collections

import numpy as np

from qat_rewrite.export import frozen as export_frozen
from qat_rewrite.export import integer_check
from qat_rewrite.export.onnx import output_producer
from qat_rewrite.graph import frozen
from qat_rewrite.quant import integer_requantize

Agreement = collections.namedtuple("Agreement", "elements equal_share max_lsb")


def compare_integers(reference, scale, zero_point, got):
  """Agreement of integers `got` with float `reference` quantized at (scale, zero_point)."""
  want = np.round(np.asarray(reference, np.float64) / scale + zero_point)
  diff = np.abs(want - np.asarray(got, np.float64))
  return Agreement(int(diff.size), float(np.mean(diff == 0)) if diff.size else 1.0,
                   int(diff.max(initial=0)))


def combine(results):
  """One Agreement over several, weighted by their element counts."""
  results = list(results)
  elements = sum(r.elements for r in results)
  equal = sum(r.equal_share * r.elements for r in results)
  return Agreement(elements, equal / elements if elements else 1.0,
                   max((r.max_lsb for r in results), default=0))


def quantize_input(values, scale, zero_point, dtype):
  """(integers for the exported model, the same values as floats for the eval graph)."""
  info = np.iinfo(dtype)
  ints = np.clip(np.round(np.asarray(values, np.float64) / scale + zero_point), info.min, info.max)
  return ints.astype(dtype), ((ints - zero_point) * scale).astype(np.float32)


def run_tflite(model_path, feeds, delegates=True):
  """({output name: int array}, {output name: (scale, zero point)}, {input: eval-graph feed})
  for the TFLite model at `model_path`, fed the float `feeds` quantized to its input grid."""
  with open(model_path, "rb") as f:
    interp = integer_check.interpreter(f.read(), delegates=delegates)
  inputs = {d["name"]: d for d in interp.get_input_details()}
  for name, value in feeds.items():
    if name not in inputs:
      raise ValueError("the TFLite model has no input %r (it has %s)" % (name, sorted(inputs)))
    interp.resize_tensor_input(inputs[name]["index"], list(np.shape(value)))
  interp.allocate_tensors()
  eval_feeds = {}
  for name, value in feeds.items():
    detail = inputs[name]
    scale, zero_point = detail["quantization"]
    ints, eval_feeds[name] = quantize_input(value, scale, zero_point, detail["dtype"])
    interp.set_tensor(detail["index"], ints)
  interp.invoke()
  outputs, params = {}, {}
  for detail in interp.get_output_details():
    outputs[detail["name"]] = interp.get_tensor(detail["index"])
    params[detail["name"]] = detail["quantization"]
  return outputs, params, eval_feeds


def compare_tflite(export, feeds, delegates=True, reference=None, checkpoint=None):
  """{eval graph output: Agreement} of the TFLite model `export` (a TFLiteExport) with its
  eval graph, fed `feeds` ({input node: float array}).

  `delegates` picks the runtime: XNNPACK (True, TFLite's default) or the builtin kernels.
  `reference` is the eval graph to compare with instead of the exported one: an eval graph
  rewritten with `requantize` set to this runtime ("xnnpack" or "tflite_builtin"), a tf.Graph
  (with `checkpoint`) or a frozen GraphDef. One export serves both runtimes, each compared with
  its own eval graph:

    exported = to_tflite(eval_graph, path, inputs, outputs, checkpoint=ckpt)
    compare_tflite(exported, feeds, delegates=True, reference=xnnpack_graph, checkpoint=ckpt)
    compare_tflite(exported, feeds, delegates=False, reference=builtin_graph, checkpoint=ckpt)

  A reference that emulates the other runtime is compared all the same, with a warning.
  """
  graph_def = export.eval_graph_def
  if reference is not None:
    graph_def = export_frozen.freeze(reference, export.output_nodes, checkpoint)
  integer_requantize.warn_if_not(graph_def, integer_requantize.mode_for_runtime(delegates),
                                 integer_requantize.MODES[integer_requantize.mode_for_runtime(
                                     delegates)].runtime)
  got, params, eval_feeds = run_tflite(export.path, feeds, delegates)
  expected = frozen.run_graph_def(graph_def, eval_feeds, export.output_nodes)
  results = {}
  for index, name in enumerate(export.output_nodes):
    key = name if name in got else list(got)[index]
    scale, zero_point = params[key]
    results[name] = compare_integers(expected[name], scale, zero_point, got[key])
  return results


def format_agreement(result):
  return "%d elements, %.2f%% equal integers, max %d LSB" % (
      result.elements, 100.0 * result.equal_share, result.max_lsb)


def onnx_output_quantization(model_proto, output):
  """(scale, zero point) of the DequantizeLinear producing ONNX output `output`."""
  from onnx import numpy_helper  # pylint: disable=import-outside-toplevel
  initializers = {i.name: numpy_helper.to_array(i) for i in model_proto.graph.initializer}
  constants = {n.output[0]: numpy_helper.to_array(n.attribute[0].t)
               for n in model_proto.graph.node if n.op_type == "Constant"}
  constants.update(initializers)
  node = output_producer(model_proto, output)
  scale = float(constants[node.input[1]])
  zero_point = int(constants[node.input[2]]) if len(node.input) > 2 else 0
  return scale, zero_point


def compare_onnx(export, feeds, optimized=True):
  """{eval graph output: Agreement} of the ONNX model `export` (an ONNXExport) run by ONNX
  Runtime (with its QDQ fusion into integer kernels unless `optimized` is False) with its
  eval graph, both fed `feeds` put on the input quantizer's 8-bit grid."""
  import onnx  # pylint: disable=import-outside-toplevel
  import onnxruntime  # pylint: disable=import-outside-toplevel
  model_proto = onnx.load(export.path)
  options = onnxruntime.SessionOptions()
  if not optimized:
    options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_DISABLE_ALL
  session = onnxruntime.InferenceSession(model_proto.SerializeToString(), options,
                                         providers=["CPUExecutionProvider"])
  eval_feeds = {}
  for name, value in feeds.items():
    low, high = export.input_ranges[name]
    scale = (high - low) / 255.0
    zero_point = np.round(-low / scale)
    eval_feeds[name] = quantize_input(value, scale, zero_point, np.uint8)[1]
  got = session.run([n + ":0" for n in export.output_nodes],
                    {n + ":0": v for n, v in eval_feeds.items()})
  expected = frozen.run_graph_def(export.eval_graph_def, eval_feeds, export.output_nodes)
  results = {}
  for name, values in zip(export.output_nodes, got):
    scale, zero_point = onnx_output_quantization(model_proto, name + ":0")
    ints = np.round(values / scale + zero_point)
    results[name] = compare_integers(expected[name], scale, zero_point, ints)
  return results
