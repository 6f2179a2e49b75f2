"""requantize="xnnpack" / "tflite_builtin": the eval graph computes a quantized layer's output
integers as that TFLite runtime does. The runtime's formulas against hand-computed values, their
TF ops against the formulas, and whole layers against the interpreter, bit for bit."""

import os

import numpy as np
import pytest
import tensorflow as tf

from qat_rewrite import quantize
from qat_rewrite.export import compare_tflite, to_tflite
from qat_rewrite.passes import options
from qat_rewrite.quant import integer_elementwise as ie
from qat_rewrite.quant import integer_requantize as ir

v1 = tf.compat.v1
INT32_MIN, INT32_MAX = -2 ** 31, 2 ** 31 - 1


@pytest.mark.parametrize("real, expected", [
    (0.5, (2 ** 30, 0)),
    (0.75, (3 * 2 ** 29, 0)),
    (1.0, (2 ** 30, 1)),
    (3.0, (3 * 2 ** 29, 2)),
    (2.0 ** -10, (2 ** 30, -9)),
    (1.0 - 2.0 ** -40, (2 ** 30, 1)),  # the fraction rounds up to 2^31: carried into the shift
    (2.0 ** -40, (0, 0)),  # below 2^-32: zero
    (0.0, (0, 0)),
])
def test_quantize_multiplier_matches_hand_computed_values(real, expected):
  assert ir.quantize_multiplier(real) == expected


@pytest.mark.parametrize("a, b, expected", [
    (2 ** 30, 2 ** 30, 2 ** 29),  # 2^29 + 1/2 truncated after the nudge
    (5, 2 ** 30, 3),  # 2.5: the positive nudge rounds it up
    (-5, 2 ** 30, -2),  # -2.5: the negative nudge and truncation towards zero give -2
    (-7, 2 ** 30, -3),  # -3.5 -> -3
    (100, 3 * 2 ** 29, 75),
    (INT32_MIN, INT32_MIN, INT32_MAX),  # the one overflow saturates
])
def test_saturating_rounding_doubling_high_mul_matches_hand_computed_values(a, b, expected):
  assert int(ir.saturating_rounding_doubling_high_mul(a, b)) == expected


@pytest.mark.parametrize("x, exponent, expected", [
    (5, 1, 3), (-5, 1, -3),  # halves away from zero
    (4, 1, 2), (-3, 2, -1), (6, 2, 2), (-6, 2, -2), (7, 0, 7), (-1, 3, 0),
])
def test_rounding_divide_by_pot_matches_hand_computed_values(x, exponent, expected):
  assert int(ir.rounding_divide_by_pot(x, exponent)) == expected


def test_the_builtin_multiplier_rounds_twice():
  """-8959 · 0.0025114217 = -22.49983 (an inception_v1 logit): SRDHM rounds it to -22.5 (on a
  1/256 grid); the reference RoundingDivideByPOT then rounds away from zero, to -23, and the
  x86 kernels' rounding shift up, to -22 (what the interpreter gave)."""
  multiplier, shift = ir.quantize_multiplier(0.002511421652501858)
  assert (multiplier, shift) == (1380668655, -8)
  assert int(ir.saturating_rounding_doubling_high_mul(-8959, multiplier)) == -5760
  assert int(ir.multiply_by_quantized_multiplier(-8959, multiplier, shift)) == -23
  assert int(ir.multiply_by_quantized_multiplier(-8959, multiplier, shift, half_up=True)) == -22
  assert int(ir.multiply_by_quantized_multiplier(1148988, 1439150002, -15, half_up=True)) == 23
  assert list(ir.rounding_right_shift([5, -5, -6, 7], 1)) == [3, -2, -3, 4]


def test_xnnpack_rounds_half_to_even():
  assert list(ir.xnnpack_requantize([5, 7, -5, -7, 6], 0.5)) == [2, 4, -2, -4, 3]


