"""What train.py and eval.py share: the MNIST CNN, its node names, batches and scoring.

Import it after TF_USE_LEGACY_KERAS is set (the scripts do so): tf.compat.v1.layers needs
tf_keras. The CNN is the one of examples/mnist_qat.py, repeated so this folder stands alone.
"""

import numpy as np
import tensorflow as tf

v1 = tf.compat.v1

# The quantized range, as decent_q names it: from the input placeholder to the logits BiasAdd.
# The output node is the BiasAdd itself: an Identity after it would only alias its quantizer,
# and the deploy files name the quantized output `<output node>/aquant`.
INPUT_NODE = "net_in"
OUTPUT_NODE = "model/logits/BiasAdd"
INPUT_SHAPE = [-1, 28, 28, 1]


def _init():
  """Seeded by the graph seed; tf_keras' default initializer ignores it."""
  return v1.glorot_uniform_initializer()


def _conv_bn(x, filters, kernel, strides, is_training, name):
  """Bias-free conv + fused batch norm: the pattern the rewrite folds."""
  x = v1.layers.conv2d(x, filters, kernel, strides=strides, padding="same", use_bias=False,
                       kernel_initializer=_init(), name=name)
  return v1.layers.batch_normalization(x, training=is_training, fused=True, name=name + "_bn")


def _depthwise_bn(x, is_training, name):
  """3x3 depthwise conv (a get_variable filter, no bias) + fused batch norm."""
  with v1.variable_scope(name):
    kernel = v1.get_variable("depthwise_kernel", [3, 3, int(x.shape[-1]), 1],
                             initializer=_init())
    x = tf.nn.depthwise_conv2d(x, kernel, [1, 1, 1, 1], "SAME")
  return v1.layers.batch_normalization(x, training=is_training, fused=True, name=name + "_bn")


def model_fn(images, is_training):
  """conv+BN+ReLU, depthwise+BN+ReLU6, a residual add, avg pool and dense; returns logits.

  Layer names are fixed so that the training and eval graphs share variable names and the
  checkpoints move between them.
  """
  with v1.variable_scope("model"):
    x = tf.nn.relu(_conv_bn(images, 32, 3, 2, is_training, "conv1"))  # 14x14x32
    x = tf.nn.relu6(_depthwise_bn(x, is_training, "dw2"))
    x = tf.nn.relu(_conv_bn(x, 32, 1, 1, is_training, "pw3") + x)  # residual add
    x = v1.layers.average_pooling2d(x, 2, 2, name="pool")  # 7x7x32
    x = v1.layers.flatten(x)
    return v1.layers.dense(x, 10, kernel_initializer=_init(), name="logits")


def placeholders():
  """The input node `net_in` and the labels, in the default graph."""
  images = v1.placeholder(tf.float32, [None] + INPUT_SHAPE[1:], name=INPUT_NODE)
  labels = v1.placeholder(tf.int64, [None], name="labels")
  return images, labels


def batches(x, y, batch_size, seed):
  """Endless shuffled mini-batches, reshuffled each epoch."""
  rng = np.random.RandomState(seed)
  while True:
    order = rng.permutation(len(x))
    for start in range(0, len(x) - batch_size + 1, batch_size):
      idx = order[start:start + batch_size]
      yield x[idx], y[idx]


def accuracy(sess, predictions, images, data, batch_size=500):
  """Top-1 accuracy in percent of the `predictions` tensor, feeding `images`."""
  x, y = data
  correct = 0
  for start in range(0, len(x), batch_size):
    pred = sess.run(predictions, {images: x[start:start + batch_size]})
    correct += int(np.sum(pred == y[start:start + batch_size]))
  return 100.0 * correct / len(x)
