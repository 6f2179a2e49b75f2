"""Quantization-aware training of a small CNN on real MNIST digits, end to end.

Trains the CNN in float, runs QAT with qat_rewrite, scores the quantized eval graph, and exits 1
if it is more than 1 accuracy point below float, so the printed figures can be trusted.

  python examples/mnist_qat.py [--steps N] [--batch_size B] [--recipe finetune|scratch]
"""

import argparse
import os
import sys
import tempfile
import time
import warnings

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ["TF_USE_LEGACY_KERAS"] = "1"  # tf.compat.v1.layers needs tf_keras, not Keras 3.

import numpy as np
import tensorflow as tf

# tf.compat.v1.layers warns on every call; keep the example's output readable.
warnings.filterwarnings("ignore", message=".*is deprecated", category=UserWarning)
tf.get_logger().setLevel("ERROR")

# Run from a source checkout without installing the package.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from qat_rewrite import quantize  # noqa: E402
from qat_rewrite.datasets import load_mnist  # noqa: E402

MAX_DROP_POINTS = 1.0


def parse_args(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--steps", type=int, default=3000,
                      help="float training steps; the QAT step count derives from it")
  parser.add_argument("--batch_size", type=int, default=64)
  parser.add_argument("--recipe", choices=["finetune", "scratch"], default="finetune",
                      help="finetune: restore the float checkpoint, train steps/2 more with "
                      "quantization; scratch: train from init with quant_delay=steps/2")
  parser.add_argument("--seed", type=int, default=0, help="data split, init and batch order")
  parser.add_argument("--output_dir", default=None,
                      help="where checkpoints go (default: a new temp dir)")
  return parser.parse_args(argv)


# The model ----------------------------------------------------------------------------------

def _init():
  """Seeded by the graph seed; tf_keras' default initializer ignores it."""
  return tf.compat.v1.glorot_uniform_initializer()


def _conv_bn(x, filters, kernel, strides, is_training, name):
  """Bias-free conv + fused batch norm, the pattern the rewrite folds."""
  x = tf.compat.v1.layers.conv2d(x, filters, kernel, strides=strides, padding="same",
                                 use_bias=False, kernel_initializer=_init(), name=name)
  return tf.compat.v1.layers.batch_normalization(x, training=is_training, fused=True,
                                                 name=name + "_bn")


def _depthwise_bn(x, is_training, name):
  """3x3 depthwise conv (a get_variable filter, no bias) + fused batch norm."""
  with tf.compat.v1.variable_scope(name):
    kernel = tf.compat.v1.get_variable("depthwise_kernel", [3, 3, int(x.shape[-1]), 1],
                                       initializer=_init())
    x = tf.nn.depthwise_conv2d(x, kernel, [1, 1, 1, 1], "SAME")
  return tf.compat.v1.layers.batch_normalization(x, training=is_training, fused=True,
                                                 name=name + "_bn")


def build_model(images, is_training):
  """Small CNN with conv, depthwise, a residual add, pooling and dense; returns logits.

  Layer names are fixed, so the training and eval graphs get the same variable names and the
  checkpoints move between them.
  """
  with tf.compat.v1.variable_scope("model"):
    x = tf.nn.relu(_conv_bn(images, 32, 3, 2, is_training, "conv1"))  # 14x14x32
    x = tf.nn.relu6(_depthwise_bn(x, is_training, "dw2"))
    x = tf.nn.relu(_conv_bn(x, 32, 1, 1, is_training, "pw3") + x)  # residual add
    x = tf.compat.v1.layers.average_pooling2d(x, 2, 2, name="pool")  # 7x7x32
    x = tf.compat.v1.layers.flatten(x)
    return tf.compat.v1.layers.dense(x, 10, kernel_initializer=_init(), name="logits")


# The graphs ---------------------------------------------------------------------------------

class Graph:
  """One graph and the handles the script needs from it (a plain attribute bag)."""


def _inputs(g):
  g.images = tf.compat.v1.placeholder(tf.float32, [None, 28, 28, 1], "images")
  g.labels = tf.compat.v1.placeholder(tf.int64, [None], "labels")


