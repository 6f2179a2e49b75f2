"""decent_q QAT, part 1 of 2: train the float MNIST CNN, then fine-tune it quantized.

The vai_q_tensorflow QAT workflow on TF 2.x: build the float training graph, call
decent_q.CreateQuantizeTrainingGraph, create the optimizer, and train from the float checkpoint.
Checkpoints go to WORKDIR/float (trained only if missing) and WORKDIR/qat; eval.py reads them.

  python examples/decent_q/train.py [--workdir DIR] [--float_steps N] [--qat_steps N] [--seed S]
"""

import argparse
import os
import sys
import time
import warnings

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ["TF_USE_LEGACY_KERAS"] = "1"  # tf.compat.v1.layers needs tf_keras, not Keras 3.

import tensorflow as tf  # noqa: E402

# tf.compat.v1.layers warns on every call; keep the example's output readable.
warnings.filterwarnings("ignore", message=".*is deprecated", category=UserWarning)
tf.get_logger().setLevel("ERROR")

# Run from a source checkout without installing the package (model.py sits next to this file).
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
from qat_rewrite import decent_q  # noqa: E402
from qat_rewrite.datasets import load_mnist  # noqa: E402
from model import (INPUT_NODE, INPUT_SHAPE, OUTPUT_NODE, batches, model_fn,  # noqa: E402
                   placeholders)

v1 = tf.compat.v1


def parse_args(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--workdir", default="./decent_q_mnist",
                      help="checkpoints (float/, qat/) and deploy files (quantize_results/)")
  parser.add_argument("--float_steps", type=int, default=3000,
                      help="float training steps, if WORKDIR/float has no checkpoint yet")
  parser.add_argument("--qat_steps", type=int, default=1500, help="quantized fine-tuning steps")
  parser.add_argument("--batch_size", type=int, default=64)
  parser.add_argument("--seed", type=int, default=0, help="data split, init and batch order")
  return parser.parse_args(argv)


def train_loop(sess, train_op, loss, images, labels, data, args, steps, label):
  """Runs `steps` optimizer steps, printing the loss five times."""
  feed = batches(*data, args.batch_size, args.seed)
  start = time.time()
  for i in range(1, steps + 1):
    x, y = next(feed)
    _, value = sess.run([train_op, loss], {images: x, labels: y})
    if i % max(1, steps // 5) == 0 or i == steps:
      print("  [%s] step %5d/%d  loss %.4f  (%.0f s)" % (label, i, steps, value,
                                                        time.time() - start))


def minimize(loss, lr):
  """Adam with the batch-norm moving-average updates: they only happen if these ops run."""
  step = v1.train.get_or_create_global_step()
  with tf.control_dependencies(v1.get_collection(v1.GraphKeys.UPDATE_OPS)):
    return v1.train.AdamOptimizer(lr).minimize(loss, global_step=step)


def train_float(args, data, float_dir):
  """Step 1: the float model and its checkpoint, the starting point of QAT."""
  with tf.Graph().as_default():
    v1.set_random_seed(args.seed)
    images, labels = placeholders()
    logits = model_fn(images, is_training=True)
    loss = v1.losses.sparse_softmax_cross_entropy(labels, logits)
    train_op = minimize(loss, 1e-3)
    saver = v1.train.Saver()
    with v1.Session() as sess:
      sess.run(v1.global_variables_initializer())
      train_loop(sess, train_op, loss, images, labels, data, args, args.float_steps, "float")
      return saver.save(sess, os.path.join(float_dir, "model.ckpt"))


def train_qat(args, data, float_ckpt, qat_dir):
  """Step 2, as in the vai_q_tensorflow guide: float graph, rewrite, optimizer, train."""
  with tf.Graph().as_default():
    v1.set_random_seed(args.seed)
    images, labels = placeholders()
    # Create the float training graph. The loss belongs to it: the rewrite reroutes the
    # existing consumers of the logits onto their quantizer, so the loss sees quantized logits.
    logits = model_fn(images, is_training=True)
    loss = v1.losses.sparse_softmax_cross_entropy(labels, logits)
    float_vars = v1.global_variables()  # what the float checkpoint holds
    # Set the quantize configurations; eval.py sets the same, so the quantizers match.
    q_config = decent_q.QuantizeConfig(input_nodes=[INPUT_NODE], output_nodes=[OUTPUT_NODE],
                                       input_shapes=[INPUT_SHAPE],
                                       output_dir=os.path.join(args.workdir, "quantize_results"))
    # Call the decent_q api to create the quantize training graph.
    print(decent_q.CreateQuantizeTrainingGraph(config=q_config))
    # Create the optimizer: a fine-tune, so a tenth of the float learning rate.
    train_op = minimize(loss, 1e-4)
    init = v1.global_variables_initializer()  # after the rewrite: covers its position histograms
    float_saver = v1.train.Saver(var_list=float_vars)
    saver = v1.train.Saver()  # everything, histograms included: eval.py needs them
    with v1.Session() as sess:
      sess.run(init)
      float_saver.restore(sess, float_ckpt)  # model weights only; the histograms start empty
      train_loop(sess, train_op, loss, images, labels, data, args, args.qat_steps, "qat")
      return saver.save(sess, os.path.join(qat_dir, "model.ckpt"))


def main(argv=None):
  args = parse_args(argv)
  v1.disable_eager_execution()
  tf.config.experimental.enable_op_determinism()  # same seed, same figures
  float_dir = os.path.join(args.workdir, "float")
  qat_dir = os.path.join(args.workdir, "qat")
  for directory in (float_dir, qat_dir):
    os.makedirs(directory, exist_ok=True)  # Saver.save does not create them
  train_data, _ = load_mnist(seed=args.seed)
  start = time.time()

  float_ckpt = tf.train.latest_checkpoint(float_dir)
  if float_ckpt:
    print("== Float model: reusing %s" % float_ckpt)
  else:
    print("== Float model: %d steps, batch %d, %d training digits"
          % (args.float_steps, args.batch_size, len(train_data[0])))
    float_ckpt = train_float(args, train_data, float_dir)
    print("  saved %s" % float_ckpt)

  print("\n== Quantize training graph: %d steps from the float checkpoint" % args.qat_steps)
  qat_ckpt = train_qat(args, train_data, float_ckpt, qat_dir)
  print("  saved %s" % qat_ckpt)
  print("\nDone in %.0f s; next: python %s --workdir %s"
        % (time.time() - start, os.path.join(os.path.dirname(__file__), "eval.py"), args.workdir))
  return 0


if __name__ == "__main__":
  sys.exit(main())
