"""Small models for the decent_q tests, built the way users build them (tf.compat.v1.layers).

`build(is_training)` puts, in the default graph: preprocessing outside the quantized range
(`raw` → scale → `net_in`), a conv + BN + ReLU, two branches (conv + bias + ReLU, depthwise +
bias + ReLU6) joined by a concat, a max pool, a conv + BN + LeakyReLU(0.1), a residual add,
a 3x3 average pool, global average pooling, a dense layer, and a softmax after the output node.
"""

import numpy as np
import tensorflow as tf

v1 = tf.compat.v1
INPUT_NODES = ["net_in"]
OUTPUT_NODES = ["logits/BiasAdd"]
INPUT_SHAPES = [[-1, 16, 16, 3]]


def _conv(x, filters, kernel, name, use_bias=True):
  return v1.layers.conv2d(x, filters, kernel, padding="same", use_bias=use_bias, name=name,
                          kernel_initializer=v1.glorot_uniform_initializer())


def _bn(x, is_training, name):
  return v1.layers.batch_normalization(x, training=is_training, fused=True, name=name)


def build(is_training):
  """Returns (raw placeholder, labels placeholder, logits, loss)."""
  v1.set_random_seed(1)
  raw = v1.placeholder(tf.float32, [None, 16, 16, 3], name="raw")
  labels = v1.placeholder(tf.int64, [None], name="labels")
  x = tf.identity(raw * (1.0 / 255.0), name="net_in")
  x = tf.nn.relu(_bn(_conv(x, 8, 3, "conv1", use_bias=False), is_training, "bn1"), name="relu1")
  a = tf.nn.relu(_conv(x, 4, 1, "branch_a"), name="relu_a")
  with v1.variable_scope("branch_b"):
    dw = v1.get_variable("depthwise_kernel", [3, 3, 8, 1],
                         initializer=v1.glorot_uniform_initializer())
    bias = v1.get_variable("bias", [8], initializer=v1.zeros_initializer())
    b = tf.nn.relu6(tf.nn.bias_add(tf.nn.depthwise_conv2d(x, dw, [1, 1, 1, 1], "SAME"), bias),
                    name="relu6_b")
  x = tf.concat([a, b], axis=3, name="concat")
  x = tf.nn.max_pool2d(x, 2, 2, "VALID", name="maxpool")
  y = tf.nn.leaky_relu(_bn(_conv(x, 12, 3, "conv2", use_bias=False), is_training, "bn2"),
                       alpha=0.1, name="leaky")
  x = tf.nn.relu(y + _conv(x, 12, 1, "shortcut"), name="add_relu")
  x = tf.nn.avg_pool2d(x, 3, 1, "SAME", name="avgpool")
  x = tf.reduce_mean(x, axis=[1, 2], name="gap")
  logits = v1.layers.dense(x, 5, name="logits",
                           kernel_initializer=v1.glorot_uniform_initializer())
  tf.nn.softmax(logits, name="probs")
  loss = v1.losses.sparse_softmax_cross_entropy(labels, logits)
  return raw, labels, logits, loss


def batches(count, batch=16, seed=0):
  """Deterministic random images in 0..255 with labels from their channel means."""
  rng = np.random.RandomState(seed)
  for _ in range(count):
    images = rng.uniform(0, 255, (batch, 16, 16, 3)).astype(np.float32)
    yield images, (images.mean(axis=(1, 2, 3)) // 52).astype(np.int64)
