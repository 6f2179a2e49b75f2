"""AvgPool's ties rounded as TFLite's int8 kernel rounds them, so eval graph and model agree.

A 2x2 average of values on a grid lands exactly half-way between two grid points for a quarter
of its outputs. TFLite's int8 AVERAGE_POOL_2D (the builtin kernel; XNNPACK did the same on the
MNIST CNN but not always on a pool-only model) rounds the integer average half away from zero;
FakeQuant rounds half up, and in float32 often lands just below the half. On the MNIST CNN that
changed 0.04% of the pool outputs, and the dense layer reading 1,568 of them made it 6 points of
logits one step apart (agreement 92.4% -> 98.8% with this fix alone).

The fix moves each average a quarter of the smallest possible gap (1/(4n) of a step for an
n-element window) away from zero in the int8 domain before its FakeQuant: a tie then rounds as
TFLite does, and no other value crosses a rounding boundary. Exports drop this nudge (the
`TIES_NUDGE` op): the converted model pools the integers itself.
"""

import tensorflow as tf

TIES_NUDGE = "ties_away_from_zero"


def is_ties_nudge(name):
  """True for the name of the op `round_ties_away_from_zero` returns."""
  return name.endswith("/" + TIES_NUDGE)


def round_ties_away_from_zero(average, quantizer, window):
  """`average` (the AvgPool output) nudged so that the FakeQuant of `quantizer`'s range, which
  follows it, rounds ties away from zero in the signed integer domain, as TFLite does.

  quantizer: the per-tensor FakeQuantWithMinMaxVars op of the pool's input (same range);
  window: the number of elements the pool averages (kernel height x width).
  """
  bits = quantizer.get_attr("num_bits")
  qmin = 1 if quantizer.get_attr("narrow_range") else 0
  qmax = 2 ** bits - 1
  # The zero point as the converter computes it, in float64 and rounded half up: a range like
  # [-6, 6] puts it on a tie (127.5) that float32 division can land on either side of.
  low, high = (tf.cast(t, tf.float64) for t in quantizer.inputs[1:3])
  scale = (high - low) / (qmax - qmin)
  zero_point = tf.clip_by_value(tf.floor(qmin - low / scale + 0.5), qmin, qmax)
  signed = tf.cast(average, tf.float64) / scale + zero_point - 2.0 ** (bits - 1)
  nudge = tf.cast(tf.sign(signed) * scale / (4.0 * window), average.dtype)
  return tf.add(average, nudge, name=TIES_NUDGE)
