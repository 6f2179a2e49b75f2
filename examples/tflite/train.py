"""QAT of the MNIST CNN with qat_rewrite.quantize, exported as a fully int8 TFLite model.

Trains in float, fine-tunes with quantization (symmetric, per-channel weights and a learned
input range: what int8 TFLite wants), exports the eval graph with qat_rewrite.export.to_tflite,
scores float and TFLite on 1,000 held-out digits, and exits 1 if TFLite is more than 1 point
below float.

  python examples/tflite/train.py [--workdir DIR] [--float_steps N] [--qat_steps N] [--seed S]
"""

import argparse
import os
import sys
import time
import warnings

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ["TF_USE_LEGACY_KERAS"] = "1"  # tf.compat.v1.layers needs tf_keras, not Keras 3.

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

warnings.filterwarnings("ignore", message=".*is deprecated", category=UserWarning)
tf.get_logger().setLevel("ERROR")

_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(os.path.dirname(_HERE)))  # the source checkout
sys.path.insert(0, os.path.join(os.path.dirname(_HERE), "decent_q"))  # its model.py
from model import INPUT_NODE, OUTPUT_NODE, accuracy, batches, model_fn, placeholders  # noqa: E402
from qat_rewrite import quantize  # noqa: E402
from qat_rewrite.datasets import load_mnist  # noqa: E402
from qat_rewrite.export import agreement, compare_tflite, to_tflite  # noqa: E402

v1 = tf.compat.v1
MAX_DROP_POINTS = 1.0
OPTIONS = dict(symmetric=True, per_channel_weights=True, quantize_inputs=True)


def parse_args(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--workdir", default=None, help="checkpoints and model.tflite "
                      "(default: a new temp dir)")
  parser.add_argument("--float_steps", type=int, default=2000)
  parser.add_argument("--qat_steps", type=int, default=1000)
  parser.add_argument("--batch_size", type=int, default=64)
  parser.add_argument("--seed", type=int, default=0)
  return parser.parse_args(argv)


def train(data, args, steps, lr, quantized, restore=None, save=None):
  """Trains the CNN (rewritten for QAT if `quantized`), from `restore` if given."""
  with tf.Graph().as_default() as graph:
    v1.set_random_seed(args.seed)
    images, labels = placeholders()
    logits = model_fn(images, is_training=True)
    model_vars = v1.global_variables()
    loss = v1.losses.sparse_softmax_cross_entropy(labels, logits)
    if quantized:
      quantize.experimental_create_training_graph(graph, quant_delay=0, **OPTIONS)
    with tf.control_dependencies(v1.get_collection(v1.GraphKeys.UPDATE_OPS)):
      train_op = v1.train.AdamOptimizer(lr).minimize(loss)
    with v1.Session() as sess:
      sess.run(v1.global_variables_initializer())
      if restore:
        v1.train.Saver(var_list=model_vars).restore(sess, restore)
      feed = batches(*data, args.batch_size, args.seed)
      for step in range(1, steps + 1):
        x, y = next(feed)
        _, value = sess.run([train_op, loss], {images: x, labels: y})
        if step % max(1, steps // 4) == 0:
          print("  [%s] step %5d/%d  loss %.4f" % ("qat" if quantized else "float", step,
                                                   steps, value))
      os.makedirs(os.path.dirname(save), exist_ok=True)
      return v1.train.Saver().save(sess, save)


def float_accuracy(checkpoint, data):
  with tf.Graph().as_default():
    images, _ = placeholders()
    predictions = tf.argmax(model_fn(images, is_training=False), 1)
    with v1.Session() as sess:
      v1.train.Saver().restore(sess, checkpoint)
      return accuracy(sess, predictions, images, data)


def eval_graph():
  """The eval graph rewritten as the training graph was; the QAT checkpoint restores into it."""
  with tf.Graph().as_default() as graph:
    images, _ = placeholders()
    model_fn(images, is_training=False)
    print(quantize.experimental_create_eval_graph(graph, **OPTIONS).summary())
  return graph


def tflite_accuracy(export, data):
  """Top-1 accuracy of the int8 model, and its integers' agreement with the eval graph."""
  x, y = data
  got, _, _ = agreement.run_tflite(export.path, {INPUT_NODE: x})
  predictions = np.argmax(next(iter(got.values())), axis=1)
  result = agreement.combine(compare_tflite(export, {INPUT_NODE: x}).values())
  return 100.0 * np.mean(predictions == y), result


def main(argv=None):
  args = parse_args(argv)
  v1.disable_eager_execution()
  workdir = args.workdir or os.path.join("/tmp", "tflite_mnist_%d" % os.getpid())
  train_data, test_data = load_mnist(seed=args.seed)
  start = time.time()
  print("== Float: %d steps" % args.float_steps)
  float_ckpt = train(train_data, args, args.float_steps, 1e-3, False,
                     save=os.path.join(workdir, "float", "model.ckpt"))
  float_acc = float_accuracy(float_ckpt, test_data)
  print("== QAT fine-tuning: %d steps, symmetric, per-channel weights, quantized input"
        % args.qat_steps)
  train(train_data, args, args.qat_steps, 1e-4, True, restore=float_ckpt,
        save=os.path.join(workdir, "qat", "model.ckpt"))
  print("== Export")
  export = to_tflite(eval_graph(), os.path.join(workdir, "model.tflite"), [INPUT_NODE],
                     [OUTPUT_NODE], checkpoint=os.path.join(workdir, "qat"))
  tflite_acc, agree = tflite_accuracy(export, test_data)
  print("\n== Results (%.0f s), %d held-out digits" % (time.time() - start, len(test_data[0])))
  print("  float accuracy            : %.2f%%" % float_acc)
  print("  int8 TFLite accuracy      : %.2f%%  (%s, %d bytes)" % (tflite_acc, export.path,
                                                                export.size_bytes))
  print("  TFLite vs eval graph      : %s" % agreement.format_agreement(agree))
  drop = round(float_acc - tflite_acc, 6)
  if drop > MAX_DROP_POINTS:
    print("FAIL: TFLite is %.2f points below float (allowed: %.1f)" % (drop, MAX_DROP_POINTS))
    return 1
  print("OK: TFLite is within %.1f point of float" % MAX_DROP_POINTS)
  return 0


if __name__ == "__main__":
  sys.exit(main())