def test_the_tf_ops_compute_the_formulas():
  rng = np.random.RandomState(0)
  reals = np.concatenate([np.exp(rng.uniform(np.log(1e-6), np.log(4.0), 200)),
                          [0.5, 1.0, 1.0 - 2.0 ** -40, 2.0 ** -40]])
  accs = rng.randint(-2 ** 24, 2 ** 24, size=reals.shape).astype(np.int64)
  with tf.Graph().as_default(), v1.Session() as sess:
    multiplier, shift = ir.tf_quantize_multiplier(tf.constant(reals, tf.float64))
    scaled, scaled_up = (ir.tf_multiply_by_quantized_multiplier(
        tf.constant(accs), multiplier, shift, half_up=up) for up in (False, True))
    got_m, got_s, got, got_up = sess.run([multiplier, shift, scaled, scaled_up])
  want = [ir.quantize_multiplier(r) for r in reals]
  assert list(got_m) == [m for m, _ in want] and list(got_s) == [s for _, s in want]
  assert list(got) == [int(ir.multiply_by_quantized_multiplier(a, m, s))
                       for a, (m, s) in zip(accs, want)]
  assert list(got_up) == [int(ir.multiply_by_quantized_multiplier(a, m, s, half_up=True))
                          for a, (m, s) in zip(accs, want)]


def test_the_add_formulas_match_hand_computed_values():
  # Equal scales: a + b exactly, whatever the rounding.
  assert list(ie.tflite_builtin_add([3, -4], [5, -6], 0.1, 0.1, 0.1)) == [8, -10]
  assert list(ie.xnnpack_add([3, -4], [5, -6], 0.1, 0.1, 0.1)) == [8, -10]
  # Output scale twice the inputs': (3 + 2) / 2 = 2.5 -> 3 (builtin, half away from zero) and
  # 3 (XNNPACK, half up); -2.5 -> -3 and -2.
  assert list(ie.tflite_builtin_add([3, -3], [2, -2], 0.1, 0.1, 0.2)) == [3, -3]
  assert list(ie.xnnpack_add([3, -3], [2, -2], 0.1, 0.1, 0.2)) == [3, -2]


def test_the_mul_formulas_match_hand_computed_values():
  # 7·5 = 35 at s_a·s_b/s_out = 0.1: 3.5 -> 4 (builtin, away from zero) and 4 (XNNPACK, half to
  # even); -3.5 -> -4 and -4; 2.5 -> 3 and 2.
  assert list(ie.tflite_builtin_mul([7, -7, 5], [5, 5, 5], 0.5, 0.2, 1.0)) == [4, -4, 3]
  assert list(ie.xnnpack_mul([7, -7, 5], [5, 5, 5], 0.5, 0.2, 1.0)) == [4, -4, 2]


def test_the_mean_formulas_match_hand_computed_values():
  # Two channels over a 2x2 map at equal scales: the means of [1, 3, -1, -3] and [2, 4, -2, -3]
  # are 0 and 0.25. The builtin kernel rounds 0.25 twice (SaturatingRoundingDoublingHighMul to
  # 0.5, then the shift away from zero) to 1.
  x = np.array([1, 2, 3, 4, -1, -2, -3, -3], np.int64).reshape(1, 2, 2, 2)
  assert ie.xnnpack_mean(x, 0.1, 0.1, keep_dims=False).tolist() == [[0, 0]]
  assert ie.tflite_builtin_mean(x, 0, 0.1, 0.1, keep_dims=False).tolist() == [[0, 1]]
  # Sums 6 and -6 over 4 (1.5 and -1.5): XNNPACK rounds both away from zero; the builtin keep_dims
  # path shifts a channel outside its 16-wide vector loop away from zero too.
  y = np.array([1, -1, 2, -2, 1, -1, 2, -2], np.int64).reshape(1, 2, 2, 2)
  assert ie.xnnpack_mean(y, 0.1, 0.1, keep_dims=True).ravel().tolist() == [2, -2]
  assert ie.tflite_builtin_mean(y, 0, 0.1, 0.1, keep_dims=True).ravel().tolist() == [2, -2]
  # The same in 16 channels: the vector loop's shift rounds halves up, -1.5 -> -1.
  wide = np.tile(y, (1, 1, 1, 8))
  assert ie.tflite_builtin_mean(wide, 0, 0.1, 0.1, keep_dims=True).ravel().tolist()[:2] == [2, -1]


def test_the_relu_formula_rounds_twice_below_a_half():
  # s_in/s_out = 0.25: 1 -> 0.25 -> 1 (SaturatingRoundingDoublingHighMul gives 0.5, the shift
  # rounds it away from zero), 2 -> 0.5 -> 1, -2 -> -1, 4 -> 1.
  assert ie.tflite_relu([1, 2, -2, 4], 0.1, 0.4).tolist() == [1, 1, -1, 1]


def test_a_constant_operand_gets_the_converters_grid():
  assert ie.constant_scale(3.0) == pytest.approx(3.0 / 255)
  assert ie.constant_scale(-1.0) == pytest.approx(1.0 / 255)
  assert ie.constant_scale([-1.0, 2.0]) == pytest.approx(3.0 / 255)
  assert ie.constant_scale(0.0) is None


