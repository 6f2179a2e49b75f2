"""Benchmark the QAT rewrite on a full-size Keras model (CPU).

Measures (a) the wall time of qat_rewrite.quantize.create_training_graph on
a ResNet50 (or MobileNetV2) training graph and (b) how much slower a
training step gets once fake-quant ops are in the graph.

    python benchmarks/resnet50_rewrite.py [--model resnet50|mobilenetv2]
                                          [--steps N] [--quick]

Goals: rewrite < 2 s, QAT/float step-time ratio < 1.2.
"""

import argparse
import os
import statistics
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ["TF_USE_LEGACY_KERAS"] = "1"  # tf_keras, not Keras 3.

import numpy as np
import tensorflow as tf
import tf_keras

# Allow running from a source checkout without installing the package.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import qat_rewrite.quantize  # noqa: E402

GOAL_REWRITE_S = 2.0
GOAL_RATIO = 1.2
BATCH = 8
NUM_CLASSES = 1000
MODELS = {
    "resnet50": tf_keras.applications.ResNet50,
    "mobilenetv2": tf_keras.applications.MobileNetV2,
}


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=sorted(MODELS), default="resnet50")
    parser.add_argument("--steps", type=int, default=10,
                        help="measured training steps per graph")
    parser.add_argument("--quick", action="store_true",
                        help="64x64 input, 2 steps, 1 warm-up (CI smoke)")
    args = parser.parse_args(argv)
    args.size = 64 if args.quick else 224
    args.warmup = 1 if args.quick else 3
    if args.quick:
        args.steps = 2
    return args


class Bench:
    """Handles to one training graph (plain attribute bag)."""


def build_graph(model_name, size):
    """Fresh graph holding the Keras model called with training=True."""
    b = Bench()
    b.graph = tf.Graph()
    with b.graph.as_default():
        tf.compat.v1.set_random_seed(0)
        b.images = tf.compat.v1.placeholder(
            tf.float32, [BATCH, size, size, 3], "images")
        b.labels = tf.compat.v1.placeholder(tf.int64, [BATCH], "labels")
        model = MODELS[model_name](weights=None,
                                   input_shape=(size, size, 3),
                                   classifier_activation=None)
        logits = model(b.images, training=True)
        # Built before any rewrite so the rewriter reroutes it.
        b.loss = tf.compat.v1.losses.sparse_softmax_cross_entropy(
            b.labels, logits)
        # Keras layers keep BN updates on the model, not in UPDATE_OPS.
        b.bn_updates = model.get_updates_for(b.images)
    return b


def add_train_op(b):
    """SGD step that also runs the BN moving-average updates."""
    with b.graph.as_default():
        updates = list(b.bn_updates) + tf.compat.v1.get_collection(
            tf.compat.v1.GraphKeys.UPDATE_OPS)
        with tf.control_dependencies(updates):
            b.train_op = tf.compat.v1.train.GradientDescentOptimizer(
                0.01).minimize(b.loss)
        b.init = tf.compat.v1.global_variables_initializer()


def count_fake_quant(graph):
    return sum("FakeQuant" in op.type for op in graph.get_operations())


def time_rewrite(b):
    """Rewrite b.graph in place; return seconds, nodes before/after, FQ."""
    before = len(b.graph.get_operations())
    fq_before = count_fake_quant(b.graph)
    start = time.perf_counter()
    report = qat_rewrite.quantize.create_training_graph(b.graph)
    seconds = time.perf_counter() - start
    after = len(b.graph.get_operations())
    return seconds, before, after, count_fake_quant(b.graph) - fq_before, report


def step_times(sessions, feeds, warmup, steps):
    """Median step time per session, alternating sessions to share drift."""
    for _ in range(warmup):
        for sess, b in sessions:
            sess.run(b.train_op, feeds[b])
    times = [[] for _ in sessions]
    for _ in range(steps):
        for i, (sess, b) in enumerate(sessions):
            start = time.perf_counter()
            sess.run(b.train_op, feeds[b])
            times[i].append(time.perf_counter() - start)
    return [statistics.median(t) for t in times]


def _status(ok):
    return "met" if ok else "MISSED"


def main(argv=None):
    args = parse_args(argv)
    tf.compat.v1.disable_eager_execution()
    print("Model %s, input %dx%d, batch %d, CPU, %d warm-up + %d steps"
          % (args.model, args.size, args.size, BATCH, args.warmup, args.steps))

    qat = build_graph(args.model, args.size)
    rewrite_s, nodes_before, nodes_after, num_fq, report = time_rewrite(qat)
    print(report)
    flt = build_graph(args.model, args.size)
    add_train_op(qat)
    add_train_op(flt)

    rng = np.random.RandomState(0)
    images = rng.rand(BATCH, args.size, args.size, 3).astype(np.float32)
    labels = rng.randint(0, NUM_CLASSES, BATCH).astype(np.int64)
    feeds = {b: {b.images: images, b.labels: labels} for b in (flt, qat)}
    with tf.compat.v1.Session(graph=flt.graph) as s_flt, \
            tf.compat.v1.Session(graph=qat.graph) as s_qat:
        s_flt.run(flt.init)
        s_qat.run(qat.init)
        t_flt, t_qat = step_times([(s_flt, flt), (s_qat, qat)], feeds,
                                  args.warmup, args.steps)
    ratio = t_qat / t_flt

    print()
    print("| metric | value | goal | status |")
    print("|---|---|---|---|")
    print("| create_training_graph wall time | %.3f s | < %.0f s | %s |"
          % (rewrite_s, GOAL_REWRITE_S, _status(rewrite_s < GOAL_REWRITE_S)))
    print("| graph nodes before -> after | %d -> %d | | |"
          % (nodes_before, nodes_after))
    print("| FakeQuant ops inserted | %d | | |" % num_fq)
    print("| float step (median) | %.3f s | | |" % t_flt)
    print("| QAT step (median) | %.3f s | | |" % t_qat)
    print("| QAT/float step ratio | %.2f | < %.1f | %s |"
          % (ratio, GOAL_RATIO, _status(ratio < GOAL_RATIO)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
