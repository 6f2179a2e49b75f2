"""ADD, SUB, MUL, MEAN and RELU computed in integers as a TFLite CPU runtime computes them (see
integer_requantize for the layers and for how the result joins the eval graph).

Each input is an integer tensor on a grid: a FakeQuant's, or, for a constant operand (hard-swish's
`x + 3` and `· 1/6`, Rescaling's scale and offset), the grid the converter gives a constant
without one: 8 bits over [min(0, c), max(0, c)] (`constant_scale`). Per runtime, measured op by
op against the interpreter (MobileNetV3's 57 MULs, 36 ADDs and 6 MEANs, EfficientNet's 66 MULs
and 12 MEANs, synthetic MEANs over 2x2 to 7x7 maps):
  ADD   builtin: both inputs shifted left by 20, each scaled by its own multiplier, the sum
        scaled again, each step double-rounded (add.cc); XNNPACK: 21-bit multipliers from the
        float32 ratios s_a/s_out and s_b/s_out, one rounding shift, halves up.
  MUL   builtin: MultiplyByQuantizedMultiplier(a·b, s_a·s_b/s_out in float32 arithmetic),
        halves away from zero; XNNPACK: float32(a·b)·(the same ratio), rounded half to even.
  MEAN  (over height and width) builtin: the sum times s_in/(n·s_out) by
        MultiplyByQuantizedMultiplier (tflite_builtin_mean); XNNPACK: in float32, rounded half
        away from zero.
  RELU  (a ReLU between two quantizers, on Xception's residual sums) both: the input
        requantized by MultiplyByQuantizedMultiplier(s_in/s_out, float32), halves away from
        zero, then clamped (measured on Xception's 11 RELUs, where no value fell on a tie).
  SUB   both: the ADD of a and -b (the second multiplier negated; the roundings are symmetric).
  LOGISTIC  (read by a MUL: swish, squeeze-excite gates) both: a table over the input integers,
        dequantized in float32 as scale · q, on the fixed output grid 1/256, zero point -128:
        at most 255/256 (measured on EfficientNetV2B0's 6.4M LOGISTIC outputs).
The numpy functions are the runtimes' formulas, beside their TF versions for tests.
"""

import numpy as np
import tensorflow as tf

from qat_rewrite.quant import integer_requantize as ir


def constant_scale(value):
  """The scale (double) the converter gives a constant operand that no FakeQuant quantizes,
  or None for an all-zero one: 8 bits, asymmetric, over [min(0, c), max(0, c)]."""
  value = np.asarray(value, np.float64)
  span = max(0.0, float(value.max())) - min(0.0, float(value.min()))
  return span / 255.0 if span > 0.0 else None


# The runtimes' formulas in numpy, on centred integers (q - zero point), before the output
# zero point.

def tflite_builtin_add(a, b, scale_a, scale_b, scale_out):
  """TFLite's builtin int8 ADD: each input shifted left by 20 and scaled by its own
  multiplier, the sum scaled again, every step double-rounded (add.cc, the reference and
  optimized kernels alike)."""
  twice_max = 2.0 * max(float(np.float32(scale_a)), float(np.float32(scale_b)))
  m_a = ir.quantize_multiplier(float(np.float32(scale_a)) / twice_max)
  m_b = ir.quantize_multiplier(float(np.float32(scale_b)) / twice_max)
  m_out = ir.quantize_multiplier(twice_max / ((1 << 20) * float(np.float32(scale_out))))
  total = (ir.multiply_by_quantized_multiplier(np.asarray(a, np.int64) << 20, *m_a)
           + ir.multiply_by_quantized_multiplier(np.asarray(b, np.int64) << 20, *m_b))
  return ir.multiply_by_quantized_multiplier(total, *m_out)


def xnnpack_add(a, b, scale_a, scale_b, scale_out):
  """XNNPACK's qs8 ADD: multipliers of 21 bits from the float32 ratios s_a/s_out and
  s_b/s_out, one rounding shift (half up)."""
  ratio_a = np.float32(scale_a) / np.float32(scale_out)
  ratio_b = np.float32(scale_b) / np.float32(scale_out)
  shift = 20 - int(np.frexp(max(ratio_a, ratio_b))[1] - 1)
  m_a, m_b = (int(np.rint(np.float32(r) * np.float32(2.0 ** shift))) for r in (ratio_a, ratio_b))
  total = np.asarray(a, np.int64) * m_a + np.asarray(b, np.int64) * m_b + (1 << (shift - 1))
  return total >> shift


