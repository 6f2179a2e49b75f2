"""Power-of-two ("fix point") quantization, the DPU's number format (decent_q).

A tensor is described by (bits, pos): step = 2^-pos, q = clamp(round(x·2^pos),
-2^(bits-1), 2^(bits-1) - 1), value = q·2^-pos. Weights and biases round halves away
from zero; activations round halves up (the DPU's rounding). The gradient is the
identity (straight-through, no masking), as decent_q's FixNeuron.

Positions are chosen per tensor:
  method 0, non-overflow: the finest step that keeps min and max in range (with a
    half-step guard); an all-zero tensor gets ALL_ZERO_POS;
  method 1, min-diffs: of pos_0 .. pos_0 + 4, the one with the least squared error;
  method 2: as 1, but depthwise weights use the relative error Σ √(|q - x| / (|x| + 1e-9)).
Ties go to the smallest position. Each function has a NumPy form (calibration,
reference) and a TF form (training graphs).
"""

import numpy as np
import tensorflow as tf

from qat_rewrite.quant.fake_quant import add_to_update_ops, new_variable

ALL_ZERO_POS = 127
CANDIDATES = 5  # method 1/2 try pos_0 + 0 .. 4
HALF_AWAY = "half_away_from_zero"  # weights, biases
HALF_UP = "half_up"  # activations (DPU round)


def _bounds(bits):
  return -2.0 ** (bits - 1), 2.0 ** (bits - 1) - 1.0


def _check_bits(bits):
  if isinstance(bits, bool) or not isinstance(bits, int) or not 1 <= bits <= 16:
    raise ValueError("bits must be an integer in 1..16, got %r" % (bits,))


# NumPy ---------------------------------------------------------------------------------------

def quantize(x, bits, pos, rounding=HALF_AWAY):
  """x on the (bits, pos) grid, as float32."""
  _check_bits(bits)
  lo, hi = _bounds(bits)
  scaled = np.asarray(x, np.float64) * 2.0 ** pos
  if rounding == HALF_UP:
    q = np.floor(scaled + 0.5)
  else:
    q = np.sign(scaled) * np.floor(np.abs(scaled) + 0.5)
  return (np.clip(q, lo, hi) * 2.0 ** -pos).astype(np.float32)


def non_overflow_pos(x, bits):
  """Method 0: the finest position at which min and max still fit."""
  _check_bits(bits)
  x = np.asarray(x, np.float64)
  if not np.all(np.isfinite(x)):
    raise ValueError("tensor holds NaN or Inf; no power-of-two position fits it")
  lo, hi = _bounds(bits)
  step = max(x.min() / (lo - 0.5), x.max() / (hi + 0.5), 0.0)
  return ALL_ZERO_POS if step == 0.0 else int(np.floor(np.log2(1.0 / step)))


def min_diffs_pos(x, bits, rounding=HALF_AWAY, relative=False):
  """Methods 1 and 2: the candidate position with the least error (relative for method 2)."""
  start = non_overflow_pos(x, bits)
  if start == ALL_ZERO_POS:
    return start
  x = np.asarray(x, np.float64)
  errors = [_error(x, quantize(x, bits, start + i, rounding), relative) for i in range(CANDIDATES)]
  return start + int(np.argmin(errors))  # argmin takes the first minimum: the smallest pos


def _error(x, q, relative):
  diff = np.abs(q - x)
  return np.sum(np.sqrt(diff / (np.abs(x) + 1e-9))) if relative else np.sum(diff * diff)


def choose_pos(x, bits, method, rounding=HALF_AWAY, depthwise=False):
  """The position of `x` by decent_q's `method` (0, 1 or 2)."""
  if method == 0:
    return non_overflow_pos(x, bits)
  if method in (1, 2):
    return min_diffs_pos(x, bits, rounding, relative=method == 2 and depthwise)
  raise ValueError("method must be 0, 1 or 2, got %r" % (method,))


def most_frequent_pos(positions):
  """The mode of positions seen over batches; ties go to the smallest (decent_q's histogram)."""
  values, counts = np.unique(np.asarray(positions, np.int64), return_counts=True)
  if not len(values):
    raise ValueError("no positions to choose from")
  return int(values[np.argmax(counts)])


# TensorFlow ----------------------------------------------------------------------------------

def fake_quantize(x, bits, pos, rounding=HALF_AWAY, name=None):
  """x on the (bits, pos) grid with an identity gradient; `pos` may be a scalar tensor."""
  _check_bits(bits)
  lo, hi = _bounds(bits)
  with tf.name_scope(name or "pow2_fake_quant"):
    scale = tf.pow(2.0, tf.cast(pos, tf.float32))
    scaled = x * scale
    if rounding == HALF_UP:
      q = tf.floor(scaled + 0.5)
    else:
      q = tf.sign(scaled) * tf.floor(tf.abs(scaled) + 0.5)
    quantized = tf.clip_by_value(q, lo, hi) / scale
    return x + tf.stop_gradient(quantized - x)


def non_overflow_pos_tf(x, bits):
  """Method 0 in the graph: an int32 scalar, ALL_ZERO_POS for an all-zero tensor."""
  _check_bits(bits)
  lo, hi = _bounds(bits)
  step = tf.maximum(tf.maximum(tf.reduce_min(x) / (lo - 0.5), tf.reduce_max(x) / (hi + 0.5)), 0.0)
  pos = tf.cast(tf.floor(-tf.math.log(step) / np.log(2.0)), tf.int32)
  return tf.where(step > 0.0, pos, ALL_ZERO_POS)


