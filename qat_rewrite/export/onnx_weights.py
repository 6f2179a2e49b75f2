"""The ONNX model's weights as integers plus DequantizeLinear, on the eval graph's own grid.

tf2onnx folds each weight FakeQuant into a float constant that holds the quantized values.
ONNX Runtime's optimizer then quantizes a float weight that meets a QDQ Conv or Gemm itself,
with one scale of its own, which is not the eval graph's grid (per-channel scales, asymmetric
ranges): on the MNIST CNN only 67% of a layer's outputs still matched. Putting each weight
back as integers + DequantizeLinear with the FakeQuant's scales and zero points makes ONNX
Runtime run the eval graph's integers.
"""

import dataclasses

import numpy as np
from onnx import helper, numpy_helper

from qat_rewrite.export import frozen
from qat_rewrite.graph.frozen import run_graph_def

_WEIGHT_READERS = {"Conv": 1, "ConvTranspose": 1, "MatMul": 1, "Gemm": 1}  # op -> weight input


@dataclasses.dataclass
class WeightGrid:
  """A weight FakeQuant of the eval graph: its output and the integer grid it is on."""
  name: str
  values: np.ndarray  # the quantized weights, channels last for per-channel
  scale: np.ndarray  # one per channel, or a scalar
  zero_point: np.ndarray  # in the unsigned domain [qmin, qmax], like `scale`
  bits: int

  def integers(self, values, channels):
    """`values` (this grid's weights in some layout; `channels` gives each element's channel)
    as integers in the unsigned domain, or None if they are not on this grid."""
    scale = self.scale[channels] if self.scale.ndim else self.scale
    zero_point = self.zero_point[channels] if self.zero_point.ndim else self.zero_point
    ints = np.round(values.astype(np.float64) / scale) + zero_point
    back = (ints - zero_point) * scale
    if np.max(np.abs(back - values), initial=0) > 1e-3 * np.min(self.scale):
      return None
    return ints.astype(np.int64)


def weight_grids(graph_def):
  """A WeightGrid for each FakeQuant of `graph_def` (frozen) that quantizes a constant."""
  fed = _fed_by_placeholders(graph_def)
  quants = [n for n in graph_def.node if n.op in frozen.FAKE_QUANT_TYPES
            and n.op != "FakeQuantWithMinMaxArgs" and n.name not in fed]
  if not quants:
    return []
  values = run_graph_def(graph_def, {}, [n.name for n in quants])
  grids = []
  for node in quants:
    low, high = (np.asarray(frozen.constant_value(graph_def, node.input[i]), np.float32)
                 for i in (1, 2))
    bits = node.attr["num_bits"].i
    scale, zero_point = _nudged(low, high, bits, node.attr["narrow_range"].b)
    grids.append(WeightGrid(node.name, values[node.name], scale, zero_point, bits))
  return grids


def _fed_by_placeholders(graph_def):
  """Names of the nodes whose value depends on a Placeholder; all others are constants."""
  readers = frozen.consumers(graph_def)
  fed, frontier = set(), [n.name for n in graph_def.node if n.op == "Placeholder"]
  while frontier:
    name = frontier.pop()
    if name not in fed:
      fed.add(name)
      frontier.extend(r.name for r in readers.get(name, []))
  return fed


def _nudged(low, high, bits, narrow_range):
  """(scale, zero point) as FakeQuant nudges [low, high], in float32 as its kernel does."""
  qmin, qmax = np.float32(1 if narrow_range else 0), np.float32(2 ** bits - 1)
  scale = (high - low) / (qmax - qmin)
  from_min = qmin - low / scale
  zero_point = np.clip(np.sign(from_min) * np.floor(np.abs(from_min) + 0.5), qmin, qmax)
  return scale.astype(np.float32), zero_point.astype(np.int64)