def _real_f32(*scales):
  """s_a·s_b/s_out (or s_a/s_out) as the kernels compute it: float32 arithmetic."""
  *inputs, out = (np.float32(s) for s in scales)
  return np.prod(np.array(inputs, np.float32), dtype=np.float32) / out


def tflite_builtin_mul(a, b, scale_a, scale_b, scale_out):
  """TFLite's builtin int8 MUL: MultiplyByQuantizedMultiplier(a·b) with the multiplier of
  s_a·s_b/s_out (float32 arithmetic), halves away from zero."""
  product = np.asarray(a, np.int64) * np.asarray(b, np.int64)
  real = float(_real_f32(scale_a, scale_b, scale_out))
  return ir.multiply_by_quantized_multiplier(product, *ir.quantize_multiplier(real))


def xnnpack_mul(a, b, scale_a, scale_b, scale_out):
  """XNNPACK's qs8 MUL (fp32 requantization): float32(a·b)·(s_a·s_b/s_out, in float32),
  rounded half to even."""
  product = np.asarray(a, np.int64) * np.asarray(b, np.int64)
  return ir.xnnpack_requantize(product, _real_f32(scale_a, scale_b, scale_out))


def _half_away(values):
  return np.sign(values) * np.floor(np.abs(values) + 0.5)


def tflite_builtin_mean(x, zero_in, scale_in, scale_out, keep_dims):
  """TFLite's builtin int8 MEAN over axes 1 and 2 of centred integers `x` [N, H, W, C],
  before the output zero point. keep_dims (optimized Mean): the raw sum times s_in/(H·W·s_out)
  (float32) by MultiplyByQuantizedMultiplier, whose last shift rounds halves up in the
  channels its vector loop takes (blocks of 16) and away from zero in the rest, minus the
  input zero point's share rounded half away from zero. Otherwise (QuantizedMeanOrSum): the
  centred sum by the multiplier of s_in/s_out divided by H·W (truncated, with up to
  log2(H·W) more bits)."""
  x = np.asarray(x, np.int64)
  count = x.shape[1] * x.shape[2]
  if keep_dims:
    raw = np.sum(x + zero_in, axis=(1, 2), keepdims=True)
    real = float(np.float32(scale_in) / (np.float32(count) * np.float32(scale_out)))
    multiplier = ir.quantize_multiplier(real)
    vector = np.arange(x.shape[3]) < x.shape[3] // 16 * 16
    scaled = np.where(vector, ir.multiply_by_quantized_multiplier(raw, *multiplier, half_up=True),
                      ir.multiply_by_quantized_multiplier(raw, *multiplier))
    return scaled - int(_half_away(np.float32(zero_in) * np.float32(scale_in)
                                   / np.float32(scale_out)))
  multiplier, shift = ir.quantize_multiplier(float(np.float32(scale_in))
                                             / float(np.float32(scale_out)))
  more = min(int(np.floor(np.log2(count))), 32, 31 + shift)
  return ir.multiply_by_quantized_multiplier(np.sum(x, axis=(1, 2)), (multiplier << more) // count,
                                             shift - more)


def xnnpack_mean(x, scale_in, scale_out, keep_dims):
  """XNNPACK's qs8 MEAN over axes 1 and 2: float32(centred sum)·(s_in/(H·W·s_out), in
  float32), rounded half away from zero."""
  x = np.asarray(x, np.int64)
  count = x.shape[1] * x.shape[2]
  scale = np.float32(scale_in) / (np.float32(count) * np.float32(scale_out))
  total = np.sum(x, axis=(1, 2), keepdims=keep_dims).astype(np.float32)
  return _half_away(total * scale).astype(np.int64)


# The same in TF ops. Scales arrive as float64 tensors (the converter's double); the kernels
# read their float32.

