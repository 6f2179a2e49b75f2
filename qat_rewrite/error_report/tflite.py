"""The report of an integer TFLite model: each of its tensors against the float graph's.

The interpreter keeps every intermediate tensor (`experimental_preserve_all_tensors`, no
delegate, one example at a time since converted models fix the batch at 1). Each quantized tensor
is dequantized with its scale and zero point (per channel along its quantized dimension) and
compared with the float graph's tensor of the same name. The converter names a tensor after the
ops fused into it, ';'-separated ("model/Relu;model/conv1/add_fold;model/conv1/Conv2D;..."): the
first of those names that is a float tensor of the reference with a matching shape is its twin;
weights may be stored transposed (OHWI for HWIO, [out, in] for [in, out]). A tensor with no twin
is listed with its note, never dropped. Integer tensors without a scale (shapes, indices) are not
quantized values and are left out.
"""

import collections
import contextlib
import io
import math
import warnings

import numpy as np
import tensorflow as tf

from qat_rewrite.error_report.quantizers import float_reference, tensor_name_feeds
from qat_rewrite.error_report.rows import Row, sqnr_db, value_range


def tflite_report(model, float_graph_def, feeds):
  """Per-tensor rows of the TFLite `model` (bytes or a path) on one batch.

  float_graph_def: the frozen float graph the model was converted from, or the frozen eval graph
  it was exported from (its quantizers are bypassed, see `float_reference`). feeds: {input name
  (the model's input, a node of the graph): float array}; the model gets them on its input grid,
  the float graph as they are.
  """
  if not isinstance(model, (bytes, bytearray)):
    with open(model, "rb") as f:
      model = f.read()
  interp = _interpreter(bytes(model))
  feeds = {key.split(":")[0]: np.asarray(value) for key, value in
           tensor_name_feeds(feeds).items()}
  values, batch = _run_per_example(interp, feeds)
  reference_def = float_reference(float_graph_def)
  graph, constant = _reference_graph(reference_def, feeds)
  order = {op.name: i for i, op in enumerate(graph.get_operations())}
  details = {d["index"]: d for d in interp.get_tensor_details()}
  candidates = {}
  for index in values:
    candidates[index] = [name for name in _components(details[index])
                         if name in order and _is_float(graph.get_operation_by_name(name))]
  wanted = sorted({name for names in candidates.values() for name in names})
  with tf.compat.v1.Session(graph=graph) as sess:
    reference = sess.run({name: name + ":0" for name in wanted},
                         {name + ":0": value for name, value in feeds.items()})
  matched, unmatched = [], []
  for index, examples in values.items():
    detail = details[index]
    row = None
    for name in candidates[index]:
      is_constant = name in constant
      got = examples[0] if is_constant else np.concatenate(examples, axis=0)
      want = _arrange(reference[name], got.shape, is_constant, batch)
      if want is not None:
        row = _row(name, detail, want, got)
        matched.append((order[name], row))
        break
    if row is None:
      same = all(np.array_equal(examples[0], e) for e in examples[1:])
      got = _dequantize(examples[0] if same else np.concatenate(examples, axis=0), detail)
      unmatched.append(Row(detail["name"], _grid(detail), *value_range(got), math.nan,
                           note="no float tensor of that name and shape"))
  return [row for _, row in sorted(matched, key=lambda item: item[0])] + unmatched


def _interpreter(content):
  with warnings.catch_warnings(), contextlib.redirect_stderr(io.StringIO()):
    warnings.simplefilter("ignore")
    return tf.lite.Interpreter(
        model_content=content, experimental_preserve_all_tensors=True,
        experimental_op_resolver_type=(
            tf.lite.experimental.OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES))


def _run_per_example(interp, feeds):
  """({tensor index: [value per example]} of every quantized or float tensor, batch size)."""
  inputs = interp.get_input_details()
  missing = [d["name"] for d in inputs if d["name"] not in feeds]
  if missing:
    raise ValueError("feeds have no value for the TFLite model's input(s) %s (given: %s)"
                     % (", ".join(missing), ", ".join(sorted(feeds)) or "none"))
  batch = len(feeds[inputs[0]["name"]])
  interp.allocate_tensors()
  wanted = [d for d in interp.get_tensor_details() if _is_measured(d)]
  values = collections.defaultdict(list)
  for i in range(batch):
    for d in inputs:
      example = feeds[d["name"]][i:i + 1]
      scale, zero_point = d["quantization"]
      if np.issubdtype(d["dtype"], np.integer) and scale:
        info = np.iinfo(d["dtype"])
        example = np.clip(np.round(example / scale + zero_point), info.min, info.max)
      interp.set_tensor(d["index"], example.astype(d["dtype"]).reshape(d["shape"]))
    interp.invoke()
    for d in wanted:
      try:
        values[d["index"]].append(np.array(interp.get_tensor(d["index"])))
      except ValueError:  # a tensor the runtime never filled
        pass
  return values, batch


