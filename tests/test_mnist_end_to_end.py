"""The whole workflow on real MNIST digits: train with quantization, restore into eval, score."""

import numpy as np
import tensorflow as tf

from qat_rewrite import datasets, quantize


def test_load_mnist_gives_a_shuffled_stratified_split():
  (x_train, y_train), (x_test, y_test) = datasets.load_mnist()
  assert x_train.shape == (4000, 28, 28, 1) and x_test.shape == (1000, 28, 28, 1)
  assert x_train.dtype == np.float32 and 0.0 <= x_train.min() and x_train.max() <= 1.0
  assert np.bincount(y_test).tolist() == [100] * 10
  assert len(set(y_train[:20].tolist())) > 3  # shuffled, not sorted by label


def _model(images, training):
  net = tf.compat.v1.layers.conv2d(images, 8, 5, strides=2, use_bias=False, name="conv")
  net = tf.nn.relu(tf.compat.v1.layers.batch_normalization(net, training=training, name="bn"))
  net = tf.compat.v1.layers.flatten(net)
  return tf.compat.v1.layers.dense(net, 10, name="logits")


def test_qat_training_checkpoint_restores_into_the_quantized_eval_graph(tmp_path):
  (x_train, y_train), (x_test, y_test) = datasets.load_mnist()
  train_graph = tf.Graph()
  with train_graph.as_default():
    tf.compat.v1.set_random_seed(0)
    images = tf.compat.v1.placeholder(tf.float32, [None, 28, 28, 1])
    labels = tf.compat.v1.placeholder(tf.int64, [None])
    loss = tf.compat.v1.losses.sparse_softmax_cross_entropy(labels, _model(images, True))
    report = quantize.create_training_graph(quant_delay=50)
    assert report.folded_batch_norms == ["bn/FusedBatchNormV3"]
    with tf.control_dependencies(tf.compat.v1.get_collection(tf.compat.v1.GraphKeys.UPDATE_OPS)):
      train_op = tf.compat.v1.train.AdamOptimizer(3e-3).minimize(loss)
    saver = tf.compat.v1.train.Saver()
    with tf.compat.v1.Session() as sess:
      sess.run(tf.compat.v1.global_variables_initializer())
      rng = np.random.RandomState(0)
      for _ in range(250):
        batch = rng.randint(0, len(x_train), 64)
        sess.run(train_op, {images: x_train[batch], labels: y_train[batch]})
      saver.save(sess, str(tmp_path / "qat"))

  eval_graph = tf.Graph()
  with eval_graph.as_default():
    images = tf.compat.v1.placeholder(tf.float32, [None, 28, 28, 1])
    predictions = tf.argmax(_model(images, False), 1)
    quantize.create_eval_graph()
    with tf.compat.v1.Session() as sess:
      tf.compat.v1.train.Saver().restore(sess, str(tmp_path / "qat"))
      ranges = {v.op.name: v for v in tf.compat.v1.global_variables()}
      conv_range = sess.run(ranges["conv/act_quant/max"])
      accuracy = np.mean(sess.run(predictions, {images: x_test}) == y_test)
  assert conv_range > 0.1  # the activation range was learned, not left at its initial value
  assert conv_range != 6.0
  assert accuracy > 0.85, accuracy  # 0.89-0.92 over runs (TF reductions are not deterministic); chance is 0.1