def _tf_exponent(value):
  """floor(log2(value)) of a positive float32 tensor, by its bits (int64)."""
  bits = tf.cast(tf.bitcast(value, tf.int32), tf.int64)
  return tf.bitwise.bitwise_and(tf.bitwise.right_shift(bits, 23), 0xFF) - 127


def _tf_add(a, b, scales, mode):
  t_1, t_2, t_out = (tf.cast(s, tf.float32) for s in scales)
  if mode == "xnnpack":
    ratio_1, ratio_2 = t_1 / t_out, t_2 / t_out
    shift = 20 - _tf_exponent(tf.maximum(ratio_1, ratio_2))
    power = tf.pow(tf.constant(2.0, tf.float64), tf.cast(shift, tf.float64))
    m_1, m_2 = (tf.round(tf.cast(r, tf.float64) * power) for r in (ratio_1, ratio_2))
    total = tf.cast(a * m_1 + b * m_2, tf.int64) + tf.bitwise.left_shift(
        tf.constant(1, tf.int64), shift - 1)
    return tf.bitwise.right_shift(total, shift)
  d_1, d_2, d_out = (tf.cast(t, tf.float64) for t in (t_1, t_2, t_out))
  twice_max = 2.0 * tf.maximum(d_1, d_2)
  m_1, m_2, m_out = (ir.tf_quantize_multiplier(r) for r in (
      d_1 / twice_max, d_2 / twice_max, twice_max / (2.0 ** 20 * d_out)))
  scaled = [ir.tf_multiply_by_quantized_multiplier(tf.cast(v, tf.int64) * (1 << 20), *m)
            for v, m in ((a, m_1), (b, m_2))]
  return ir.tf_multiply_by_quantized_multiplier(scaled[0] + scaled[1], *m_out)


def _tf_half_away(values):
  return tf.sign(values) * tf.floor(tf.abs(values) + 0.5)


def _tf_mul(a, b, scales, mode):
  t_1, t_2, t_out = (tf.cast(s, tf.float32) for s in scales)
  real = t_1 * t_2 / t_out
  if mode == "xnnpack":
    return tf.round(tf.cast(a * b, tf.float32) * real)  # half to even
  return ir.tf_multiply_by_quantized_multiplier(
      tf.cast(a * b, tf.int64), *ir.tf_quantize_multiplier(tf.cast(real, tf.float64)))


def emulate_binary(kind, operands, in_scales, activation, output, out_q, mode):
  """`kind` ("Add", "Sub" or "Mul") of two `operands` (tensors or constant values) on grids of
  steps `in_scales` (float64 tensors: a FakeQuant's `converter_scale`, a constant's
  `constant_scale`) as `mode`'s runtime computes it, then `activation` and the output as
  `integer_requantize.emulate_layer` makes it. Both runtimes subtract as they add, with the
  second multiplier negated; their roundings are symmetric, so a - b is the ADD of a and -b."""
  ir.check_mode(mode)
  with tf.name_scope("integer"):
    s_out = ir.converter_scale(out_q)
    a, b = (ir.centred(t, s) for t, s in zip(operands, in_scales))
    compute = _tf_mul if kind == "Mul" else _tf_add
    result = compute(a, -b if kind == "Sub" else b, tuple(in_scales) + (s_out,), mode)
    emulated = ir.to_output_grid(tf.cast(result, tf.float64), activation, out_q,
                                 tf.cast(s_out, tf.float32))
  return ir.joined(output, emulated, mode)


def sigmoid_of_integers(x, scale):
  """sigmoid(x) for `x` on a grid of step `scale` (float64), as LOGISTIC's int8 table gives it
  in both runtimes: on the fixed grid 1/256 with zero point -128, so it saturates at 255/256
  (sigmoid(x) >= 255.5/256 rounded to 256/256 in the eval graph: 4% of one EfficientNetV2
  squeeze-excite's gates, 1 LSB each after the MUL). The table dequantizes each input integer
  in float32 as scale · q."""
  with tf.name_scope("sigmoid_of_integers"):
    scale_f32 = tf.cast(scale, tf.float32)
    sigmoid = tf.sigmoid(scale_f32 * tf.cast(ir.centred(x, scale), tf.float32))
    steps = tf.minimum(tf.round(tf.cast(sigmoid, tf.float64) * 256.0), 255.0)
    return steps / 256.0