def build_train_graph(lr, seed, quantize_it=False, quant_delay=0):
  """Training graph, rewritten for QAT (before the optimizer exists) if quantize_it.

  The loss and predictions are built before the rewrite on purpose: the rewrite reroutes
  existing consumers onto the quantized tensors.
  """
  g = Graph()
  g.graph = tf.Graph()
  with g.graph.as_default():
    tf.compat.v1.set_random_seed(seed)
    _inputs(g)
    logits = build_model(g.images, is_training=True)
    g.model_vars = tf.compat.v1.global_variables()  # before the rewrite adds its ranges
    g.loss = tf.compat.v1.losses.sparse_softmax_cross_entropy(g.labels, logits)
    g.predictions = tf.argmax(logits, 1)
    g.report = None
    if quantize_it:
      g.report = quantize.create_training_graph(g.graph, quant_delay=quant_delay)
    step = tf.compat.v1.train.get_or_create_global_step()
    # The batch-norm moving averages only update if these ops run.
    with tf.control_dependencies(tf.compat.v1.get_collection(tf.compat.v1.GraphKeys.UPDATE_OPS)):
      g.train_op = tf.compat.v1.train.AdamOptimizer(lr).minimize(g.loss, global_step=step)
    g.init = tf.compat.v1.global_variables_initializer()  # after the rewrite: covers ranges
    g.saver = tf.compat.v1.train.Saver()
    g.model_saver = tf.compat.v1.train.Saver(var_list=g.model_vars)
  return g


def build_eval_graph(quantize_it):
  """Inference graph (batch norm uses the moving statistics), rewritten if quantize_it."""
  g = Graph()
  g.graph = tf.Graph()
  with g.graph.as_default():
    tf.compat.v1.set_random_seed(0)  # never initialized (we restore), but determinism asks
    _inputs(g)
    g.predictions = tf.argmax(build_model(g.images, is_training=False), 1)
    g.report = quantize.create_eval_graph(g.graph) if quantize_it else None
    g.saver = tf.compat.v1.train.Saver(tf.compat.v1.global_variables())
  g.num_fake_quant = sum("FakeQuant" in op.type for op in g.graph.get_operations())
  return g


# Training and scoring -----------------------------------------------------------------------

def _batches(x, y, batch_size, seed):
  """Endless shuffled mini-batches, reshuffled each epoch."""
  rng = np.random.RandomState(seed)
  while True:
    order = rng.permutation(len(x))
    for start in range(0, len(x) - batch_size + 1, batch_size):
      idx = order[start:start + batch_size]
      yield x[idx], y[idx]


