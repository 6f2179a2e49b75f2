"""Power-of-two (DPU) numerics: grid, rounding, positions by method 0/1/2, TF = NumPy."""

import numpy as np
import pytest
import tensorflow as tf

from qat_rewrite.quant import pow2


def test_grid_is_clamped_to_the_signed_range():
  x = np.array([-3.0, -1.0, 0.3, 0.99, 2.0])
  # 8 bits at pos 6: step 1/64, integers in [-128, 127].
  np.testing.assert_array_equal(pow2.quantize(x, 8, 6) * 64, [-128, -64, 19, 63, 127])


def test_weights_round_halves_away_from_zero_and_activations_round_half_up():
  x = np.array([-2.5, -1.5, -0.5, 0.5, 1.5, 2.5]) / 4.0  # exact halves at pos 2
  np.testing.assert_array_equal(pow2.quantize(x, 8, 2, pow2.HALF_AWAY) * 4, [-3, -2, -1, 1, 2, 3])
  np.testing.assert_array_equal(pow2.quantize(x, 8, 2, pow2.HALF_UP) * 4, [-2, -1, 0, 1, 2, 3])


def test_non_overflow_position_matches_decent_q():
  assert pow2.non_overflow_pos(np.ones(4), 8) == 6  # step 1/127.5: decent_q's input/aquant = 6
  assert pow2.non_overflow_pos(np.array([-1.0, 0.2]), 8) == 7  # -128·2^-7 = -1 fits
  assert pow2.non_overflow_pos(np.array([0.0, 40.0]), 8) == 1  # coarse steps for big values
  assert pow2.non_overflow_pos(np.array([0.0, 300.0]), 8) == -2  # negative positions exist
  assert pow2.non_overflow_pos(np.zeros(3), 8) == pow2.ALL_ZERO_POS


def test_nan_or_inf_is_an_error_not_an_absurd_position():
  with pytest.raises(ValueError, match="NaN or Inf"):
    pow2.non_overflow_pos(np.array([1.0, np.nan]), 8)


def test_min_diffs_trades_saturation_for_resolution():
  rng = np.random.RandomState(0)
  x = np.concatenate([rng.normal(0, 0.05, 1000), [1.0]])  # one outlier sets method 0's range
  start = pow2.non_overflow_pos(x, 8)
  best = pow2.min_diffs_pos(x, 8)
  assert start == 6 and start < best <= start + 4
  errors = {p: np.sum((pow2.quantize(x, 8, p) - x) ** 2) for p in range(start, start + 5)}
  assert best == min(errors, key=errors.get)


def test_method_2_uses_the_relative_error_for_depthwise_weights_only():
  rng = np.random.RandomState(1)
  x = np.concatenate([rng.normal(0, 0.01, 200), rng.normal(0, 0.5, 20)])
  relative = pow2.choose_pos(x, 8, 2, depthwise=True)
  errors = {p: np.sum(np.sqrt(np.abs(pow2.quantize(x, 8, p) - x) / (np.abs(x) + 1e-9)))
            for p in range(pow2.non_overflow_pos(x, 8), pow2.non_overflow_pos(x, 8) + 5)}
  assert relative == min(errors, key=errors.get)
  assert pow2.choose_pos(x, 8, 2, depthwise=False) == pow2.choose_pos(x, 8, 1)


def test_most_frequent_position_prefers_the_smallest_on_ties():
  assert pow2.most_frequent_pos([5, 6, 6, 5, 7]) == 5
  assert pow2.most_frequent_pos([7, 6, 7]) == 7


@pytest.mark.parametrize("bits", [0, 17, 8.0, True])
def test_bits_out_of_range_are_refused(bits):
  with pytest.raises(ValueError, match="bits"):
    pow2.quantize(np.ones(2), bits, 0)


