"""Scores frozen MNIST models on the 1,000 held-out digits: the float .pb and the quantized one.

  python examples/ptq/evaluate.py --float_model F.pb --quantized_model quantize_eval_model.pb
"""

import argparse
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
from qat_rewrite.datasets import load_mnist  # noqa: E402
from qat_rewrite.graph.frozen import load_graph_def  # noqa: E402

INPUT = "net_in:0"
OUTPUT = "model/logits/BiasAdd"


def accuracy(pb_path, output, seed=0):
  """Top-1 accuracy in percent of `output` in the frozen model at `pb_path`."""
  x, y = load_mnist(seed=seed)[1]
  with tf.Graph().as_default():
    tf.import_graph_def(load_graph_def(pb_path), name="")
    with tf.compat.v1.Session() as sess:
      logits = np.concatenate([sess.run(output + ":0", {INPUT: x[i:i + 500]})
                               for i in range(0, len(x), 500)])
  return 100.0 * float(np.mean(logits.argmax(1) == y))


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--float_model", required=True)
  parser.add_argument("--quantized_model", required=True)
  parser.add_argument("--max_drop", type=float, default=2.0, help="exit 1 beyond this many points")
  args = parser.parse_args(argv)
  float_acc = accuracy(args.float_model, OUTPUT)
  quant_acc = accuracy(args.quantized_model, OUTPUT + "/aquant")
  print("float model              : %.2f%%" % float_acc)
  print("quantize_eval_model.pb   : %.2f%%" % quant_acc)
  print("drop                     : %+.2f points" % (float_acc - quant_acc))
  if float_acc - quant_acc > args.max_drop:
    print("FAIL: quantize_eval_model.pb is %.2f points below float (allowed: %.1f)"
          % (float_acc - quant_acc, args.max_drop))
    return 1
  return 0


if __name__ == "__main__":
  sys.exit(main())
