"""Which FakeQuant grid a tensor is on: what a bias, a pool, a concat or the runtime emulation
needs to know of the quantizers already inserted."""

from qat_rewrite.graph import roles
from qat_rewrite.graph.view import FAKE_QUANT_TYPES, dropout_input, unwrapped_quantizer_output
from qat_rewrite.quant.integer_requantize import bypassed_quantizer_values

# Ops whose output values are input values, so an input quantizer's grid is also theirs
# (Pad adds zeros, which every range holds; a slice is Keras' Cropping2D).
SAME_GRID_TYPES = frozenset({"Identity", "Reshape", "Squeeze", "ExpandDims", "MaxPool", "Max",
                             "BatchToSpaceND", "SpaceToBatchND", "Pad", "StridedSlice", "Slice"})


def weight_quantizer(tensor):
  """(the FakeQuant that quantizes a layer's weights, its delay condition or None), or (None, None)."""
  tensor, delay = unwrapped_quantizer_output(tensor)
  if tensor.op.type in ("FakeQuantWithMinMaxVars", "FakeQuantWithMinMaxVarsPerChannel"):
    return tensor.op, delay
  return None, None


def input_quantizer(tensor, planned=lambda tensor: None):
  """(the FakeQuant whose grid `tensor` is on, its delay condition or None), or (None, None).
  `planned(t)` names a quantizer not built yet on a tensor t of the walk (passes/quantizer_plan);
  it is returned as found, with no delay."""
  delay = None
  while True:
    point = planned(tensor)
    if point is not None:
      return point, None
    op = tensor.op
    if op.type == "FakeQuantWithMinMaxVars":
      return op, delay
    if op.type in FAKE_QUANT_TYPES:
      return None, None  # per-channel or fixed ranges: weights, not activations
    if roles.of(op) == "delay_select":
      delay, tensor = op.inputs[0], op.inputs[1]
    elif op.type in SAME_GRID_TYPES and op.inputs:
      tensor = op.inputs[0]
    elif op.type == "IdentityN":  # tf.nn.silu's custom gradient (Keras' swish)
      tensor = op.inputs[tensor.value_index]
    elif dropout_input(op) is not None:  # eval reads the input itself
      tensor = dropout_input(op)
    elif bypassed_quantizer_values(op) is not None:  # the runtime drops that quantizer
      tensor = bypassed_quantizer_values(op)
    else:
      return None, None