def _is_measured(detail):
  scales = detail["quantization_parameters"]["scales"]
  return np.issubdtype(detail["dtype"], np.floating) or (scales.size and np.any(scales))


def _reference_graph(graph_def, feeds):
  """(graph, names of its ops that do not depend on the fed inputs: constants)."""
  graph = tf.Graph()
  with graph.as_default():
    tf.import_graph_def(graph_def, name="")
  for name in feeds:
    try:
      graph.get_operation_by_name(name)
    except KeyError:
      raise ValueError("the model's input %r is not a node of the float graph" % name) from None
  consumers = collections.defaultdict(list)
  for op in graph.get_operations():
    for t in op.inputs:
      consumers[t.op.name].append(op.name)
  varying, todo = set(), list(feeds)
  while todo:
    name = todo.pop()
    if name not in varying:
      varying.add(name)
      todo.extend(consumers[name])
  return graph, {op.name for op in graph.get_operations()} - varying


def _components(detail):
  return [name for name in detail["name"].split(";") if name]


def _is_float(op):
  return bool(op.outputs) and op.outputs[0].dtype.is_floating


def _squeezed(shape):
  return tuple(d for d in shape if d != 1)


def _arrange(reference, shape, is_constant, batch):
  """`reference` laid out as the TFLite tensor of `shape` (a constant's, or the per-example
  values stacked on the batch axis), or None when it cannot be that tensor."""
  reference = np.asarray(reference)
  shape = tuple(shape)
  if reference.size != int(np.prod(shape)):
    return None
  if reference.shape == shape:
    return reference
  if is_constant:
    layouts = [reference.transpose(3, 0, 1, 2)] if reference.ndim == 4 else []
    layouts += [reference.T] if reference.ndim == 2 else []
    for layout in layouts + [reference]:
      if layout.shape == shape or _squeezed(layout.shape) == _squeezed(shape):
        return layout.reshape(shape)
    return None
  if reference.ndim and reference.shape[0] == batch and shape[0] == batch and (
      _squeezed(reference.shape[1:]) == _squeezed(shape[1:])):
    return reference.reshape(shape)
  return None


def _dequantize(values, detail):
  params = detail["quantization_parameters"]
  scales, zero_points = params["scales"], params["zero_points"]
  values = np.asarray(values, np.float64)
  if not scales.size:
    return values
  return (values - _along(zero_points, params, values)) * _along(scales, params, values)


def _along(per_channel, params, values):
  if per_channel.size == 1:
    return np.float64(per_channel[0])
  shape = [1] * values.ndim
  shape[params["quantized_dimension"]] = -1
  return np.asarray(per_channel, np.float64).reshape(shape)


def _on_grid(reference, detail):
  """`reference` quantized and dequantized on the tensor's own grid."""
  params = detail["quantization_parameters"]
  if not params["scales"].size:
    return np.asarray(reference, np.float64)
  scale = _along(params["scales"], params, reference)
  zero_point = _along(params["zero_points"], params, reference)
  info = np.iinfo(detail["dtype"])
  ints = np.clip(np.round(np.asarray(reference, np.float64) / scale + zero_point),
                 info.min, info.max)
  return (ints - zero_point) * scale


def _grid(detail):
  params = detail["quantization_parameters"]
  dtype = np.dtype(detail["dtype"]).name
  scales = params["scales"]
  if not scales.size:
    return dtype
  if scales.size > 1:
    return "%s per channel (%d scales, axis %d)" % (dtype, scales.size,
                                                     params["quantized_dimension"])
  return "%s, scale %.4g, zero point %d" % (dtype, scales[0], params["zero_points"][0])


def _row(name, detail, reference, got):
  reference = np.asarray(reference, np.float64)
  return Row(name, _grid(detail), *value_range(reference),
             sqnr_db(reference, _on_grid(reference, detail)),
             sqnr_db(reference, _dequantize(got, detail)), name + ":0",
             "tflite tensor %d" % detail["index"])
