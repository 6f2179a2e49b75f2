"""DPU arithmetic constraints (decent_q research §2.6-2.7), on crafted positions."""

import pytest
import tensorflow as tf

from qat_rewrite.layers import kind_of
from qat_rewrite.targets.dpu import arithmetic as dpu


@pytest.mark.parametrize("pi, pw, po, expected_pw", [
    (5, 6, 4, 6),     # shift_cut 7: fine
    (2, 1, 6, 4),     # shift_cut -3 < 0: pw moves to po - pi
    (8, 14, 2, 10),   # shift_cut 20 > 16: pw moves to 16 + po - pi
    (0, 16, 0, 16),   # the edges are allowed
    (3, 0, 3, 0),
])
def test_shift_cut_moves_the_weight_position_into_0_16(pi, pw, po, expected_pw):
  assert dpu.adjust_shift_cut(pi, pw, po) == expected_pw
  assert 0 <= expected_pw + pi - po <= dpu.MAX_SHIFT


def test_shift_bias_worked_example_from_a_compiler_error():
  # Vitis AI issue #1201: i 5, w 6, b 21, o 4 -> shift_cut 7, min -9, shift_bias -10: out of range.
  assert dpu.shift_bias_min(7) == -9
  assert dpu.adjust_shift_bias(pi=5, pw=6, pb=21, po=4) == 20  # shift_bias becomes -9
  assert dpu.adjust_shift_bias(pi=5, pw=6, pb=12, po=4) == 12  # -1 is within [-9, 16]
  assert dpu.adjust_shift_bias(pi=9, pw=12, pb=2, po=10) == 5  # 19 > 16: bias moves to 16


def test_dynamic_shift_bias_limit_uses_the_kernel_size():
  # 3x3x64 = 576 elements: ceil(log2) = 10 -> min(0, -(24 - 18)) = -6.
  assert dpu.shift_bias_min(7, mode=2, kernel_elements=3 * 3 * 64) == -6
  assert dpu.adjust_shift_bias(5, 6, 19, 4, mode=2, kernel_elements=576) == 17
  with pytest.raises(ValueError, match="kernel"):
    dpu.shift_bias_min(7, mode=2)
  with pytest.raises(ValueError, match="mode"):
    dpu.shift_bias_min(7, mode=3)


@pytest.mark.parametrize("kernel, factor", [
    ((3, 3), 9 * 7 / 64), ((5, 5), 25 * 10 / 256), ((6, 6), 36 * 7 / 256),
    ((7, 7), 49 * 21 / 1024), ((14, 14), 196 * 21 / 4096), ((2, 2), 1.0), ((4, 4), 1.0)])
def test_avgpool_scale_matches_decent_q_table(kernel, factor):
  assert dpu.avgpool_scale(*kernel) == pytest.approx(factor)


def test_other_avgpool_kernels_get_the_closest_shift_multiplier():
  k, n = dpu.avgpool_multiplier(3, 5)  # 1/15
  assert n < 11 and abs(k / 2 ** n - 1 / 15) <= min(
      abs(round(2 ** m / 15) / 2 ** m - 1 / 15) for m in range(11))
  assert dpu.avgpool_scale(3, 5, scale_all=False) == 1.0
  assert dpu.avgpool_scale(17, 17) == 1.0  # over 256 elements: left alone


def test_only_leaky_relu_0_1_becomes_26_over_256():
  assert dpu.leaky_relu_alpha(0.1) == 26 / 256
  assert dpu.leaky_relu_alpha(0.100001) == 26 / 256
  assert dpu.leaky_relu_alpha(0.2) == 0.2
  assert dpu.HARD_SIGMOID_FACTOR == pytest.approx(6 * 2731 / 16384)


@pytest.mark.parametrize("build, shape, expected", [
    (lambda x, w: tf.nn.conv2d(x, w, 1, "SAME"), [3, 3, 4, 8], 36),
    (lambda x, w: tf.nn.depthwise_conv2d(x, w, [1, 1, 1, 1], "SAME"), [3, 3, 4, 2], 9),
    (lambda x, w: tf.nn.conv2d_transpose(x, w, [2, 8, 8, 8], 1, "SAME"), [3, 3, 8, 4], 36),
    (lambda x, w: tf.matmul(tf.reshape(x, [2, -1])[:, :16], w), [16, 10], 16),
    (lambda x, w: tf.matmul(tf.reshape(x, [2, -1])[:, :16], w, transpose_b=True), [10, 16], 16),
], ids=["conv2d", "depthwise", "conv2d_transpose", "matmul", "matmul_transpose_b"])
def test_kernel_elements_count_the_products_one_output_sums(build, shape, expected):
  """adjust_shift_bias=2 reads h·w·c_in from the layer kind (`LayerKind.kernel_elements`)."""
  with tf.Graph().as_default():
    layer = build(tf.zeros([2, 8, 8, 4]), tf.zeros(shape)).op
    assert kind_of(layer).kernel_elements(layer, shape) == expected
    assert kind_of(layer).kernel_elements(layer, [None] * len(shape)) is None