def test_a_sigmoid_saturates_at_the_last_step_of_logistics_grid():
  """LOGISTIC writes int8 with zero point -128: 255/256 at most, where sigmoid(6.5) = 0.9985
  would round to 256/256 (4% of an EfficientNetV2 squeeze-excite's gates)."""
  with tf.Graph().as_default(), v1.Session() as sess:
    x = tf.constant([0.0, 5.0, 6.5, 20.0])
    steps = sess.run(ie.sigmoid_of_integers(x, tf.constant(0.5, tf.float64)) * 256.0)
  np.testing.assert_array_equal(steps, [128, 254, 255, 255])


def test_a_training_graph_or_an_unknown_mode_is_refused():
  with tf.Graph().as_default() as graph:
    images = v1.placeholder(tf.float32, [None, 8, 8, 3], name="images")
    v1.layers.conv2d(images, 4, 3, name="conv")
    before = len(graph.get_operations())
    with pytest.raises(ValueError, match="eval graphs only"):
      options.RewriteOptions(training=True, requantize="xnnpack")
    with pytest.raises(ValueError, match="requantize must be one of"):
      quantize.experimental_create_eval_graph(graph, requantize="fp32")
    assert len(graph.get_operations()) == before


OPTIONS = dict(symmetric=True, per_channel_weights=True, quantize_inputs=True)


def _train(directory, build, images, steps=20):
  with tf.Graph().as_default() as graph:
    v1.set_random_seed(0)
    out = build(True)
    quantize.experimental_create_training_graph(graph, **OPTIONS)
    with v1.Session() as sess:
      sess.run(v1.global_variables_initializer())
      for _ in range(steps):
        sess.run([out, v1.get_collection(v1.GraphKeys.UPDATE_OPS)], {"images:0": images})
      return v1.train.Saver().save(sess, os.path.join(directory, "model.ckpt"))


def _eval_graph(build, mode):
  with tf.Graph().as_default() as graph:
    build(False)
    report = quantize.experimental_create_eval_graph(graph, requantize=mode, **OPTIONS)
  return graph, report


def _conv_block(training, residual=True):
  """conv+BN+ReLU6 (a tensor of 4x32x32x24 outputs), depthwise+BN+ReLU, then (`residual`) a
  1x1 conv with a residual add and ReLU: every output of the last is compared."""
  images = v1.placeholder(tf.float32, [None, 32, 32, 3], name="images")
  init = v1.glorot_uniform_initializer(seed=1)
  x = v1.layers.conv2d(images, 24, 3, padding="same", use_bias=False, kernel_initializer=init,
                       name="conv")
  x = tf.nn.relu6(v1.layers.batch_normalization(x, training=training, fused=True, name="bn"))
  with v1.variable_scope("dw"):
    kernel = v1.get_variable("depthwise_kernel", [3, 3, 24, 1], initializer=init)
  y = tf.nn.depthwise_conv2d(x, kernel, [1, 1, 1, 1], "SAME")
  y = v1.layers.batch_normalization(y, training=training, fused=True, name="dw_bn")
  if not residual:
    return tf.nn.relu(y, name="out")
  y = tf.nn.relu(y)
  z = v1.layers.conv2d(y, 24, 1, kernel_initializer=init, name="pw")
  return tf.nn.relu(z + y, name="out")


def _two_layers(training):
  return _conv_block(training, residual=False)


def _nested_concats(training):
  """Inception-v3's Mixed_7b: a branch's 1x3 and 3x1 convs concatenated, inside the block's
  concat; TFLite requantizes every branch conv straight onto the outer concat's grid."""
  images = v1.placeholder(tf.float32, [None, 32, 32, 3], name="images")
  init = v1.glorot_uniform_initializer(seed=2)

  def conv(x, filters, kernel, name):
    return v1.layers.conv2d(x, filters, kernel, padding="same", activation=tf.nn.relu,
                            kernel_initializer=init, name=name)
  stem = conv(images, 16, 3, "stem")
  branch = tf.concat([conv(stem, 8, (1, 3), "b_1x3"), conv(stem, 8, (3, 1), "b_3x1")], 3)
  block = tf.concat([conv(stem, 8, 1, "a_1x1"), branch], 3)
  return tf.identity(v1.layers.conv2d(block, 16, 1, kernel_initializer=init, name="last"),
                     name="out")


