"""A quantized layer's output computed in integers, as a TFLite CPU runtime computes it.

The eval graph's conv computes in float32 and its output FakeQuant rounds once; the int8 model
accumulates integers exactly and requantizes them by its runtime's rule. The two part on a few
outputs in 10^5 (a float32 sum within 1e-5 LSB of a rounding tie, or the runtime's own double
rounding), and one flip early in a deep net changes a tenth of its logits. So an eval graph
rewritten with `requantize="xnnpack"` or `"tflite_builtin"` computes each emulated layer as:

  1. the input and weight integers (centred: q - zero point) from their FakeQuant grids;
  2. the exact accumulator: the layer op in float64 (exact for int8 products) plus the int32
     bias as the converter rounds it, round(bias / (s_in·s_w)) with both scales in double;
  3. the runtime's requantization, with the scales the .tflite file stores (float32 of the
     converter's double (max - min)/levels):
     - "xnnpack": fp32, round(float(acc) · scale) to nearest even, scale = s_in·s_w/s_out in
       float32 (XNNPACK's qs8/qc8w kernels);
     - "tflite_builtin": QuantizeMultiplier(double s_in·s_w/s_out) and
       MultiplyByQuantizedMultiplier in int64: SaturatingRoundingDoublingHighMul, then a
       rounding right shift, halves up (what TFLite's builtin int8 conv, depthwise and dense
       kernels compute on x86, measured against the interpreter; the reference code's
       RoundingDivideByPOT rounds halves away from zero, which a fused ReLU hides). Except
       DEPTHWISE_CONV_2D's last (output channels mod 8) channels, which round halves away from
       zero: its kernel takes the channels 8 at a time and the rest one by one (measured on
       3x3 and 5x5 filters, strides 1 and 2, multipliers 1 and 2, 3 to 24 output channels);
  4. + the output zero point, clamped to int8 and to a fused ReLU/ReLU6, back to float on the
     output FakeQuant's grid, which follows unchanged.
ADD, MUL, MEAN and RELU have their own rules (`integer_elementwise`); AVERAGE_POOL is not emulated
(its ties are: pool_rounding).

The result joins the graph as `output + stop_gradient(emulated - output)` named
`requantize_<mode>`, role `requantize/<mode>`: a straight-through gradient, and exports bypass it
(`is_emulation`) as they bypass the pool ties nudge: the converter sees the standard FakeQuant
graph.
The numpy functions here are the runtime's formulas, kept beside their TF versions for tests.
"""

import collections

import numpy as np
import tensorflow as tf
from absl import logging

from qat_rewrite.graph import roles
from qat_rewrite.quant import fake_quant

_PREFIX = "requantize_"  # the op's name: `requantize_<mode>`
_ROLE = "requantize"  # its role (graph/roles.py): `requantize/<mode>`

Mode = collections.namedtuple("Mode", "runtime delegates")
# Who computes so, and `delegates` as agreement.compare_tflite / integer_check name the runtime.
MODES = {"float": None,
         "xnnpack": Mode("TFLite's XNNPACK delegate (the default CPU kernels)", True),
         "tflite_builtin": Mode("TFLite's builtin kernels (no default delegate)", False)}
DEFAULT_MODE = "float"
LAYER_TYPES = ("Conv2D", "DepthwiseConv2dNative", "MatMul")


def check_mode(mode):
  if mode not in MODES:
    raise ValueError("requantize must be one of %s, got %r" % (", ".join(sorted(MODES)), mode))
  return mode


def mode_of(op):
  """The mode of an emulation op (an Operation or a NodeDef), or None if it is not one."""
  return roles.parameter(op, _ROLE)


def is_emulation(op):
  """True for an op `joined` returns, an Operation or a NodeDef (exports bypass it)."""
  return mode_of(op) is not None


def modes_in(graph_def):
  """The requantize modes a (frozen) eval graph emulates: a set, empty for "float"."""
  return {mode_of(n) for n in graph_def.node} - {None}


def mode_for_runtime(delegates):
  """The mode emulating the TFLite runtime that `delegates` (compare_tflite's flag) picks."""
  return "xnnpack" if delegates else "tflite_builtin"