def _layouts(values):
  """(array, channel of each element) for each layout tf2onnx may have given a weight whose
  channels are last in `values`: as is, transposed (Gemm), OIHW (conv), depthwise."""
  channels = np.broadcast_to(np.arange(values.shape[-1]), values.shape)
  yield values, channels
  if values.ndim == 2:
    yield values.T, channels.T
  if values.ndim == 4:
    yield values.transpose(3, 2, 0, 1), channels.transpose(3, 2, 0, 1)
  if values.ndim in (3, 4):  # depthwise [H, W, C, M] or [H, W, C*M] -> [C*M, 1, H, W]
    shape = values.shape[:2] + (1, -1)
    yield (values.reshape(shape).transpose(3, 2, 0, 1),
           channels.reshape(shape).transpose(3, 2, 0, 1))


def _match(weight, grids):
  """(grid, integers, channel axis or None) for the float ONNX `weight`, or None."""
  for grid in grids:
    if grid.values.size != weight.size:
      continue
    for values, channels in _layouts(grid.values):
      if values.shape != weight.shape or not np.array_equal(values, weight):
        continue
      ints = grid.integers(weight, channels)
      if ints is not None:
        return grid, ints, _channel_axis(channels) if grid.scale.ndim else None
  return None


def _channel_axis(channels):
  """The axis along which `channels` counts 0, 1, 2, ... (constant along the others)."""
  for axis in range(channels.ndim):
    index = [0] * channels.ndim
    index[axis] = slice(None)
    line = channels[tuple(index)]
    if (line.size == channels.max() + 1 and np.array_equal(line, np.arange(line.size))
        and np.array_equal(channels, np.broadcast_to(
            line.reshape([-1 if a == axis else 1 for a in range(channels.ndim)]),
            channels.shape))):
      return axis
  raise ValueError("no channel axis")  # the layouts above always have one


def quantize_weights(model_proto, grids):
  """Replaces each float weight of a Conv, ConvTranspose, MatMul or Gemm of `model_proto`
  that is one of `grids` by integers + DequantizeLinear (in place). Returns the names of the
  ONNX nodes whose weights stayed float."""
  graph = model_proto.graph
  initializers = {i.name: i for i in graph.initializer}
  dequantized, left_float = {}, []  # float initializer -> its DequantizeLinear
  for node in graph.node:
    index = _WEIGHT_READERS.get(node.op_type)
    if index is None or len(node.input) <= index or node.input[index] not in initializers:
      continue
    name = node.input[index]
    weight = numpy_helper.to_array(initializers[name])
    if weight.dtype != np.float32:
      continue
    if name not in dequantized:
      found = _match(weight, [g for g in grids if g.bits <= 8])
      if found is None:
        left_float.append(node.name)
        continue
      dequantized[name] = _dequantize(graph, name, *found)
    node.input[index] = dequantized[name].output[0]
  for position, dq in enumerate(dequantized.values()):
    graph.node.insert(position, dq)
  used = {i for n in graph.node for i in n.input}
  for name in [i.name for i in graph.initializer if i.name not in used]:
    graph.initializer.remove(initializers[name])
  return left_float


def _dequantize(graph, base, grid, ints, axis):
  """Adds the integer initializers of float weight `base` and returns its DequantizeLinear."""
  offset = 2 ** (grid.bits - 1)
  signed = bool(np.all(grid.zero_point == offset))  # symmetric: int8, zero point 0
  dtype = np.int8 if signed else np.uint8
  zero_point = np.zeros_like(grid.zero_point) if signed else grid.zero_point
  names = [base + "_quantized", base + "_scale", base + "_zero_point"]
  graph.initializer.extend([
      numpy_helper.from_array((ints - offset if signed else ints).astype(dtype), names[0]),
      numpy_helper.from_array(np.asarray(grid.scale, np.float32), names[1]),
      numpy_helper.from_array(np.asarray(zero_point).astype(dtype), names[2])])
  attrs = {} if axis is None else {"axis": axis}
  return helper.make_node("DequantizeLinear", names, [base + "_dequantized"],
                          name=base + "_DequantizeLinear", **attrs)