def _hard_swish(x):
  return x * (tf.nn.relu6(x + 3.0) * (1.0 / 6.0))


def _mobilenet_v3_block(training):
  """MobileNetV3's patterns as tf_keras writes them: Rescaling (x·c + d), conv+BN and
  depthwise+BN with hard-swish, a squeeze-excite (a spatial mean kept 4-D, 1x1 convs, a hard
  sigmoid, a broadcast multiply), then a 1x1 conv: every output of the last is compared."""
  images = v1.placeholder(tf.float32, [None, 32, 32, 3], name="images")
  init = v1.glorot_uniform_initializer(seed=3)
  x = images * (1.0 / 127.5) + (-1.0)
  x = v1.layers.conv2d(x, 16, 3, padding="same", use_bias=False, kernel_initializer=init,
                       name="conv")
  x = _hard_swish(v1.layers.batch_normalization(x, training=training, fused=True, name="bn"))
  with v1.variable_scope("dw"):
    kernel = v1.get_variable("depthwise_kernel", [3, 3, 16, 1], initializer=init)
  y = tf.nn.depthwise_conv2d(x, kernel, [1, 1, 1, 1], "SAME")
  y = _hard_swish(v1.layers.batch_normalization(y, training=training, fused=True,
                                                name="dw_bn"))
  se = tf.reduce_mean(y, [1, 2], keepdims=True)
  se = v1.layers.conv2d(se, 8, 1, activation=tf.nn.relu, kernel_initializer=init, name="se_1")
  se = v1.layers.conv2d(se, 16, 1, kernel_initializer=init, name="se_2")
  y = y * (tf.nn.relu6(se + 3.0) * (1.0 / 6.0))
  return tf.identity(v1.layers.conv2d(y, 16, 1, kernel_initializer=init, name="last"),
                     name="out")


def _pooled_head(training):
  """A global average pool (a mean over an 8x8 map, not kept 4-D) summed with a branch through
  a mean over a 1x1 map (an identity the converter drops), into a dense layer."""
  del training
  images = v1.placeholder(tf.float32, [None, 32, 32, 3], name="images")
  init = v1.glorot_uniform_initializer(seed=4)
  x = v1.layers.conv2d(images, 16, 4, strides=4, activation=tf.nn.relu, kernel_initializer=init,
                       name="stem")
  pooled = tf.reduce_mean(x, [1, 2])
  m = v1.layers.conv2d(x, 16, 8, activation=tf.nn.relu, kernel_initializer=init, name="to_1x1")
  se = tf.reduce_mean(m, [1, 2], keepdims=True)
  se = v1.layers.conv2d(se, 16, 1, kernel_initializer=init, name="se")
  summed = pooled + tf.reshape(se, [-1, 16])
  return tf.identity(v1.layers.dense(summed, 64, kernel_initializer=init, name="dense"),
                     name="out")


def _swish_block(training):
  """Keras' swish x·sigmoid(beta·x) with beta 1: the converter drops beta·x and its quantizer,
  and LOGISTIC writes on a fixed grid; then a 1x1 conv."""
  images = v1.placeholder(tf.float32, [None, 32, 32, 3], name="images")
  init = v1.glorot_uniform_initializer(seed=5)
  x = v1.layers.conv2d(images, 16, 3, padding="same", use_bias=False, kernel_initializer=init,
                       name="conv")
  x = v1.layers.batch_normalization(x, training=training, fused=True, name="bn")
  x = x * tf.sigmoid(tf.multiply(tf.constant(1.0), x, name="beta_x"))
  return tf.identity(v1.layers.conv2d(x, 16, 1, kernel_initializer=init, name="last"),
                     name="out")


def _sum_read_twice(training):
  """Xception's residual sum, read by a ReLU and by the next shortcut conv: the sum and the ReLU
  get quantizers of their own, and TFLite's RELU requantizes from one grid to the other."""
  del training
  images = v1.placeholder(tf.float32, [None, 32, 32, 3], name="images")
  init = v1.glorot_uniform_initializer(seed=6)

  def conv(x, name, activation=None):
    return v1.layers.conv2d(x, 16, 3, padding="same", activation=activation,
                            kernel_initializer=init, name=name)
  stem = conv(images, "stem", tf.nn.relu)
  total = stem + conv(stem, "branch")
  out = conv(tf.nn.relu(total), "after_relu") + conv(total, "shortcut")
  return tf.identity(out, name="out")