def choose_pos_tf(x, bits, method, rounding=HALF_AWAY, depthwise=False):
  """decent_q's `method` (0, 1 or 2) in the graph, for one batch: an int32 scalar."""
  start = non_overflow_pos_tf(x, bits)
  if method == 0:
    return start
  if method not in (1, 2):
    raise ValueError("method must be 0, 1 or 2, got %r" % (method,))
  relative = method == 2 and depthwise
  errors = []
  squared_errors = None if relative else _squared_errors(x, bits, rounding)
  for i in range(CANDIDATES):
    if relative:
      diff = tf.abs(fake_quantize(x, bits, start + i, rounding) - x)
      errors.append(tf.reduce_sum(tf.sqrt(diff / (tf.abs(x) + 1e-9))))
    else:
      errors.append(squared_errors(start + i))
  errors = tf.stack(errors)
  first_best = tf.reduce_min(tf.where(tf.equal(errors, tf.reduce_min(errors)))[:, 0])  # ties: smallest
  best = start + tf.cast(first_best, tf.int32)
  return tf.where(tf.equal(start, ALL_ZERO_POS), start, best)


def _squared_errors(x, bits, rounding):
  """pos -> Σ (q - x)² of `x` on the (bits, pos) grid, in under half the element-wise ops of
  quantizing it (a training step tries 5 positions for every tensor): measured in steps of the
  grid, (r - x·2^pos)², and scaled back by 2^-pos twice, which is the same float arithmetic (scaling by
  a power of two is exact), so the chosen position is the same. r rounds half to even (one op,
  tf.round): a tie is half a step off either way, so each squared error is the same as with the
  tensor's own rounding, in or out of the clamp. Rounding half away from zero works on |x| with
  its own bound (2^(bits-1) below zero, 2^(bits-1) - 1 above)."""
  lo, hi = _bounds(bits)
  if rounding == HALF_UP:
    def squared_steps_off(scale):
      scaled = x * scale
      return tf.math.squared_difference(tf.clip_by_value(tf.round(scaled), lo, hi), scaled)
  else:
    magnitude = tf.abs(x)
    bound = tf.where(x < 0.0, -lo, hi)
    def squared_steps_off(scale):
      scaled = magnitude * scale
      return tf.math.squared_difference(tf.minimum(tf.round(scaled), bound), scaled)

  def squared_error(pos):
    scale = tf.pow(2.0, tf.cast(pos, tf.float32))
    return tf.reduce_sum(squared_steps_off(scale)) / scale / scale  # scale² may overflow
  return squared_error


# Position state ------------------------------------------------------------------------------

MIN_TRACKED_POS = -64  # positions tracked in training: MIN_TRACKED_POS .. ALL_ZERO_POS


def tracked_position(x, bits, method, scope, training, rounding=HALF_AWAY, depthwise=False,
                     use_resource=None):
  """The position of `x`, held in graph state rather than side files (decent_q's temp/ dir).

  Training: each run picks the position on this batch (method 0/1/2) and counts it in
  `<scope>/pos_histogram`; the returned int32 scalar is this batch's position. Eval: the most
  frequent training position (ties: the smallest), so the eval and deploy position is stable and
  restores from the training checkpoint. `scope` is an absolute name scope ending in '/'.
  """
  size = ALL_ZERO_POS - MIN_TRACKED_POS + 1
  with tf.compat.v1.get_default_graph().name_scope(scope):
    histogram = new_variable("pos_histogram", [size], tf.int64, 0, scope.rstrip("/"),
                             use_resource)
    if not training:
      return tracked_pos(histogram)
    pos = tf.clip_by_value(choose_pos_tf(x, bits, method, rounding, depthwise),
                           MIN_TRACKED_POS, ALL_ZERO_POS)
    count = tf.compat.v1.scatter_add(histogram, [pos - MIN_TRACKED_POS], tf.ones([1], tf.int64))
    add_to_update_ops(count)
    with tf.control_dependencies([count]):
      return tf.identity(pos, name="batch_pos")


def fake_quantize_tracked(x, bits, method, scope, training, rounding=HALF_AWAY, depthwise=False,
                          use_resource=None):
  """`fake_quantize` at the `tracked_position` of `x`."""
  pos = tracked_position(x, bits, method, scope, training, rounding, depthwise, use_resource)
  with tf.compat.v1.get_default_graph().name_scope(scope):
    return fake_quantize(x, bits, pos, rounding, name="FixNeuron")


def tracked_pos(histogram):
  """The most frequent position in `histogram`; fails at run time if training never ran."""
  counts = tf.convert_to_tensor(histogram)
  # A raw Assert: the tf.debugging form wraps it in a functional cond, which frozen
  # GraphDefs would then need from their function library.
  trained = tf.raw_ops.Assert(
      condition=tf.reduce_sum(counts) > 0, data=[tf.constant(
          "no training position recorded for %s: restore a checkpoint of the rewritten training "
          "graph, trained by a train op that runs tf.GraphKeys.UPDATE_OPS (a loss built after "
          "the rewrite reads the float output, and only UPDATE_OPS updates its position)"
          % histogram.op.name)], name="assert_trained")
  with tf.control_dependencies([trained]):
    first_mode = tf.reduce_min(tf.where(tf.equal(counts, tf.reduce_max(counts)))[:, 0])
  return tf.cast(first_mode, tf.int32) + MIN_TRACKED_POS