@pytest.mark.parametrize("method", [0, 1, 2])
@pytest.mark.parametrize("rounding", [pow2.HALF_AWAY, pow2.HALF_UP])
def test_graph_ops_agree_with_numpy(method, rounding):
  rng = np.random.RandomState(method)
  values = (rng.standard_t(3, size=(4, 6, 6, 3)) * 0.3).astype(np.float32)
  with tf.Graph().as_default():
    x = tf.compat.v1.placeholder(tf.float32, values.shape)
    pos = pow2.choose_pos_tf(x, 8, method, rounding, depthwise=True)
    y = pow2.fake_quantize(x, 8, pos, rounding)
    grad = tf.gradients(tf.reduce_sum(y * 3.0), x)[0]
    with tf.compat.v1.Session() as sess:
      pos_tf, y_tf, grad_tf = sess.run([pos, y, grad], {x: values})
      zero_pos = sess.run(pow2.choose_pos_tf(x, 8, method), {x: np.zeros_like(values)})
  expected = pow2.choose_pos(values, 8, method, rounding, depthwise=True)
  assert pos_tf == expected
  np.testing.assert_array_equal(y_tf, pow2.quantize(values, 8, expected, rounding))
  np.testing.assert_array_equal(grad_tf, np.full_like(values, 3.0))  # straight-through
  assert zero_pos == pow2.ALL_ZERO_POS


@pytest.mark.parametrize("rounding", [pow2.HALF_AWAY, pow2.HALF_UP])
def test_the_search_measures_half_step_ties_as_each_rounding_does(rounding):
  """Values exactly halfway between grid points of each candidate position, and just past
  the clamp, where rounding half to even and the tensor's own rounding part: the squared error
  of each position, and so the position, is numpy's."""
  for seed in range(20):
    rng = np.random.RandomState(seed)
    start = 4
    ties = [(rng.randint(-120, 120) + 0.5) * 2.0 ** -(start + i) for i in range(5)
            for _ in range(rng.randint(0, 4))]
    clamped = [(127.5 + k) * 2.0 ** -(start + i) * sign for i in range(1, 5)
               for k in range(2) for sign in (1, -1)]
    values = np.array(ties + clamped[:rng.randint(0, 4)] + [127.0 * 2.0 ** -start],
                      np.float32)
    with tf.Graph().as_default():
      x = tf.compat.v1.placeholder(tf.float32, values.shape)
      with tf.compat.v1.Session() as sess:
        pos = sess.run(pow2.choose_pos_tf(x, 8, 1, rounding), {x: values})
    assert pos == pow2.choose_pos(values, 8, 1, rounding), (seed, values)


def test_training_positions_are_counted_and_eval_uses_the_most_frequent(tmp_path):
  batches = [np.full(4, v, np.float32) for v in (1.0, 1.0, 0.2, 1.0, 0.2)]  # pos 6, 6, 9, 6, 9
  with tf.Graph().as_default():
    x = tf.compat.v1.placeholder(tf.float32, [4])
    y = pow2.fake_quantize_tracked(x, 8, 0, "layer/aquant/", training=True)
    with tf.compat.v1.Session() as sess:
      sess.run(tf.compat.v1.global_variables_initializer())
      outputs = [sess.run(y, {x: b}) for b in batches]
      tf.compat.v1.train.Saver().save(sess, str(tmp_path / "train"))
  np.testing.assert_array_equal(outputs[2], pow2.quantize(batches[2], 8, 9))  # this batch's pos
  with tf.Graph().as_default() as graph:
    x = tf.compat.v1.placeholder(tf.float32, [4])
    y = pow2.fake_quantize_tracked(x, 8, 0, "layer/aquant/", training=False)
    with tf.compat.v1.Session() as sess:
      with pytest.raises(tf.errors.InvalidArgumentError, match="no training position recorded"):
        sess.run(tf.compat.v1.global_variables_initializer())
        sess.run(y, {x: batches[2]})
      tf.compat.v1.train.Saver().restore(sess, str(tmp_path / "train"))
      out = sess.run(y, {x: batches[2]})
  np.testing.assert_array_equal(out, pow2.quantize(batches[2], 8, 6))  # the mode: pos 6
  assert not [op for op in graph.get_operations() if "Scatter" in op.type]  # eval: read-only