def _normalized_input(training):
  """EfficientNetV2's and ConvNeXt's preprocessing as tf_keras writes it: a Normalization layer
  with constant ImageNet statistics, (x - mean) / maximum(sqrt(variance), epsilon), then two
  convs. TFLite runs it as a SUB and a MUL by the reciprocal."""
  del training
  import tf_keras  # pylint: disable=import-outside-toplevel
  images = v1.placeholder(tf.float32, [None, 32, 32, 3], name="images")
  init = v1.glorot_uniform_initializer(seed=7)
  x = tf_keras.layers.Normalization(mean=[0.485, 0.456, 0.406],
                                    variance=[0.229 ** 2, 0.224 ** 2, 0.225 ** 2])(images)
  x = v1.layers.conv2d(x, 16, 3, padding="same", activation=tf.nn.relu, kernel_initializer=init,
                       name="stem")
  return tf.identity(v1.layers.conv2d(x, 16, 1, kernel_initializer=init, name="last"),
                     name="out")


def _widened(build, directory, checkpoint, prefix, factor):
  """A copy of `checkpoint` with the range of the quantizers under `prefix` widened `factor`
  times (training may leave an identity's range apart from its input's, as in EfficientNet)."""
  with tf.Graph().as_default() as graph:
    build(True)
    quantize.experimental_create_training_graph(graph, **OPTIONS)
    with v1.Session() as sess:
      saver = v1.train.Saver()
      saver.restore(sess, checkpoint)
      for variable in v1.global_variables():
        if variable.op.name.startswith(prefix) and variable.op.name.endswith(("/min", "/max")):
          sess.run(variable.assign(variable * factor))
      return saver.save(sess, os.path.join(directory, "widened.ckpt"))


IMAGES = np.random.RandomState(0).uniform(0, 1, (4, 32, 32, 3)).astype(np.float32)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
  """{build function: (directory, checkpoint)} after 20 range updates."""
  result = {}
  for build in (_conv_block, _two_layers, _nested_concats, _mobilenet_v3_block, _pooled_head,
                _swish_block, _sum_read_twice, _normalized_input):
    directory = str(tmp_path_factory.mktemp(build.__name__.strip("_")))
    result[build] = directory, _train(directory, build, IMAGES)
  return result


def _agreements(build, directory, checkpoint):
  """({mode: Agreement with its runtime}, {runtime: Agreement with the float eval graph}), and
  checks that every eval graph exports the same model."""
  exports, graphs = {}, {}
  for mode in ("float", "xnnpack", "tflite_builtin"):
    graphs[mode], report = _eval_graph(build, mode)
    if mode != "float":
      assert not any(layer.notes for layer in report.layers), report
    exports[mode] = to_tflite(graphs[mode], os.path.join(directory, mode + ".tflite"),
                              ["images"], ["out"], checkpoint=checkpoint)
  contents = {mode: open(e.path, "rb").read() for mode, e in exports.items()}
  assert contents["xnnpack"] == contents["float"] == contents["tflite_builtin"]
  exported, emulated, plain = exports["float"], {}, {}
  for mode, delegates in (("xnnpack", True), ("tflite_builtin", False)):
    (emulated[mode],) = compare_tflite(exported, {"images": IMAGES}, delegates=delegates,
                                       reference=graphs[mode], checkpoint=checkpoint).values()
    (plain[mode],) = compare_tflite(exported, {"images": IMAGES}, delegates=delegates).values()
  return emulated, plain


def _assert_bit_exact(emulated, elements):
  """Every one of `elements` output integers equals its runtime's emulating eval graph's."""
  for mode, agreement in emulated.items():
    assert agreement.elements == elements
    assert agreement.equal_share == 1.0, (mode, agreement)


def test_conv_and_depthwise_layers_agree_bit_for_bit_with_both_runtimes(trained):
  """Every output integer of conv+ReLU6 -> depthwise+ReLU equals the eval graph's, with the eval
  graph of its runtime; the float eval graph misses some (float32 sums near a tie, the builtin
  kernels' double rounding). Every eval graph exports the same model."""
  emulated, plain = _agreements(_two_layers, *trained[_two_layers])
  _assert_bit_exact(emulated, 4 * 32 * 32 * 24)
  assert plain["tflite_builtin"].equal_share < 1.0, plain


def test_a_residual_block_agrees_bit_for_bit_with_both_runtimes(trained):
  """A 1x1 conv without activation (its negative outputs show the builtin kernels' rounding
  shift: halves up) and a residual ADD with ReLU after them."""
  emulated, plain = _agreements(_conv_block, *trained[_conv_block])
  _assert_bit_exact(emulated, 4 * 32 * 32 * 24)
  assert plain["tflite_builtin"].equal_share < 1.0, plain