def warn_if_not(graph_def, mode, runtime):
  """Logs a warning if the eval graph `graph_def` emulates another runtime than `mode`, the one
  it is compared with or exported to (`runtime`, its name in words)."""
  others = sorted(modes_in(graph_def) - {mode})
  if others:
    logging.warning("the eval graph requantizes as %s (requantize=%r) but is compared with %s: "
                    "rewrite an eval graph with requantize=%r for that runtime", MODES[others[0]]
                    .runtime, others[0], runtime, mode if mode in MODES else "float")


# The runtimes' formulas in numpy (int64 arrays), as TFLite's kernel_util / common.h write them.

def quantize_multiplier(real):
  """TFLite's QuantizeMultiplier: (int32 multiplier, shift) with real = m·2^shift / 2^31."""
  if real == 0.0:
    return 0, 0
  fraction, shift = np.frexp(real)
  fixed = int(np.floor(fraction * 2.0 ** 31 + 0.5))  # std::round, fraction > 0
  if fixed == 2 ** 31:
    fixed //= 2
    shift += 1
  if shift < -31:
    return 0, 0
  return fixed, int(shift)


def saturating_rounding_doubling_high_mul(a, b):
  """gemmlowp's SaturatingRoundingDoublingHighMul on int32 values (int64 arrays)."""
  a, b = np.asarray(a, np.int64), np.asarray(b, np.int64)
  product = a * b
  nudge = np.where(product >= 0, 1 << 30, 1 - (1 << 30))
  total = product + nudge
  high = np.sign(total) * (np.abs(total) // (1 << 31))  # C division truncates towards zero
  overflow = (a == b) & (a == -(1 << 31))
  return np.where(overflow, (1 << 31) - 1, high)


def rounding_divide_by_pot(x, exponent):
  """gemmlowp's RoundingDivideByPOT: x / 2^exponent rounded half away from zero."""
  x = np.asarray(x, np.int64)
  mask = (np.int64(1) << exponent) - 1
  remainder = x & mask
  threshold = (mask >> 1) + (x < 0)
  return (x >> exponent) + (remainder > threshold)


def rounding_right_shift(x, exponent):
  """(x + 2^(exponent-1)) >> exponent: x / 2^exponent rounded half up (towards +infinity)."""
  x = np.asarray(x, np.int64)
  return (x + ((np.int64(1) << exponent) >> 1)) >> exponent


def multiply_by_quantized_multiplier(x, multiplier, shift, half_up=False):
  """TFLite's MultiplyByQuantizedMultiplier (double rounding): SaturatingRoundingDoublingHighMul,
  then RoundingDivideByPOT (halves away from zero) or, `half_up`, a rounding right shift
  (halves up), as the builtin int8 conv kernels on x86 shift (measured: -0.5006 -> 0)."""
  left, right = max(shift, 0), max(-shift, 0)
  high = saturating_rounding_doubling_high_mul(np.asarray(x, np.int64) << left, multiplier)
  return rounding_right_shift(high, right) if half_up else rounding_divide_by_pot(high, right)


def xnnpack_requantize(acc, scale):
  """XNNPACK's fp32 requantization: float32(acc)·scale rounded half to even (before the zero
  point and the clamp)."""
  return np.rint(np.asarray(acc).astype(np.float32) * np.float32(scale)).astype(np.int64)


# The same in TF ops.

def tf_quantize_multiplier(real):
  """(multiplier, shift), int64, of a positive float64 tensor, elementwise; frexp by its bits."""
  bits = tf.bitcast(real, tf.int64)
  exponent = tf.bitwise.bitwise_and(tf.bitwise.right_shift(bits, 52), 0x7FF) - 1022
  mantissa_bits = tf.bitwise.bitwise_and(bits, (1 << 52) - 1)
  fraction = tf.bitcast(tf.bitwise.bitwise_or(mantissa_bits, tf.constant(1022 << 52, tf.int64)),
                        tf.float64)  # in [0.5, 1)
  fixed = tf.cast(tf.floor(fraction * 2.0 ** 31 + 0.5), tf.int64)
  carry = tf.equal(fixed, 1 << 31)
  fixed = tf.where(carry, fixed // 2, fixed)
  exponent = tf.where(carry, exponent + 1, exponent)
  tiny = (exponent < -31) | (real <= 0.0)
  return tf.where(tiny, tf.zeros_like(fixed), fixed), tf.where(tiny, tf.zeros_like(exponent),
                                                               exponent)


def tf_multiply_by_quantized_multiplier(x, multiplier, shift, half_up=False):
  """MultiplyByQuantizedMultiplier on int64 tensors holding int32 values (multiplier > 0)."""
  left, right = tf.maximum(shift, 0), tf.maximum(-shift, 0)
  product = tf.bitwise.left_shift(x, left) * multiplier
  nudge = tf.where(product >= 0, tf.constant(1 << 30, tf.int64),
                   tf.constant(1 - (1 << 30), tf.int64))
  high = tf.truncatediv(product + nudge, tf.constant(1 << 31, tf.int64))
  if half_up:
    half = tf.bitwise.right_shift(tf.bitwise.left_shift(tf.ones_like(right), right), 1)
    return tf.bitwise.right_shift(high + half, right)
  mask = tf.bitwise.left_shift(tf.ones_like(right), right) - 1
  remainder = tf.bitwise.bitwise_and(high, mask)
  threshold = tf.bitwise.right_shift(mask, 1) + tf.cast(high < 0, tf.int64)
  return tf.bitwise.right_shift(high, right) + tf.cast(remainder > threshold, tf.int64)


def _range(quantizer):
  low, high = (tf.cast(t, tf.float64) for t in quantizer.inputs[1:3])
  return low, high


converter_scale = fake_quant.converter_scale


def converter_zero_point(quantizer):
  """The signed (int8) zero point the converter computes, float64: round(qmin - min/scale)."""
  low, _ = _range(quantizer)
  bits = quantizer.get_attr("num_bits")
  qmin = 1 if quantizer.get_attr("narrow_range") else 0
  unsigned = tf.clip_by_value(tf.floor(qmin - low / converter_scale(quantizer) + 0.5), qmin,
                              2.0 ** bits - 1)
  return unsigned - 2.0 ** (bits - 1)


def centred(tensor, scale):
  """The integers q - zero point of `tensor`, on a grid of step `scale`, in float64."""
  return tf.round(tf.cast(tensor, tf.float64) / scale)


def _accumulate(layer, x, w):
  """`layer` (Conv2D, DepthwiseConv2dNative or MatMul) run on float64 integers."""
  if layer.type == "MatMul":
    return tf.raw_ops.MatMul(a=x, b=w, transpose_a=layer.get_attr("transpose_a"),
                             transpose_b=layer.get_attr("transpose_b"))
  attrs = dict(strides=layer.get_attr("strides"), padding=layer.get_attr("padding"),
               data_format=layer.get_attr("data_format"), dilations=layer.get_attr("dilations"),
               explicit_paddings=layer.get_attr("explicit_paddings"))
  op = tf.raw_ops.Conv2D if layer.type == "Conv2D" else tf.raw_ops.DepthwiseConv2dNative
  return op(input=x, filter=w, **attrs)


def _activation_bounds(activation, out_q, zero_point, scale_f32):
  """[low, high] of the output integers, as TFLite's CalculateActivationRangeQuantized."""
  bits = out_q.get_attr("num_bits")
  low = tf.constant(-2.0 ** (bits - 1), tf.float64)
  high = tf.constant(2.0 ** (bits - 1) - 1, tf.float64)
  if activation in ("Relu", "Relu6"):
    low = tf.maximum(low, zero_point)
  if activation == "Relu6":
    six = tf.cast(tf.constant(6.0, tf.float32) / scale_f32, tf.float64)
    high = tf.minimum(high, zero_point + tf.sign(six) * tf.floor(tf.abs(six) + 0.5))
  return low, high


def emulate_layer(layer, weight, in_q, w_q, bias, activation, output, out_q, mode):
  """`output` (the tensor `out_q` quantizes) as `mode`'s runtime computes it from `layer`.

  layer: the Conv2D, DepthwiseConv2dNative or MatMul; its data input must be on the grid of
    `in_q` (a per-tensor FakeQuantWithMinMaxVars);
  weight: the layer's weight input, `w_q`'s output (per tensor) or its reshape (per channel,
    channels last in `w_q`, as the layer's output channels);
  bias: the (quantized) bias tensor added to the layer output, or None;
  activation: "Relu", "Relu6" or None, the one between the bias and `out_q`.
  Returns the emulation op's output, to feed `out_q` in `output`'s place.
  """
  check_mode(mode)
  x = layer.inputs[0]
  with tf.name_scope("integer"):
    s_in, s_w, s_out = (converter_scale(q) for q in (in_q, w_q, out_q))
    x_int = centred(x, s_in)
    w_int = centred(w_q.outputs[0], s_w)
    if weight is not w_q.outputs[0]:
      w_int = tf.reshape(w_int, tf.shape(weight))
    acc = _accumulate(layer, x_int, w_int)
    if bias is not None:
      acc += tf.round(tf.cast(bias, tf.float64) / (s_in * s_w))
    # The scales as the .tflite file stores them, which the kernels read.
    t_in, t_w, t_out = (tf.cast(s, tf.float32) for s in (s_in, s_w, s_out))
    if mode == "xnnpack":
      scale = t_in * t_w / t_out
      scaled = tf.round(tf.cast(acc, tf.float32) * scale)  # half to even
      requantized = tf.cast(scaled, tf.float64)
    else:
      real = tf.cast(t_in, tf.float64) * tf.cast(t_w, tf.float64) / tf.cast(t_out, tf.float64)
      multiplier, shift = tf_quantize_multiplier(real + tf.zeros_like(s_w))
      requantized = tf.cast(_builtin_requantize(layer, tf.cast(acc, tf.int64), multiplier,
                                                shift), tf.float64)
    emulated = to_output_grid(requantized, activation, out_q, t_out)
  return joined(output, emulated, mode)


def _builtin_requantize(layer, acc, multiplier, shift):
  """The builtin kernel's requantization of `layer`'s accumulator: halves up, but for a
  depthwise layer's last (channels mod 8) output channels, halves away from zero."""
  up = tf_multiply_by_quantized_multiplier(acc, multiplier, shift, half_up=True)
  channels = layer.outputs[0].shape[-1]
  if layer.type != "DepthwiseConv2dNative" or channels is None or channels % 8 == 0:
    return up
  away = tf_multiply_by_quantized_multiplier(acc, multiplier, shift, half_up=False)
  return tf.where(tf.range(channels) < channels // 8 * 8, up, away)


def joined(output, emulated, mode):
  """`output` + stop_gradient(`emulated` - `output`), named as `mode`'s emulation op: the
  emulated values forward, the float op's gradient backward."""
  emulated = tf.reshape(emulated, tf.shape(output))  # a mean read through a reshape
  return roles.mark(tf.add(output, tf.stop_gradient(emulated - output), name=_PREFIX + mode),
                    "%s/%s" % (_ROLE, mode))


def bypassed_quantizer_values(op):
  """For an emulation op that `joined` put after a FakeQuant (the runtime drops that
  quantization), the tensor whose values it carries instead; None for any other op."""
  if not is_emulation(op) or not op.inputs[0].op.type.startswith("FakeQuant"):
    return None
  difference = op.inputs[1].op.inputs[0].op  # StopGradient(emulated - output)
  return difference.inputs[0]


def to_output_grid(requantized, activation, out_q, t_out):
  """Requantized integers (before the zero point) -> + zero point, clamped, back to float."""
  zero_point = converter_zero_point(out_q)
  low, high = _activation_bounds(activation, out_q, zero_point, t_out)
  integers = tf.clip_by_value(requantized + zero_point, low, high)
  step = tf.cast(out_q.inputs[2] - out_q.inputs[1], tf.float32) / float(fake_quant.levels(out_q))
  return tf.cast(integers - zero_point, tf.float32) * step
