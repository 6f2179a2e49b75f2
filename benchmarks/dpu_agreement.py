"""Measures how closely deploy_model.pb (integer reference runner) matches quantize_eval_model.pb
(TensorFlow) on a Keras MobileNetV2 after a few decent_q QAT steps, and how long each takes.

Random weights and random images: the agreement is about arithmetic, not accuracy. The issue's
bar: the same integer on at least 99.9% of output elements, never more than 1 LSB apart.

  python benchmarks/dpu_agreement.py [--size 224] [--alpha 1.0] [--batch 4] [--steps 3]
"""

import argparse
import os
import sys
import tempfile
import time
import warnings

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ["TF_USE_LEGACY_KERAS"] = "1"  # tf_keras, not Keras 3: graph mode needs it.

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
import tf_keras  # noqa: E402

warnings.filterwarnings("ignore", category=UserWarning)
tf.get_logger().setLevel("ERROR")

# Run from a source checkout without installing the package.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from qat_rewrite import decent_q  # noqa: E402
from qat_rewrite.graph import frozen  # noqa: E402
from qat_rewrite.targets.dpu import agreement  # noqa: E402

v1 = tf.compat.v1
INPUT = "images"


def parse_args(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--size", type=int, default=224, help="input height and width")
  parser.add_argument("--alpha", type=float, default=1.0, help="MobileNetV2 width multiplier")
  parser.add_argument("--batch", type=int, default=4, help="images per step and compared")
  parser.add_argument("--steps", type=int, default=3, help="QAT training steps")
  return parser.parse_args(argv)


def build(args, training, labels):
  """MobileNetV2 on a placeholder; returns (loss, logits op name)."""
  x = v1.placeholder(tf.float32, [None, args.size, args.size, 3], name=INPUT)
  model = tf_keras.applications.MobileNetV2(weights=None, input_shape=(args.size, args.size, 3),
                                            alpha=args.alpha, classes=10,
                                            classifier_activation=None)
  logits = model(x, training=training)
  return v1.losses.sparse_softmax_cross_entropy(labels, logits), logits.op.name


def main(argv=None):
  args = parse_args(argv)
  v1.disable_eager_execution()
  rng = np.random.RandomState(0)
  images = rng.uniform(-1, 1, (args.batch, args.size, args.size, 3)).astype(np.float32)
  labels = rng.randint(0, 10, args.batch)
  workdir = tempfile.mkdtemp(prefix="dpu_agreement.")
  with tf.Graph().as_default():
    _, output = build(args, False, labels)
  config = decent_q.QuantizeConfig(input_nodes=[INPUT], output_nodes=[output],
                                   input_shapes=[[-1, args.size, args.size, 3]],
                                   output_dir=os.path.join(workdir, "out"))

  with tf.Graph().as_default():
    loss, _ = build(args, True, labels)
    decent_q.CreateQuantizeTrainingGraph(config=config)
    with tf.control_dependencies(v1.get_collection(v1.GraphKeys.UPDATE_OPS)):
      train_op = v1.train.AdamOptimizer(1e-3).minimize(loss)
    with v1.Session() as sess:
      sess.run(v1.global_variables_initializer())
      for _ in range(args.steps):
        sess.run(train_op, {INPUT + ":0": images})
      v1.train.Saver().save(sess, os.path.join(workdir, "ckpt", "model.ckpt"))
  with tf.Graph().as_default():
    build(args, False, labels)
    decent_q.CreateQuantizeEvaluationGraph(config=config)
    files = decent_q.CreateQuantizeDeployGraph(checkpoint=os.path.join(workdir, "ckpt"),
                                               config=config)

  feeds = {INPUT: images}
  start = time.time()
  frozen.run_graph_def(frozen.load_graph_def(files["quantize_eval_model.pb"]), feeds,
                       [output + "/aquant"])
  eval_s = time.time() - start
  start = time.time()
  agreement.run_deploy_model(files, feeds)
  runner_s = time.time() - start
  results = agreement.compare(files, feeds)
  rows = {"output (%s)" % output: [results[output + "/aquant"]],
          "all %d quantized tensors" % len(results): list(results.values())}
  print("MobileNetV2 alpha %.2f, %dx%d, %d QAT steps, %d random images" % (
      args.alpha, args.size, args.size, args.steps, args.batch))
  print("| compared | elements | equal integers | max difference |")
  print("|---|---|---|---|")
  for label, group in rows.items():
    elements = sum(r.elements for r in group)
    equal = sum(r.equal_share * r.elements for r in group) / elements
    print("| %s | %d | %.4f%% | %d LSB |" % (label, elements, 100 * equal,
                                            max(r.max_lsb for r in group)))
  print("Time for the %d images: eval model in TensorFlow %.2f s, deploy model in the integer "
        "reference runner %.2f s" % (args.batch, eval_s, runner_s))

if __name__ == "__main__":
  main()