def train(sess, g, data, args, steps, label):
  """Runs `steps` optimizer steps, printing the loss five times."""
  batches = _batches(*data, args.batch_size, args.seed)
  start = time.time()
  for i in range(1, steps + 1):
    x, y = next(batches)
    _, loss = sess.run([g.train_op, g.loss], {g.images: x, g.labels: y})
    if i % max(1, steps // 5) == 0 or i == steps:
      print("  [%s] step %5d/%d  loss %.4f  (%.0f s)"
            % (label, i, steps, loss, time.time() - start))


def accuracy(sess, g, data, batch_size=500):
  """Top-1 accuracy in percent."""
  x, y = data
  correct = 0
  for start in range(0, len(x), batch_size):
    pred = sess.run(g.predictions, {g.images: x[start:start + batch_size]})
    correct += int(np.sum(pred == y[start:start + batch_size]))
  return 100.0 * correct / len(x)


# The steps of the example -------------------------------------------------------------------

def run_float(args, train_data, test_data, ckpt):
  """Float baseline: trains, saves, and scores the float eval graph."""
  g = build_train_graph(lr=1e-3, seed=args.seed)
  with tf.compat.v1.Session(graph=g.graph) as sess:
    sess.run(g.init)
    train(sess, g, train_data, args, args.steps, "float")
    g.saver.save(sess, ckpt)
  e = build_eval_graph(quantize_it=False)
  with tf.compat.v1.Session(graph=e.graph) as sess:
    e.saver.restore(sess, ckpt)
    return accuracy(sess, e, test_data)


def run_qat_finetune(args, train_data, float_ckpt, qat_ckpt):
  """QAT fine-tuning: float weights restored into the rewritten graph, then trained more."""
  g = build_train_graph(lr=1e-4, seed=args.seed, quantize_it=True, quant_delay=0)
  print(g.report)
  with tf.compat.v1.Session(graph=g.graph) as sess:
    sess.run(g.init)
    g.model_saver.restore(sess, float_ckpt)  # model variables only: the ranges start fresh
    train(sess, g, train_data, args, max(1, args.steps // 2), "qat")
    g.saver.save(sess, qat_ckpt)


def run_qat_scratch(args, train_data, qat_ckpt):
  """QAT from scratch: float training until quant_delay, quantized after it."""
  g = build_train_graph(lr=1e-3, seed=args.seed, quantize_it=True, quant_delay=args.steps // 2)
  print(g.report)
  with tf.compat.v1.Session(graph=g.graph) as sess:
    sess.run(g.init)
    train(sess, g, train_data, args, args.steps, "qat")
    g.saver.save(sess, qat_ckpt)


def run_quantized_eval(test_data, qat_ckpt):
  """Scores the rewritten eval graph restored from the QAT checkpoint."""
  e = build_eval_graph(quantize_it=True)
  print(e.report)
  with tf.compat.v1.Session(graph=e.graph) as sess:
    e.saver.restore(sess, qat_ckpt)
    return accuracy(sess, e, test_data), e.num_fake_quant


def main(argv=None):
  args = parse_args(argv)
  tf.compat.v1.disable_eager_execution()
  tf.config.experimental.enable_op_determinism()  # same seed, same figures
  out = args.output_dir or tempfile.mkdtemp(prefix="mnist_qat_")
  float_ckpt = os.path.join(out, "float", "model.ckpt")
  qat_ckpt = os.path.join(out, "qat", "model.ckpt")
  train_data, test_data = load_mnist(seed=args.seed)
  print("MNIST subset: %d train / %d test digits; checkpoints in %s"
        % (len(train_data[0]), len(test_data[0]), out))
  start = time.time()

  print("\n== Float baseline: %d steps, batch %d" % (args.steps, args.batch_size))
  float_acc = run_float(args, train_data, test_data, float_ckpt)
  print("  float test accuracy: %.2f%%" % float_acc)

  if args.recipe == "finetune":
    print("\n== QAT recipe 'finetune': from the float checkpoint, %d steps, quant_delay=0"
          % max(1, args.steps // 2))
    run_qat_finetune(args, train_data, float_ckpt, qat_ckpt)
  else:
    print("\n== QAT recipe 'scratch': from init, %d steps, quant_delay=%d"
          % (args.steps, args.steps // 2))
    run_qat_scratch(args, train_data, qat_ckpt)

  print("\n== Quantized eval graph")
  qat_acc, num_fake_quant = run_quantized_eval(test_data, qat_ckpt)
  drop = round(float_acc - qat_acc, 6)  # exactly 1.0 point must pass
  print("\n== Results (recipe '%s', %.0f s)" % (args.recipe, time.time() - start))
  print("  FakeQuant ops in the eval graph : %d" % num_fake_quant)
  print("  float accuracy                  : %.2f%%" % float_acc)
  print("  QAT accuracy (quantized eval)   : %.2f%%" % qat_acc)
  print("  difference (QAT - float)        : %+.2f points" % (qat_acc - float_acc))
  if drop > MAX_DROP_POINTS:
    print("FAIL: QAT is %.2f points below float (allowed: %.1f)" % (drop, MAX_DROP_POINTS))
    return 1
  print("OK: QAT is within %.1f point of float" % MAX_DROP_POINTS)
  return 0


if __name__ == "__main__":
  sys.exit(main())
