"""Benchmarks the QAT rewrite on a full-size Keras model, on CPU.

Prints (a) the wall time of quantize.create_training_graph on a ResNet50 (or MobileNetV2)
training graph and (b) how much slower an SGD training step is with the fake-quant ops in.
Goals: rewrite < 2 s, QAT/float step-time ratio < 1.2.

  python benchmarks/resnet50_rewrite.py [--model resnet50|mobilenetv2] [--steps N] [--quick]
"""

import argparse
import os
import statistics
import sys
import time
import warnings

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ["TF_USE_LEGACY_KERAS"] = "1"  # tf_keras, not Keras 3: graph mode needs it.

import numpy as np
import tensorflow as tf
import tf_keras

warnings.filterwarnings("ignore", category=UserWarning)
tf.get_logger().setLevel("ERROR")

# Run from a source checkout without installing the package.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from qat_rewrite import quantize  # noqa: E402

GOAL_REWRITE_S = 2.0
GOAL_RATIO = 1.2
BATCH = 8
MODELS = {
    "resnet50": tf_keras.applications.ResNet50,
    "mobilenetv2": tf_keras.applications.MobileNetV2,
}


def parse_args(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--model", choices=sorted(MODELS), default="resnet50")
  parser.add_argument("--steps", type=int, default=10, help="measured steps per graph")
  parser.add_argument("--quick", action="store_true",
                      help="CI smoke: 64x64 input, 1 warm-up and 2 measured steps")
  args = parser.parse_args(argv)
  args.size = 64 if args.quick else 224
  args.warmup = 1 if args.quick else 3
  if args.quick:
    args.steps = 2
  return args


class Bench:
  """One training graph and its handles (a plain attribute bag)."""


def build_graph(model_name, size):
  """A fresh graph holding the Keras model called on a placeholder with training=True."""
  b = Bench()
  b.graph = tf.Graph()
  with b.graph.as_default():
    tf.compat.v1.set_random_seed(0)
    b.images = tf.compat.v1.placeholder(tf.float32, [BATCH, size, size, 3], "images")
    b.labels = tf.compat.v1.placeholder(tf.int64, [BATCH], "labels")
    model = MODELS[model_name](weights=None, input_shape=(size, size, 3),
                               classifier_activation=None)
    logits = b.logits = model(b.images, training=True)
    # Before any rewrite, so that the rewrite reroutes it onto the quantized logits.
    b.loss = tf.compat.v1.losses.sparse_softmax_cross_entropy(b.labels, logits)
    # Keras keeps the batch-norm updates on the model, not in the UPDATE_OPS collection.
    b.bn_updates = model.get_updates_for(b.images)
  return b


def add_train_op(b):
  """An SGD step that also runs the batch-norm moving-average updates."""
  with b.graph.as_default():
    updates = b.bn_updates + tf.compat.v1.get_collection(tf.compat.v1.GraphKeys.UPDATE_OPS)
    with tf.control_dependencies(updates):
      b.train_op = tf.compat.v1.train.GradientDescentOptimizer(0.01).minimize(b.loss)
    b.init = tf.compat.v1.global_variables_initializer()


def count_fake_quant(graph):
  return sum("FakeQuant" in op.type for op in graph.get_operations())


def time_rewrite(b):
  """Rewrites b.graph in place, timing only the rewrite."""
  b.nodes_before = len(b.graph.get_operations())
  fake_quant_before = count_fake_quant(b.graph)
  start = time.perf_counter()
  b.report = quantize.create_training_graph(b.graph)
  b.rewrite_s = time.perf_counter() - start
  b.nodes_after = len(b.graph.get_operations())
  b.fake_quant_added = count_fake_quant(b.graph) - fake_quant_before


def median_step_times(runs, warmup, steps):
  """Median seconds per step for each (session, bench, feed), alternating to share drift."""
  for _ in range(warmup):
    for sess, b, feed in runs:
      sess.run(b.train_op, feed)
  times = [[] for _ in runs]
  for _ in range(steps):
    for i, (sess, b, feed) in enumerate(runs):
      start = time.perf_counter()
      sess.run(b.train_op, feed)
      times[i].append(time.perf_counter() - start)
  return [statistics.median(t) for t in times]


def measure_steps(flt, qat, args):
  """Median float and QAT step times on the same random batch."""
  rng = np.random.RandomState(0)
  images = rng.rand(BATCH, args.size, args.size, 3).astype(np.float32)
  labels = rng.randint(0, 1000, BATCH).astype(np.int64)
  with tf.compat.v1.Session(graph=flt.graph) as s_flt, \
       tf.compat.v1.Session(graph=qat.graph) as s_qat:
    s_flt.run(flt.init)
    s_qat.run(qat.init)
    runs = [(s, b, {b.images: images, b.labels: labels}) for s, b in [(s_flt, flt), (s_qat, qat)]]
    return median_step_times(runs, args.warmup, args.steps)


def print_table(qat, t_flt, t_qat):
  ratio = t_qat / t_flt
  status = lambda ok: "met" if ok else "MISSED"  # noqa: E731
  rows = [
      ("create_training_graph wall time", "%.2f s" % qat.rewrite_s, "< %.0f s" % GOAL_REWRITE_S,
       status(qat.rewrite_s < GOAL_REWRITE_S)),
      ("graph nodes before -> after", "%d -> %d" % (qat.nodes_before, qat.nodes_after), "", ""),
      ("FakeQuant ops inserted", "%d" % qat.fake_quant_added, "", ""),
      ("float step, median", "%.3f s" % t_flt, "", ""),
      ("QAT step, median", "%.3f s" % t_qat, "", ""),
      ("QAT/float step-time ratio", "%.2f" % ratio, "< %.1f" % GOAL_RATIO,
       status(ratio < GOAL_RATIO)),
  ]
  print("| metric | value | goal | status |")
  print("|---|---|---|---|")
  for row in rows:
    print("| %s |" % " | ".join(row))


def main(argv=None):
  args = parse_args(argv)
  tf.compat.v1.disable_eager_execution()
  print("%s, input %dx%d, batch %d, CPU, %d warm-up + %d measured steps per graph\n"
        % (args.model, args.size, args.size, BATCH, args.warmup, args.steps))
  qat = build_graph(args.model, args.size)
  time_rewrite(qat)
  # The float layers listed are Keras' construction-time copy of the model (its batch norms
  # sit behind the learning-phase conditional); the training step never runs them.
  print(str(qat.report).splitlines()[0] + "\n")
  flt = build_graph(args.model, args.size)
  add_train_op(qat)
  add_train_op(flt)
  t_flt, t_qat = measure_steps(flt, qat, args)
  print_table(qat, t_flt, t_qat)
  return 0


if __name__ == "__main__":
  sys.exit(main())
