"""Quantization-aware training on real MNIST digits, end to end.

Trains a small CNN in float, then with qat_rewrite's fake-quant rewrite,
evaluates the quantized eval graph and fails (exit 1) if it is more than
1 accuracy point below float, so the figures in the output can be trusted.

    python examples/mnist_qat.py [--steps N] [--batch_size B] [--recipe R]
"""

import argparse
import os
import sys
import tempfile
import time
import warnings

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ["TF_USE_LEGACY_KERAS"] = "1"  # tf.compat.v1.layers needs tf_keras.

import numpy as np
import tensorflow as tf

# tf.compat.v1.layers warns on every call; keep the example output readable.
warnings.filterwarnings("ignore", message=".*is deprecated", category=UserWarning)
tf.get_logger().setLevel("ERROR")

# Allow running from a source checkout without installing the package.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import qat_rewrite.quantize  # noqa: E402
from qat_rewrite.datasets import load_mnist  # noqa: E402

MAX_DROP_POINTS = 1.0


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=1500,
                        help="float training steps (QAT steps derive from it)")
    parser.add_argument("--batch_size", type=int, default=64)
    parser.add_argument("--recipe", choices=["finetune", "scratch"],
                        default="finetune",
                        help="finetune: restore the float checkpoint and "
                             "train steps/2 more with quantization; scratch: "
                             "train from init with quant_delay=steps/2")
    parser.add_argument("--seed", type=int, default=0,
                        help="data split, init and batch order")
    parser.add_argument("--output_dir", default=None,
                        help="checkpoint directory (default: a temp dir)")
    return parser.parse_args(argv)


# ----------------------------------------------------------------- model ---

def _conv_bn(x, filters, kernel, strides, is_training, name):
    """Bias-free conv + fused BN: the pattern the rewriter folds."""
    x = tf.compat.v1.layers.conv2d(x, filters, kernel, strides=strides,
                                   padding="same", use_bias=False, name=name)
    return tf.compat.v1.layers.batch_normalization(
        x, training=is_training, fused=True, name=name + "_bn")


def _depthwise_bn(x, is_training, name):
    """3x3 depthwise conv (get_variable filter, no bias) + fused BN."""
    channels = int(x.shape[-1])
    with tf.compat.v1.variable_scope(name):
        kernel = tf.compat.v1.get_variable(
            "depthwise_kernel", [3, 3, channels, 1],
            initializer=tf.compat.v1.glorot_uniform_initializer())
        x = tf.nn.depthwise_conv2d(x, kernel, [1, 1, 1, 1], "SAME")
    return tf.compat.v1.layers.batch_normalization(
        x, training=is_training, fused=True, name=name + "_bn")


def build_model(images, is_training):
    """Small CNN covering conv, depthwise, residual add, pool and dense.

    Uses fixed layer names, so training and eval graphs share variable
    names and checkpoints move freely between them.
    """
    with tf.compat.v1.variable_scope("model"):
        x = tf.nn.relu(_conv_bn(images, 32, 3, 2, is_training, "conv1"))
        x = tf.nn.relu6(_depthwise_bn(x, is_training, "dw2"))
        skip = x
        x = _conv_bn(x, 32, 1, 1, is_training, "pw3")
        x = tf.nn.relu(x + skip)
        x = tf.compat.v1.layers.average_pooling2d(x, 2, 2, name="pool")
        x = tf.compat.v1.layers.flatten(x)
        return tf.compat.v1.layers.dense(x, 10, name="logits")


# ---------------------------------------------------------------- graphs ---

class Model:
    """Handles to one graph's tensors and ops (plain attribute bag)."""


def _inputs():
    images = tf.compat.v1.placeholder(tf.float32, [None, 28, 28, 1], "images")
    labels = tf.compat.v1.placeholder(tf.int64, [None], "labels")
    return images, labels


def build_train_graph(lr, seed, quantize=False, quant_delay=0):
    """Training graph; with quantize=True, rewrite it before the optimizer.

    Loss and predictions are built before the rewrite on purpose: the
    rewriter reroutes existing consumers to the fake-quantized tensors.
    """
    m = Model()
    m.graph = tf.Graph()
    with m.graph.as_default():
        tf.compat.v1.set_random_seed(seed)
        m.images, m.labels = _inputs()
        logits = build_model(m.images, is_training=True)
        m.model_vars = tf.compat.v1.global_variables()
        m.loss = tf.compat.v1.losses.sparse_softmax_cross_entropy(
            m.labels, logits)
        m.predictions = tf.argmax(logits, 1)
        m.report = None
        if quantize:
            m.report = qat_rewrite.quantize.create_training_graph(
                m.graph, quant_delay=quant_delay)
        step = tf.compat.v1.train.get_or_create_global_step()
        # BN moving averages are only updated if these ops run.
        update_ops = tf.compat.v1.get_collection(
            tf.compat.v1.GraphKeys.UPDATE_OPS)
        with tf.control_dependencies(update_ops):
            m.train_op = tf.compat.v1.train.AdamOptimizer(lr).minimize(
                m.loss, global_step=step)
        # Initializer after the rewrite, so quantizer variables are covered.
        m.init = tf.compat.v1.global_variables_initializer()
        m.saver = tf.compat.v1.train.Saver()
        m.model_saver = tf.compat.v1.train.Saver(var_list=m.model_vars)
    return m


def build_eval_graph(quantize):
    """Inference graph (BN uses moving stats), optionally quantized."""
    m = Model()
    m.graph = tf.Graph()
    with m.graph.as_default():
        m.images, m.labels = _inputs()
        logits = build_model(m.images, is_training=False)
        m.predictions = tf.argmax(logits, 1)
        m.report = None
        if quantize:
            m.report = qat_rewrite.quantize.create_eval_graph(m.graph)
        m.saver = tf.compat.v1.train.Saver(tf.compat.v1.global_variables())
    m.num_fake_quant = sum("FakeQuant" in op.type
                           for op in m.graph.get_operations())
    return m