def test_the_other_runtimes_eval_graph_is_compared_with_a_warning(trained, caplog):
  directory, checkpoint = trained[_two_layers]
  graph, _ = _eval_graph(_two_layers, "xnnpack")
  exported = to_tflite(graph, os.path.join(directory, "warn.tflite"), ["images"], ["out"],
                       checkpoint=checkpoint)
  compare_tflite(exported, {"images": IMAGES}, delegates=False)
  assert "requantize='tflite_builtin'" in caplog.text


def test_branches_of_nested_concats_agree_bit_for_bit_with_both_runtimes(trained):
  emulated, _ = _agreements(_nested_concats, *trained[_nested_concats])
  _assert_bit_exact(emulated, 4 * 32 * 32 * 16)


def test_hard_swish_and_squeeze_excite_agree_bit_for_bit_with_both_runtimes(trained):
  """The multiplies (by a constant, and two tensors broadcast), the adds of a constant with a
  fused ReLU6 and the spatial mean compute each runtime's integer MUL, ADD and MEAN; the
  float eval graph misses some."""
  emulated, plain = _agreements(_mobilenet_v3_block, *trained[_mobilenet_v3_block])
  _assert_bit_exact(emulated, 4 * 32 * 32 * 16)
  assert min(a.equal_share for a in plain.values()) < 1.0, plain


def test_a_global_pool_and_a_1x1_mean_agree_bit_for_bit_with_both_runtimes(trained):
  emulated, _ = _agreements(_pooled_head, *trained[_pooled_head])
  _assert_bit_exact(emulated, 4 * 64)


def test_a_quantizer_the_converter_drops_with_its_identity_is_skipped(trained):
  """beta·x with beta 1 gets a quantizer of its own; the converter drops both, so LOGISTIC reads
  x's integers. With that quantizer's range set 1.5 times wider than x's, the emulating graphs
  still agree bit for bit, and the float32 eval graph, which applies it, does not."""
  directory, checkpoint = trained[_swish_block]
  _, report = _eval_graph(_swish_block, "float")
  assert "beta_x/activation_Mul_quant" in report.other_quantizers
  widened = _widened(_swish_block, directory, checkpoint, "beta_x/activation_Mul_quant", 1.5)
  emulated, plain = _agreements(_swish_block, directory, widened)
  _assert_bit_exact(emulated, 4 * 32 * 32 * 16)
  assert max(a.equal_share for a in plain.values()) < 0.99, plain


def test_a_relu_between_two_quantizers_agrees_bit_for_bit_with_both_runtimes(trained):
  """With the ReLU's range 6 times its trained width (a multiplier s_in/s_out below 1/2, which
  the builtin kernels round twice), an eval graph without the RELU rule misses 58% of the
  outputs; with it both runtimes agree bit for bit."""
  directory, checkpoint = trained[_sum_read_twice]
  widened = _widened(_sum_read_twice, directory, checkpoint, "after_relu/input_quant", 6.0)
  emulated, plain = _agreements(_sum_read_twice, directory, widened)
  _assert_bit_exact(emulated, 4 * 32 * 32 * 16)
  assert min(a.equal_share for a in plain.values()) < 1.0, plain


def test_a_normalized_input_runs_in_int8_and_agrees_bit_for_bit_with_both_runtimes(trained):
  """The input quantizer reads the images, the Sub and the RealDiv get ranges of their own, and
  each runtime's SUB and MUL (by the divisor's float32 reciprocal, on the converter's grid for
  a constant) are emulated: the stem's input ran in float before (NotFullyIntegerError on
  EfficientNetV2B0, with input_ranges given)."""
  graph, _ = _eval_graph(_normalized_input, "float")
  (reader,) = graph.get_operation_by_name("images").outputs[0].consumers()
  assert reader.name == "stem/input_quant/FakeQuantWithMinMaxVars"
  quantized = {op.type for op in graph.get_operations()
               if op.type in ("Sub", "RealDiv")
               and [c.type for c in op.outputs[0].consumers()] == ["FakeQuantWithMinMaxVars"]}
  assert quantized == {"Sub", "RealDiv"}
  emulated, plain = _agreements(_normalized_input, *trained[_normalized_input])
  _assert_bit_exact(emulated, 4 * 32 * 32 * 16)
