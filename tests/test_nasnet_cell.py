"""NASNet's normal cell, as tf_keras.applications.NASNetMobile builds it, at 16x16: the int8
model computes what the eval graph computes, on both TFLite runtimes.

Four things the cell does and the rewrite once got wrong (NASNetMobile agreed on 12% / 0% of
its logits): each branch opens with its own ReLU of the same tensor, which the converter merges
into one; a residual sum that only the cell's concat reads, which the converter writes on the
concat's grid; depthwise layers of 4 channels, whose builtin kernel rounds halves away from zero
on the channels past the last multiple of 8; and the adjust block's crop (a strided slice)
before a 1x1 average pool of stride 2, which hid the pool's input grid, so the next conv got an
input range of its own and the converter a requantization that XNNPACK rounds its own way.
"""

import os

import numpy as np
import pytest
import tensorflow as tf

from qat_rewrite import quantize
from qat_rewrite.export import compare_tflite, to_tflite

v1 = tf.compat.v1
OPTIONS = dict(symmetric=True, per_channel_weights=True, quantize_inputs=True)
IMAGES = np.random.RandomState(0).uniform(0, 1, (64, 16, 16, 3)).astype(np.float32)
FILTERS = 4


def _bn(x, training, name):
  return v1.layers.batch_normalization(x, training=training, fused=True, name=name)


def _separable_block(x, kernel, training, name):
  """NASNet's _separable_conv_block: ReLU, separable conv, BN, twice."""
  for i in (1, 2):
    x = v1.layers.separable_conv2d(tf.nn.relu(x), FILTERS, kernel, padding="same",
                                   use_bias=False, name="%s_%d" % (name, i))
    x = _bn(x, training, "%s_bn_%d" % (name, i))
  return x


def _normal_cell(ip, p, training, name):
  """NASNet's _normal_a_cell (the adjust block as a ReLU, 1x1 conv and BN)."""
  h = _bn(v1.layers.conv2d(tf.nn.relu(ip), FILTERS, 1, use_bias=False, name=name + "_h"),
          training, name + "_h_bn")
  p = _bn(v1.layers.conv2d(tf.nn.relu(p), FILTERS, 1, use_bias=False, name=name + "_p"),
          training, name + "_p_bn")
  x1 = _separable_block(h, 5, training, name + "_l1") + _separable_block(p, 3, training,
                                                                          name + "_r1")
  x2 = _separable_block(p, 5, training, name + "_l2") + _separable_block(p, 3, training,
                                                                          name + "_r2")
  x3 = tf.nn.avg_pool2d(h, 3, 1, "SAME") + p
  x4 = tf.nn.avg_pool2d(p, 3, 1, "SAME") + tf.nn.avg_pool2d(p, 3, 1, "SAME")
  x5 = _separable_block(h, 3, training, name + "_l5") + h
  return tf.concat([p, x1, x2, x3, x4, x5], -1, name=name + "_concat")


def adjust_block(training):
  """NASNet's _adjust_block when the previous cell's output is twice the size: two 1x1 stride-2
  average pools, the second after a one-pixel shift (pad, crop), each into a 1x1 conv; their
  concat batch-normed."""
  images = v1.placeholder(tf.float32, [None, 16, 16, 3], name="images")
  p = tf.nn.relu(_bn(v1.layers.conv2d(images, 8, 3, padding="same", use_bias=False,
                                      name="stem"), training, "stem_bn"))
  p = tf.nn.relu(p)
  p1 = v1.layers.conv2d(tf.nn.avg_pool2d(p, 1, 2, "VALID"), FILTERS, 1, use_bias=False,
                        name="adjust_conv_1")
  shifted = tf.pad(p, [[0, 0], [0, 1], [0, 1], [0, 0]])[:, 1:, 1:, :]
  p2 = v1.layers.conv2d(tf.nn.avg_pool2d(shifted, 1, 2, "VALID"), FILTERS, 1, use_bias=False,
                        name="adjust_conv_2")
  p = _bn(tf.concat([p1, p2], -1), training, "adjust_bn")
  x = tf.nn.relu(_bn(v1.layers.conv2d(p, 8, 3, padding="same", use_bias=False, name="after"),
                     training, "after_bn"))
  logits = v1.layers.dense(tf.reduce_mean(x, [1, 2]), 10, name="logits")
  return images, tf.identity(logits, name="net_out")