# ------------------------------------------------------------ train/eval ---

def _batches(x, y, batch_size, seed):
    """Endless shuffled mini-batches, reshuffled every epoch."""
    rng = np.random.RandomState(seed)
    while True:
        order = rng.permutation(len(x))
        for start in range(0, len(x) - batch_size + 1, batch_size):
            idx = order[start:start + batch_size]
            yield x[idx], y[idx]


def train(sess, m, data, args, steps, label):
    """Run `steps` optimizer steps, printing the loss now and then."""
    batches = _batches(*data, args.batch_size, args.seed)
    start = time.time()
    for i in range(1, steps + 1):
        xb, yb = next(batches)
        _, loss = sess.run([m.train_op, m.loss],
                           {m.images: xb, m.labels: yb})
        if i % max(1, steps // 5) == 0 or i == steps:
            print("  [%s] step %5d/%d  loss %.4f  (%.0f s)"
                  % (label, i, steps, loss, time.time() - start))


def accuracy(sess, m, data, batch_size=500):
    """Top-1 accuracy in percent."""
    x, y = data
    correct = 0
    for start in range(0, len(x), batch_size):
        pred = sess.run(m.predictions, {m.images: x[start:start + batch_size]})
        correct += int(np.sum(pred == y[start:start + batch_size]))
    return 100.0 * correct / len(x)


def _session(graph):
    return tf.compat.v1.Session(graph=graph)


# --------------------------------------------------------------- recipes ---

def run_float(args, train_data, test_data, ckpt):
    """Float baseline: train, save, and score the float eval graph."""
    m = build_train_graph(lr=1e-3, seed=args.seed)
    with _session(m.graph) as sess:
        sess.run(m.init)
        train(sess, m, train_data, args, args.steps, "float")
        m.saver.save(sess, ckpt)
    e = build_eval_graph(quantize=False)
    with _session(e.graph) as sess:
        e.saver.restore(sess, ckpt)
        return accuracy(sess, e, test_data)


def run_qat_finetune(args, train_data, float_ckpt, qat_ckpt):
    """Restore float weights into the rewritten graph, then train more."""
    m = build_train_graph(lr=1e-4, seed=args.seed, quantize=True,
                          quant_delay=0)
    print(m.report)
    with _session(m.graph) as sess:
        sess.run(m.init)
        m.model_saver.restore(sess, float_ckpt)
        train(sess, m, train_data, args, max(1, args.steps // 2), "qat")
        m.saver.save(sess, qat_ckpt)


def run_qat_scratch(args, train_data, qat_ckpt):
    """Train from init in float, switching quantization on half-way."""
    m = build_train_graph(lr=1e-3, seed=args.seed, quantize=True,
                          quant_delay=args.steps // 2)
    print(m.report)
    with _session(m.graph) as sess:
        sess.run(m.init)
        train(sess, m, train_data, args, args.steps, "qat")
        m.saver.save(sess, qat_ckpt)


def run_quantized_eval(test_data, qat_ckpt):
    """Score the rewritten eval graph restored from the QAT checkpoint."""
    e = build_eval_graph(quantize=True)
    print(e.report)
    with _session(e.graph) as sess:
        e.saver.restore(sess, qat_ckpt)
        return accuracy(sess, e, test_data), e.num_fake_quant


def main(argv=None):
    args = parse_args(argv)
    tf.compat.v1.disable_eager_execution()
    out = args.output_dir or tempfile.mkdtemp(prefix="mnist_qat_")
    os.makedirs(out, exist_ok=True)
    float_ckpt = os.path.join(out, "float", "model.ckpt")
    qat_ckpt = os.path.join(out, "qat", "model.ckpt")
    train_data, test_data = load_mnist(seed=args.seed)
    print("MNIST subset: %d train / %d test digits; checkpoints in %s"
          % (len(train_data[0]), len(test_data[0]), out))

    start = time.time()
    print("\n== Float baseline (%d steps, batch %d)"
          % (args.steps, args.batch_size))
    float_acc = run_float(args, train_data, test_data, float_ckpt)
    print("  float test accuracy: %.2f%%" % float_acc)

    if args.recipe == "finetune":
        print("\n== QAT recipe: fine-tune from the float checkpoint "
              "(%d steps, quant_delay=0)" % max(1, args.steps // 2))
        run_qat_finetune(args, train_data, float_ckpt, qat_ckpt)
    else:
        print("\n== QAT recipe: from scratch (%d steps, quant_delay=%d)"
              % (args.steps, args.steps // 2))
        run_qat_scratch(args, train_data, qat_ckpt)

    print("\n== Quantized eval graph")
    qat_acc, num_fq = run_quantized_eval(test_data, qat_ckpt)
    drop = float_acc - qat_acc
    print("\n== Results (recipe: %s, %.0f s total)"
          % (args.recipe, time.time() - start))
    print("  FakeQuant ops in eval graph : %d" % num_fq)
    print("  float accuracy              : %.2f%%" % float_acc)
    print("  QAT (quantized eval) acc.   : %.2f%%" % qat_acc)
    print("  difference (QAT - float)    : %+.2f points" % (qat_acc - float_acc))
    if drop > MAX_DROP_POINTS:
        print("FAIL: QAT is %.2f points below float (limit %.1f)"
              % (drop, MAX_DROP_POINTS))
        return 1
    print("OK: QAT within %.1f point of float" % MAX_DROP_POINTS)
    return 0


if __name__ == "__main__":
    sys.exit(main())
