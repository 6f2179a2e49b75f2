"""A new user's script on a model the zoo does not hold: agreement of the int8 model.

What a user writes (tf_keras.applications in a v1 graph): the model built with training=True,
`experimental_create_training_graph(symmetric=True, per_channel_weights=True,
quantize_inputs=True)`, then the loss and an Adam optimizer under UPDATE_OPS (the loss after
the rewrite), trained on MNIST digits resized to the model's size; an eval graph restored,
`to_tflite` (input_ranges only if it asks), and `compare_tflite` against the float eval graph
and against each runtime's emulating eval graph (requantize="xnnpack" / "tflite_builtin").

  python benchmarks/real_code_trial.py MobileNet 64 500        # alpha 0.25
  python benchmarks/real_code_trial.py EfficientNetV2B0 32 30
"""

import os
import sys
import tempfile
import time

import bench_common  # noqa: F401  (sets up tf_keras before TensorFlow)
import numpy as np
import tensorflow as tf
import tf_keras

from qat_rewrite import quantize
from qat_rewrite.datasets import load_mnist
from qat_rewrite.export import compare_tflite, to_tflite

v1 = tf.compat.v1
OPTIONS = dict(symmetric=True, per_channel_weights=True, quantize_inputs=True)
KWARGS = {"MobileNet": dict(alpha=0.25)}
BATCH, COMPARED = 32, 64


def model_fn(name, size, images, training):
  model = getattr(tf_keras.applications, name)(
      weights=None, input_shape=(size, size, 3), classes=10, classifier_activation=None,
      **KWARGS.get(name, {}))
  out = model(images, training=training)
  if training:
    for update in model.get_updates_for(images):
      v1.add_to_collection(v1.GraphKeys.UPDATE_OPS, update)
  return tf.identity(out, name="net_out")


def digits(size):
  """The MNIST digits' (train, test) split, resized, 3 channels, in [0, 1]."""
  def resized(x):
    with tf.Graph().as_default(), v1.Session() as sess:
      small = v1.placeholder(tf.float32, [None, 28, 28, 1])
      big = tf.tile(v1.image.resize_bilinear(small, (size, size)), [1, 1, 1, 3])
      return np.clip(sess.run(big, {small: x}), 0.0, 1.0)
  (x_train, y_train), (x_test, y_test) = load_mnist()
  return (resized(x_train), y_train), (resized(x_test), y_test)


def train(name, size, steps, train_x, train_y, checkpoint):
  with tf.Graph().as_default() as graph:
    images = v1.placeholder(tf.float32, [None, size, size, 3], name="net_in")
    out = model_fn(name, size, images, True)
    start = time.perf_counter()
    quantize.experimental_create_training_graph(graph, **OPTIONS)
    print("training rewrite: %.1f s" % (time.perf_counter() - start))
    labels = v1.placeholder(tf.int64, [None])
    loss = v1.losses.sparse_softmax_cross_entropy(labels, out)  # after the rewrite
    with tf.control_dependencies(v1.get_collection(v1.GraphKeys.UPDATE_OPS)):
      train_op = v1.train.AdamOptimizer(1e-3).minimize(loss)
    with v1.Session() as sess:
      sess.run(v1.global_variables_initializer())
      for step in range(steps):
        first = (step * BATCH) % (len(train_y) - BATCH)
        start = time.perf_counter()
        value, _ = sess.run([loss, train_op], {images: train_x[first:first + BATCH],
                                               labels: train_y[first:first + BATCH]})
        if step in (0, steps - 1) or step % 50 == 0:
          print("step %d: loss %.3f, %.2f s" % (step, value, time.perf_counter() - start))
      v1.train.Saver().save(sess, checkpoint)


def eval_graph(name, size, **extra):
  with tf.Graph().as_default() as graph:
    images = v1.placeholder(tf.float32, [None, size, size, 3], name="net_in")
    model_fn(name, size, images, False)
    quantize.experimental_create_eval_graph(graph, **OPTIONS, **extra)
  return graph


def main(argv):
  name, size, steps = argv[1], int(argv[2]), int(argv[3])
  print("%s at %dx%d, %d steps of batch %d on %s" % (name, size, size, steps, BATCH,
                                                    bench_common.machine()))
  (train_x, train_y), (test_x, _) = digits(size)
  workdir = tempfile.mkdtemp(prefix="real_code_trial_")
  checkpoint = os.path.join(workdir, "qat")
  train(name, size, steps, train_x, train_y, checkpoint)
  graph = eval_graph(name, size)
  path = os.path.join(workdir, "model.tflite")
  try:
    exported = to_tflite(graph, path, ["net_in"], ["net_out"], checkpoint=checkpoint)
  except ValueError as err:
    if "has no FakeQuant range" not in str(err):
      raise
    print("input_ranges needed:", err)
    exported = to_tflite(graph, path, ["net_in"], ["net_out"], checkpoint=checkpoint,
                         input_ranges={"net_in": (0.0, 1.0)})
  feeds = {"net_in": test_x[:COMPARED]}
  (plain,) = compare_tflite(exported, feeds).values()
  print("XNNPACK vs the float eval graph: %.1f%% equal, %d LSB"
        % (100 * plain.equal_share, plain.max_lsb))
  for mode, delegates, runtime in (("xnnpack", True, "XNNPACK"),
                                   ("tflite_builtin", False, "builtin kernels")):
    (agreement,) = compare_tflite(exported, feeds, delegates=delegates,
                                  reference=eval_graph(name, size, requantize=mode),
                                  checkpoint=checkpoint).values()
    print("%s vs its emulating eval graph: %.1f%% equal, %d LSB (%d logits)"
          % (runtime, 100 * agreement.equal_share, agreement.max_lsb, agreement.elements))


if __name__ == "__main__":
  main(sys.argv)