def nasnet_cells(training):
  images = v1.placeholder(tf.float32, [None, 16, 16, 3], name="images")
  stem = _bn(v1.layers.conv2d(images, 8, 3, padding="same", use_bias=False, name="stem"),
             training, "stem_bn")
  cell = _normal_cell(stem, stem, training, "cell0")
  cell = _normal_cell(cell, stem, training, "cell1")
  logits = v1.layers.dense(tf.reduce_mean(tf.nn.relu(cell), [1, 2]), 10, name="logits")
  return images, tf.identity(logits, name="net_out")


def _eval_graph(build, requantize):
  with tf.Graph().as_default() as graph:
    build(training=False)
    quantize.experimental_create_eval_graph(requantize=requantize, **OPTIONS)
  return graph


def _train(build, directory):
  with tf.Graph().as_default():
    v1.set_random_seed(0)
    _, out = build(training=True)
    quantize.experimental_create_training_graph(**OPTIONS)
    with tf.control_dependencies(v1.get_collection(v1.GraphKeys.UPDATE_OPS)):
      train_op = v1.train.AdamOptimizer(1e-3).minimize(tf.reduce_mean(tf.square(out - 1.0)))
    with v1.Session() as sess:
      sess.run(v1.global_variables_initializer())
      for step in range(30):
        sess.run(train_op, {"images:0": IMAGES[step % 4 * 16:step % 4 * 16 + 16]})
      return v1.train.Saver().save(sess, os.path.join(directory, "model.ckpt"))


def test_the_branches_read_one_relu_and_a_sum_only_the_concat_reads_has_no_range():
  graph = _eval_graph(nasnet_cells, "float")
  stem_readers = graph.get_operation_by_name("stem/act_quant/FakeQuantWithMinMaxVars")
  for name in ("cell0_h/Conv2D", "cell0_p/Conv2D"):  # ReLUs of the stem output, merged
    assert graph.get_operation_by_name(name).inputs[0].op is stem_readers, name
  concat = graph.get_operation_by_name("cell0_concat")
  for value in concat.inputs[1:-1]:  # the five branch sums: on the concat's grid only
    assert value.op.type == "AddV2", value.op.name
  (concat_quant,) = concat.outputs[0].consumers()
  assert concat_quant.name == "cell0_concat/activation_ConcatV2_quant/FakeQuantWithMinMaxVars"


@pytest.mark.parametrize("build", [nasnet_cells, adjust_block])
def test_the_int8_model_matches_the_eval_graph_of_each_runtime(build, tmp_path):
  checkpoint = _train(build, str(tmp_path))
  exported = to_tflite(_eval_graph(build, "float"), str(tmp_path / "model.tflite"), ["images"],
                       ["net_out"], checkpoint=checkpoint)
  for delegates, mode in ((True, "xnnpack"), (False, "tflite_builtin")):
    (agreement,) = compare_tflite(exported, {"images": IMAGES}, delegates=delegates,
                                  reference=_eval_graph(build, mode),
                                  checkpoint=checkpoint).values()
    assert agreement.elements == 640
    assert agreement.equal_share >= 0.99 and agreement.max_lsb <= 1, (mode, agreement)


def test_the_crop_keeps_the_pool_on_its_input_grid():
  graph = _eval_graph(adjust_block, "float")
  assert not [op.name for op in graph.get_operations()
              if op.name.startswith("adjust_conv_2/input_quant/")]
  readers = graph.get_operation_by_name("AvgPool2D_1").outputs[0].consumers()
  assert readers and all(r.name.startswith("AvgPool2D_1/activation_AvgPool_quant/")
                         for r in readers), [r.name for r in readers]
