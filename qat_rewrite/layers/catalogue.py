"""One declaration per weight-layer family, plus the op sets the rewrite treats alike.

A declaration is data: the op types, which input is the data and which the weight,
and how a per-output-channel vector (a batch-norm scale, per-channel ranges) lines
up with the weight tensor. Adding a layer type means adding one `LayerKind` here.
"""

import dataclasses
import math
from typing import Callable, Optional, Tuple

ACTIVATION_TYPES = ("Relu", "Relu6", "LeakyRelu", "Identity")
ADD_TYPES = ("Add", "AddV2")
BIAS_TYPES = ("BiasAdd",) + ADD_TYPES
# Ops that keep their input on the quantization grid (or that TFLite rescales itself).
PASS_THROUGH_TYPES = frozenset({
    "Reshape", "Identity", "BatchToSpaceND", "SpaceToBatchND", "MaxPool", "Max",
    "AvgPool", "Mean", "ConcatV2", "Squeeze", "ExpandDims", "Pad"})


@dataclasses.dataclass(frozen=True)
class LayerKind:
  """A family of weight layers.

  `scale_shape(op, weight_shape)` gives the shape a per-output-channel vector must
  be reshaped to so that it multiplies the weight tensor channel by channel.
  `per_channel_shape(op, weight_shape)` gives the shape that puts the output
  channels last (what FakeQuantWithMinMaxVarsPerChannel needs), or None when
  per-channel weights are not supported for this op.
  `summed_axes(op)` gives the weight axes one output sums over (`kernel_elements`).
  """
  name: str
  op_types: Tuple[str, ...]
  data_input: int
  weight_input: int
  scale_shape: Callable
  per_channel_shape: Callable
  folds_batch_norm: bool = True
  supports: Optional[Callable] = None  # op -> None if supported, else the reason
  # TFLite's kernel applies a following ReLU/ReLU6 itself; else the layer output is a tensor
  # of its own before the activation and needs a range (TRANSPOSE_CONV runs RELU separately).
  fuses_relu: bool = True
  summed_axes: Callable = None

  def kernel_elements(self, op, weight_shape):
    """How many products one output of `op` sums (kh·kw·c_in; kh·kw for a depthwise conv; K
    for a MatMul), or None if the weight shape is not known."""
    dims = [weight_shape[axis] for axis in self.summed_axes(op)]
    return None if None in dims else math.prod(dims)


def _nhwc_only(op):
  fmt = op.get_attr("data_format").decode()
  return None if fmt in ("NHWC",) else "data_format %s is not supported (NHWC only)" % fmt


def _last_axis(op, shape):
  return [-1]


def _channels_last(op, shape):
  return None if shape[-1] is None else list(shape)


def _depthwise_scale(op, shape):
  return [shape[2], shape[3]]


def _depthwise_per_channel(op, shape):
  return list(shape[:2]) + [shape[2] * shape[3]]


def _matmul_scale(op, shape):
  return [-1, 1] if op.get_attr("transpose_b") else [-1]


def _matmul_per_channel(op, shape):
  return None if op.get_attr("transpose_b") else list(shape)


def _transpose_conv_scale(op, shape):
  return [-1, 1]


def _no_per_channel(op, shape):
  return None


def _matmul_summed(op):
  return (1,) if op.get_attr("transpose_b") else (0,)


LAYER_KINDS = (
    LayerKind("conv2d", ("Conv2D",), 0, 1, _last_axis, _channels_last, supports=_nhwc_only,
              summed_axes=lambda op: (0, 1, 2)),  # [kh, kw, c_in, c_out]
    LayerKind("depthwise_conv2d", ("DepthwiseConv2dNative",), 0, 1, _depthwise_scale,
              _depthwise_per_channel, supports=_nhwc_only,
              summed_axes=lambda op: (0, 1)),  # [kh, kw, c_in, multiplier]
    LayerKind("conv2d_transpose", ("Conv2DBackpropInput",), 2, 1, _transpose_conv_scale,
              _no_per_channel, supports=_nhwc_only, fuses_relu=False,
              summed_axes=lambda op: (0, 1, 3)),  # [kh, kw, c_out, c_in]
    LayerKind("matmul", ("MatMul",), 0, 1, _matmul_scale, _matmul_per_channel,
              summed_axes=_matmul_summed),  # [K, N], or [N, K] with transpose_b
)

# Compute ops with weights or heavy arithmetic that no LayerKind covers: reported as float.
UNSUPPORTED_COMPUTE_TYPES = frozenset({
    "Conv3D", "Conv3DBackpropInputV2", "BatchMatMul", "BatchMatMulV2", "BatchMatMulV3",
    "DepthwiseConv2dNativeBackpropInput", "Einsum"})

_BY_TYPE = {t: kind for kind in LAYER_KINDS for t in kind.op_types}
LAYER_TYPES = tuple(_BY_TYPE)


def kind_of(op):
  """The LayerKind of `op`, or None if `op` is not a weight layer."""
  return _BY_TYPE.get(op.type)
