"""Which ops AMCT quantizes for retrain, and why the others stay float.

The seeds' constraints: MatMul without transpose or adjoint; Conv2D, DepthwiseConv2dNative and
Conv2DBackpropInput with dilation 1; float32 only; weights that are a variable or a constant.
AvgPool (NHWC, float32) too: it has no weights, so only its input is quantized.
Conv2D with 16 or fewer input channels is quantized but warned about: the Ascend cube pads
its input channels, so it gains no INT8 speed and may lose accuracy.

The other modules ask `kind(op)` where a layer's data and weights enter, so a layer family
without weights (weight_input None) is declared here once.
"""

import dataclasses
from typing import Callable, Dict, List, Optional

import tensorflow as tf

from qat_rewrite.graph.view import VARIABLE_TYPES, GraphView
from qat_rewrite.layers import kind_of
from qat_rewrite.layers.catalogue import UNSUPPORTED_COMPUTE_TYPES
from qat_rewrite.report import FloatOp

SMALL_CIN = 16
_CONV_TYPES = ("Conv2D", "DepthwiseConv2dNative", "Conv2DBackpropInput")
_READ_TYPES = ("Identity", "ReadVariableOp")


@dataclasses.dataclass(frozen=True)
class AscendKind:
  """A layer family the catalogue (qat_rewrite.layers) does not hold: AMCT-only layers."""
  name: str
  data_input: int
  weight_input: Optional[int]  # None: no weights (no ARQ, no AscendWeightQuant)
  supports: Optional[Callable] = None  # op -> None if supported, else the reason


def _pool_nhwc_only(op):
  fmt = op.get_attr("data_format").decode()
  return None if fmt == "NHWC" else "data_format %s is not supported (NHWC only)" % fmt


AVG_POOL = AscendKind("avg_pool", 0, None, _pool_nhwc_only)
_ASCEND_ONLY = {"AvgPool": AVG_POOL}


def kind(op):
  """How `op` is quantized as an AMCT layer (.name, .data_input, .weight_input), or None."""
  return _ASCEND_ONLY.get(op.type) or kind_of(op)


def has_weights(op):
  return kind(op).weight_input is not None


@dataclasses.dataclass
class Candidates:
  layers: List[tf.Operation]
  float_ops: List[FloatOp]
  warnings: Dict[str, str]  # layer name -> warning


def find_layers(graph):
  """Every layer of `graph` that AMCT can quantize, and every one it cannot (with why)."""
  view = GraphView(graph)
  found = Candidates([], [], {})
  for op in view.ops:
    if kind(op) is None:
      if op.type in UNSUPPORTED_COMPUTE_TYPES:
        found.float_ops.append(FloatOp(op.name, op.type, "%s is not a layer AMCT quantizes"
                                       % op.type))
      continue
    if view.is_dangling(op):
      continue
    why = unsupported_reason(op)
    if why:
      found.float_ops.append(FloatOp(op.name, op.type, why))
      continue
    found.layers.append(op)
    warning = small_input_warning(op)
    if warning:
      found.warnings[op.name] = warning
  return found


def unsupported_reason(op):
  """Why `op` must stay float, or None."""
  layer_kind = kind(op)
  why = layer_kind.supports(op) if layer_kind.supports else None
  if why:
    return why
  if op.outputs[0].dtype != tf.float32:
    return "dtype %s: AMCT quantizes float32 models only" % op.outputs[0].dtype.name
  if not has_weights(op):
    return None
  if op.type == "MatMul":
    flags = [a for a in ("transpose_a", "transpose_b") if op.get_attr(a)]
    if flags:
      return "MatMul with %s=True (AMCT quantizes MatMul only without transpose or adjoint)" \
          % flags[0]
  if op.type in _CONV_TYPES:
    dilations = list(op.get_attr("dilations"))
    if any(d != 1 for d in dilations):
      return "dilation %s (AMCT quantizes %s only with dilation 1)" % (dilations, op.type)
  weight = op.inputs[layer_kind.weight_input]
  if not is_parameter(weight):
    return "its weights (%s) are computed, not a variable or constant" % weight.op.name
  if weight.shape.rank != (2 if op.type == "MatMul" else 4) or not weight.shape.is_fully_defined():
    return "its weights %s have no fully known shape" % weight.op.name
  return None


def is_parameter(tensor):
  """True if `tensor` is a variable read or a constant (through Identity reads)."""
  for _ in range(8):
    op = tensor.op
    if op.type == "Const" or op.type in VARIABLE_TYPES:
      return True
    if op.type not in _READ_TYPES:
      return False
    tensor = op.inputs[0]
  return False


def input_channels(op):
  shape = op.inputs[kind_of(op).weight_input].shape.as_list()
  return shape[3] if op.type == "Conv2DBackpropInput" else shape[2] if len(shape) == 4 else shape[0]


def small_input_warning(op):
  if op.type == "Conv2D" and input_channels(op) <= SMALL_CIN:
    return ("Conv2D %s has %d input channels (<= %d): on Ascend it gains no INT8 speed and the "
            "deployed model may lose accuracy; consider skipping it"
            % (op.name, input_channels(op), SMALL_CIN))
  return None


def reduce_axes(op, channel_wise):
  """The weight axes one scale_w covers. Per channel, the kept axes flatten to the output
  channels in the layer's order (depthwise: in_channel * multiplier + m)."""
  if not channel_wise:
    return None
  return {"Conv2D": (0, 1, 2), "DepthwiseConv2dNative": (0, 1),
          "Conv2DBackpropInput": (0, 1, 3)}[op.type]


def output_channels(op):
  """How many output channels the layer has (depthwise: in_channels x multiplier)."""
  shape = op.inputs[kind_of(op).weight_input].shape.as_list()
  if op.type == "DepthwiseConv2dNative":
    return shape[2] * shape[3]
  if op.type == "Conv2DBackpropInput":
    return shape[2]
  return shape[-1]


def supports_channel_wise(op):
  return op.type in _CONV_TYPES
