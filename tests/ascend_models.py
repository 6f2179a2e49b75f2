"""Small models for the AMCT tests, built as users build them (tf.compat.v1.layers, tf.nn).

`build(is_training)` puts in the default graph: `net_in` (8x8x3) → conv1 (3 input channels: the
Cin <= 16 warning) + BN + ReLU → depthwise + BN + ReLU6 → pw (1x1 conv, bias, 20 input
channels) + ReLU → a dilated conv (stays float) added back → transpose conv + bias → flatten →
dense `logits` and a MatMul with transpose_b (stays float) summed into `out`.
"""

import numpy as np
import tensorflow as tf

v1 = tf.compat.v1
INPUT = "net_in"
OUTPUT = "out"
LAYERS = ("conv1/Conv2D", "dw/depthwise", "pw/Conv2D", "deconv/conv2d_transpose",
          "logits/MatMul")
FLOAT_LAYERS = {"atrous": "dilation", "transposed/MatMul": "transpose_b"}


def _init():
  return v1.glorot_uniform_initializer()


def _bn(x, is_training, name):
  return v1.layers.batch_normalization(x, training=is_training, fused=True, name=name)


def build(is_training, batch_norm=True):
  """Returns (images, logits, loss, labels)."""
  v1.set_random_seed(3)
  images = v1.placeholder(tf.float32, [None, 8, 8, 3], name=INPUT)
  labels = v1.placeholder(tf.int64, [None], name="labels")
  x = v1.layers.conv2d(images, 20, 3, padding="same", use_bias=not batch_norm, name="conv1",
                       kernel_initializer=_init())
  x = tf.nn.relu(_bn(x, is_training, "bn1") if batch_norm else x)
  with v1.variable_scope("dw"):
    kernel = v1.get_variable("depthwise_kernel", [3, 3, 20, 2], initializer=_init())
    x = tf.nn.depthwise_conv2d(x, kernel, [1, 1, 1, 1], "SAME", name="depthwise")
  x = tf.nn.relu6(_bn(x, is_training, "bn2") if batch_norm else x)
  x = tf.nn.relu(v1.layers.conv2d(x, 20, 1, name="pw", kernel_initializer=_init()))
  # TF has no CPU gradient for a dilated Conv2D: a constant branch without one.
  kernel = tf.constant(np.random.RandomState(0).normal(0, 0.05, (3, 3, 20, 20)), tf.float32)
  x = x + tf.nn.conv2d(tf.stop_gradient(x), kernel, 1, "SAME", dilations=2, name="atrous")
  x = v1.layers.conv2d_transpose(x, 6, 3, strides=2, padding="same", name="deconv",
                                 kernel_initializer=_init())
  flat = tf.reshape(x, [-1, 16 * 16 * 6])
  logits = v1.layers.dense(flat, 10, name="logits", kernel_initializer=_init())
  with v1.variable_scope("transposed"):
    w = v1.get_variable("kernel", [10, 16 * 16 * 6], initializer=_init())
    side = tf.matmul(flat, w, transpose_b=True, name="MatMul")
  out = tf.add(logits, 0.1 * side, name=OUTPUT)
  loss = v1.losses.sparse_softmax_cross_entropy(labels, out)
  return images, out, loss, labels


def batch(seed=0, size=8):
  rng = np.random.RandomState(seed)
  x = rng.uniform(-1, 1, (size, 8, 8, 3)).astype(np.float32)
  return x, (np.abs(x).mean(axis=(1, 2, 3)) * 20).astype(np.int64) % 10
