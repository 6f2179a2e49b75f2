"""Trains the MNIST CNN in float and freezes it to a .pb: the input of post-training quantization.

  python examples/ptq/float_model.py --workdir DIR [--steps N] [--seed S]
writes DIR/float_model.pb (the inference graph, batch norm in inference mode, weights as
constants). The CNN is examples/decent_q/model.py's.
"""

import argparse
import os
import sys
import warnings

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ["TF_USE_LEGACY_KERAS"] = "1"  # tf.compat.v1.layers needs tf_keras, not Keras 3.

import tensorflow as tf  # noqa: E402

warnings.filterwarnings("ignore", message=".*is deprecated", category=UserWarning)
tf.get_logger().setLevel("ERROR")

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "decent_q"))  # model.py, train.py
sys.path.insert(0, os.path.dirname(os.path.dirname(HERE)))  # qat_rewrite from a checkout
from qat_rewrite.datasets import load_mnist  # noqa: E402
from model import OUTPUT_NODE, model_fn, placeholders  # noqa: E402
import train  # noqa: E402  (examples/decent_q/train.py: the float training loop)

v1 = tf.compat.v1


def freeze(float_ckpt):
  """The inference graph (is_training=False) with the checkpoint's weights as constants."""
  with tf.Graph().as_default() as graph:
    v1.set_random_seed(0)  # initializers need a seed under op determinism (restore overwrites)
    images, _ = placeholders()
    model_fn(images, is_training=False)
    with v1.Session() as sess:
      v1.train.Saver().restore(sess, float_ckpt)
      return v1.graph_util.convert_variables_to_constants(sess, graph.as_graph_def(),
                                                          [OUTPUT_NODE])


def float_model(workdir, steps=3000, seed=0):
  """Trains (or reuses WORKDIR/float) and writes WORKDIR/float_model.pb; returns its path."""
  args = argparse.Namespace(workdir=workdir, float_steps=steps, batch_size=64, seed=seed)
  float_dir = os.path.join(workdir, "float")
  os.makedirs(float_dir, exist_ok=True)
  ckpt = tf.train.latest_checkpoint(float_dir)
  if ckpt is None:
    tf.config.experimental.enable_op_determinism()
    ckpt = train.train_float(args, load_mnist(seed=seed)[0], float_dir)
  path = os.path.join(workdir, "float_model.pb")
  with open(path, "wb") as f:
    f.write(freeze(ckpt).SerializeToString())
  return path


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--workdir", required=True)
  parser.add_argument("--steps", type=int, default=3000)
  parser.add_argument("--seed", type=int, default=0)
  args = parser.parse_args(argv)
  v1.disable_eager_execution()
  print("wrote %s" % float_model(args.workdir, args.steps, args.seed))


if __name__ == "__main__":
  main()
