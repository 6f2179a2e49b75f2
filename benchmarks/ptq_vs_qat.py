"""Post-training quantization vs quantization-aware training on the MNIST CNN, at 8 and 4 bits.

Same float model (examples/ptq/float_model.py), same 1,000 held-out digits. PTQ: `qat_rewrite
quantize`'s calibration (decent_q.quantize_frozen, 20 batches of 50 training digits). QAT:
decent_q's training rewrite, fine-tuned from the float checkpoint, then its deploy freeze. Both
scored as quantize_eval_model.pb in stock TensorFlow. Prints a markdown table.

  python benchmarks/ptq_vs_qat.py [--workdir DIR] [--qat_steps N] [--bits 8 4]
"""

import argparse
import os
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "examples", "ptq"))
import float_model  # noqa: E402  (sets up TF and the import paths of the examples)
import evaluate  # noqa: E402
import mnist_input  # noqa: E402
import tensorflow as tf  # noqa: E402
import train  # noqa: E402  (examples/decent_q/train.py)
from model import INPUT_NODE, INPUT_SHAPE, OUTPUT_NODE, model_fn, placeholders  # noqa: E402
from qat_rewrite import decent_q  # noqa: E402
from qat_rewrite.datasets import load_mnist  # noqa: E402
from qat_rewrite.graph.frozen import load_graph_def  # noqa: E402

v1 = tf.compat.v1


def config(bits, output_dir):
  """`bits` everywhere except the classifier, kept at 8 bits (weights and logits) as is usual:
  4-bit logits are 16 levels, and argmax ties between them cost more than any layer."""
  classifier = ["model/logits/MatMul:8", OUTPUT_NODE + ":8"] if bits < 8 else []
  return decent_q.QuantizeConfig(input_nodes=[INPUT_NODE], output_nodes=[OUTPUT_NODE],
                                 input_shapes=[INPUT_SHAPE], weight_bit=bits, activation_bit=bits,
                                 nodes_bit=classifier, calib_iter=20, output_dir=output_dir)


def ptq(pb_path, bits, workdir):
  q_config = config(bits, os.path.join(workdir, "ptq%d" % bits))
  paths = decent_q.quantize_frozen(load_graph_def(pb_path), mnist_input.calib_input, q_config)
  return evaluate.accuracy(paths["quantize_eval_model.pb"], OUTPUT_NODE + "/aquant")


def qat(args, bits, workdir):
  q_config = config(bits, os.path.join(workdir, "qat%d" % bits))
  float_ckpt = tf.train.latest_checkpoint(os.path.join(workdir, "float"))
  qat_dir = os.path.join(workdir, "qat%d_ckpt" % bits)
  os.makedirs(qat_dir, exist_ok=True)
  with tf.Graph().as_default():
    v1.set_random_seed(0)
    images, labels = placeholders()
    loss = v1.losses.sparse_softmax_cross_entropy(labels, model_fn(images, is_training=True))
    float_vars = v1.global_variables()
    decent_q.CreateQuantizeTrainingGraph(config=q_config)
    train_op = train.minimize(loss, 1e-4)
    with v1.Session() as sess:
      sess.run(v1.global_variables_initializer())
      v1.train.Saver(var_list=float_vars).restore(sess, float_ckpt)
      loop_args = argparse.Namespace(batch_size=64, seed=0)
      train.train_loop(sess, train_op, loss, images, labels, load_mnist(seed=0)[0], loop_args,
                       args.qat_steps, "qat %d-bit" % bits)
      v1.train.Saver().save(sess, os.path.join(qat_dir, "model.ckpt"))
  with tf.Graph().as_default():
    v1.set_random_seed(0)  # initializers need a seed under op determinism (restore overwrites)
    images, _ = placeholders()
    model_fn(images, is_training=False)
    decent_q.CreateQuantizeEvaluationGraph(config=q_config)
    paths = decent_q.CreateQuantizeDeployGraph(checkpoint=qat_dir, config=q_config)
  return evaluate.accuracy(paths["quantize_eval_model.pb"], OUTPUT_NODE + "/aquant")


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--workdir", default=None, help="default: a new temp dir")
  parser.add_argument("--qat_steps", type=int, default=1500)
  parser.add_argument("--bits", type=int, nargs="+", default=[8, 4])
  args = parser.parse_args(argv)
  v1.disable_eager_execution()
  workdir = args.workdir or tempfile.mkdtemp(prefix="ptq_vs_qat.")
  started = time.time()
  pb_path = float_model.float_model(workdir)
  float_acc = evaluate.accuracy(pb_path, OUTPUT_NODE)
  rows = [(bits, ptq(pb_path, bits, workdir), qat(args, bits, workdir)) for bits in args.bits]
  print("\nMNIST CNN, 1,000 held-out digits, seed 0 (%.0f s)" % (time.time() - started))
  print("| bits (weights and activations) | float | PTQ (20 calibration batches) | "
        "QAT (%d steps) |" % args.qat_steps)
  print("|---|---|---|---|")
  for bits, ptq_acc, qat_acc in rows:
    print("| %d | %.2f%% | %.2f%% | %.2f%% |" % (bits, float_acc, ptq_acc, qat_acc))


if __name__ == "__main__":
  main()