def _tf_builtin_mean(x, zero_in, s_in, s_out, keep_dims):
  """tflite_builtin_mean in TF ops; x: centred integers (float64) with static H, W and C."""
  count = int(x.shape[1]) * int(x.shape[2])
  t_in, t_out = tf.cast(s_in, tf.float32), tf.cast(s_out, tf.float32)
  if keep_dims:
    raw = tf.cast(tf.reduce_sum(x + zero_in, axis=[1, 2], keepdims=True), tf.int64)
    multiplier = ir.tf_quantize_multiplier(tf.cast(t_in / (float(count) * t_out), tf.float64))
    up, away = (ir.tf_multiply_by_quantized_multiplier(raw, *multiplier, half_up=half_up)
                for half_up in (True, False))
    channels = int(x.shape[3])
    vector = tf.constant(np.arange(channels) < channels // 16 * 16)
    share = _tf_half_away(tf.cast(zero_in, tf.float32) * t_in / t_out)
    return tf.cast(tf.where(vector, up, away), tf.float64) - tf.cast(share, tf.float64)
  multiplier, shift = ir.tf_quantize_multiplier(tf.cast(t_in, tf.float64)
                                                / tf.cast(t_out, tf.float64))
  more = tf.minimum(tf.minimum(tf.constant(count.bit_length() - 1, tf.int64), 32), 31 + shift)
  total = tf.cast(tf.reduce_sum(x, axis=[1, 2]), tf.int64)
  return tf.cast(ir.tf_multiply_by_quantized_multiplier(
      total, tf.bitwise.left_shift(multiplier, more) // count, shift - more), tf.float64)


def emulate_mean(mean, in_q, keep_dims, activation, output, out_q, mode):
  """The MEAN `mean` over axes 1 and 2 of a 4-D tensor on the grid of `in_q` (static height,
  width and channels) as `mode`'s runtime computes it (tflite_builtin_mean, xnnpack_mean)."""
  ir.check_mode(mode)
  with tf.name_scope("integer"):
    s_in, s_out = ir.converter_scale(in_q), ir.converter_scale(out_q)
    x = ir.centred(mean.inputs[0], s_in)
    if mode == "xnnpack":
      count = float(int(x.shape[1]) * int(x.shape[2]))
      scale = tf.cast(s_in, tf.float32) / (count * tf.cast(s_out, tf.float32))
      total = tf.cast(tf.reduce_sum(x, axis=[1, 2], keepdims=keep_dims), tf.float32)
      result = tf.cast(_tf_half_away(total * scale), tf.float64)
    else:
      result = _tf_builtin_mean(x, ir.converter_zero_point(in_q), s_in, s_out, keep_dims)
    emulated = ir.to_output_grid(result, activation, out_q, tf.cast(s_out, tf.float32))
  return ir.joined(output, emulated, mode)


def tflite_relu(x, scale_in, scale_out):
  """TFLite's int8 RELU between two grids, before the output zero point and the clamp: the
  centred input by MultiplyByQuantizedMultiplier(s_in/s_out, float32), halves away from zero."""
  real = float(np.float32(scale_in) / np.float32(scale_out))
  return ir.multiply_by_quantized_multiplier(x, *ir.quantize_multiplier(real))


def emulate_relu(relu, in_q, output, out_q, mode):
  """The ReLU or ReLU6 `relu` of a tensor on the grid of `in_q`, whose output `out_q`
  quantizes on a grid of its own, as the runtime requantizes and clamps it (tflite_relu)."""
  ir.check_mode(mode)
  with tf.name_scope("integer"):
    s_in, s_out = ir.converter_scale(in_q), ir.converter_scale(out_q)
    t_in, t_out = tf.cast(s_in, tf.float32), tf.cast(s_out, tf.float32)
    x = tf.cast(ir.centred(relu.inputs[0], s_in), tf.int64)
    result = ir.tf_multiply_by_quantized_multiplier(
        x, *ir.tf_quantize_multiplier(tf.cast(t_in / t_out, tf.float64)))
    emulated = ir.to_output_grid(tf.cast(result, tf.float64), relu.type, out_q, t_out)
  return ir.joined(output, emulated, mode)
