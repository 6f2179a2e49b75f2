"""decent_q QAT, part 2 of 2: evaluate the quantized model and write the deploy files.

The vai_q_tensorflow workflow on TF 2.x: build the float eval graph, call
decent_q.CreateQuantizeEvaluationGraph, then decent_q.CreateQuantizeDeployGraph with the QAT
checkpoint. Scores the float model, the quantized eval graph and the frozen
quantize_eval_model.pb in stock TensorFlow; exits 1 if the .pb is more than 1 accuracy point
below float, so the printed figures can be trusted.

  python examples/decent_q/eval.py [--workdir DIR] [--seed S]   (after train.py)
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
from qat_rewrite.targets.dpu import agreement  # noqa: E402
from model import (INPUT_NODE, INPUT_SHAPE, OUTPUT_NODE, accuracy, model_fn,  # noqa: E402
                   placeholders)

v1 = tf.compat.v1
MAX_DROP_POINTS = 1.0


def parse_args(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--workdir", default="./decent_q_mnist",
                      help="train.py's workdir; deploy files go to WORKDIR/quantize_results")
  parser.add_argument("--seed", type=int, default=0, help="the data split train.py used")
  return parser.parse_args(argv)


def checkpoint_in(directory):
  """The latest checkpoint in `directory`; exits with a hint if train.py has not run."""
  ckpt = tf.train.latest_checkpoint(directory)
  if ckpt is None:
    sys.exit("no checkpoint in %s: run train.py with the same --workdir first" % directory)
  return ckpt


def float_accuracy(float_ckpt, test_data):
  """The baseline: the float eval graph (batch norm on moving statistics), float weights."""
  with tf.Graph().as_default():
    images, _ = placeholders()
    predictions = tf.argmax(model_fn(images, is_training=False), 1)
    saver = v1.train.Saver()
    with v1.Session() as sess:
      saver.restore(sess, float_ckpt)
      return accuracy(sess, predictions, images, test_data)


def quantize_eval_and_deploy(args, qat_dir, test_data):
  """As in the vai_q_tensorflow guide: float eval graph, rewrite, deploy; then score it."""
  with tf.Graph().as_default():
    images, _ = placeholders()
    # Create the float evaluation graph; the predictions are built before the rewrite, which
    # reroutes them onto the quantized logits.
    logits = model_fn(images, is_training=False)
    predictions = tf.argmax(logits, 1)
    # Set the quantize configurations: the same as train.py's.
    q_config = decent_q.QuantizeConfig(input_nodes=[INPUT_NODE], output_nodes=[OUTPUT_NODE],
                                       input_shapes=[INPUT_SHAPE],
                                       output_dir=os.path.join(args.workdir, "quantize_results"))
    # Call the decent_q api to create the quantize evaluation graph.
    print(decent_q.CreateQuantizeEvaluationGraph(config=q_config))
    # Call the decent_q api to freeze the model and generate the deploy model.
    written = decent_q.CreateQuantizeDeployGraph(checkpoint=qat_dir, config=q_config)
    # Start the evaluation: the checkpoint holds the weights and the position histograms.
    saver = v1.train.Saver()
    with v1.Session() as sess:
      saver.restore(sess, checkpoint_in(qat_dir))
      return accuracy(sess, predictions, images, test_data), written


def frozen_accuracy(pb_path, test_data):
  """Scores quantize_eval_model.pb as any user would: stock TF, no qat_rewrite code involved."""
  graph_def = v1.GraphDef()
  with open(pb_path, "rb") as f:
    graph_def.ParseFromString(f.read())
  with tf.Graph().as_default() as graph:
    tf.import_graph_def(graph_def, name="")
    images = graph.get_tensor_by_name(INPUT_NODE + ":0")
    logits = graph.get_tensor_by_name(OUTPUT_NODE + "/aquant:0")  # the deployed output
    predictions = tf.argmax(logits, 1)
    with v1.Session() as sess:
      return accuracy(sess, predictions, images, test_data)


def deploy_accuracy(written, test_data):
  """Scores deploy_model.pb run with integers only, and how often its integers equal those of
  quantize_eval_model.pb over all quantized tensors: the check that the deploy graph means
  what was evaluated. Returns (accuracy, tensors compared, share equal, largest difference)."""
  images = {INPUT_NODE: test_data[0]}
  results = agreement.compare(written, images).values()
  ints, _ = agreement.run_deploy_model(written, images)[OUTPUT_NODE + "/aquant"]
  equal = sum(r.equal_share * r.elements for r in results) / sum(r.elements for r in results)
  worst = max(r.max_lsb for r in results)
  return 100.0 * float((ints.argmax(1) == test_data[1]).mean()), len(results), equal, worst


def main(argv=None):
  args = parse_args(argv)
  v1.disable_eager_execution()
  float_ckpt = checkpoint_in(os.path.join(args.workdir, "float"))
  qat_dir = os.path.join(args.workdir, "qat")
  checkpoint_in(qat_dir)
  _, test_data = load_mnist(seed=args.seed)
  start = time.time()

  print("== Quantize evaluation graph and deploy files (checkpoint %s)" % qat_dir)
  quant_acc, written = quantize_eval_and_deploy(args, qat_dir, test_data)
  print("\nFiles written to %s:" % os.path.dirname(written["quantize_eval_model.pb"]))
  for name in sorted(written):
    print("  %-34s %8d bytes" % (name, os.path.getsize(written[name])))

  float_acc = float_accuracy(float_ckpt, test_data)
  pb_acc = frozen_accuracy(written["quantize_eval_model.pb"], test_data)
  deploy_acc, tensors, equal, worst = deploy_accuracy(written, test_data)
  drop = round(float_acc - pb_acc, 6)  # exactly 1.0 point must pass
  print("\n== Results on %d test digits (%.0f s)" % (len(test_data[0]), time.time() - start))
  print("  float model                     : %.2f%%" % float_acc)
  print("  quantized eval graph            : %.2f%%" % quant_acc)
  print("  quantize_eval_model.pb          : %.2f%%" % pb_acc)
  print("  deploy_model.pb, integers only  : %.2f%%" % deploy_acc)
  print("  deploy vs eval model, %2d tensors: %.2f%% equal integers, at most %d LSB apart"
        % (tensors, 100 * equal, worst))
  print("  drop (float - .pb)              : %+.2f points" % drop)
  if drop > MAX_DROP_POINTS:
    print("FAIL: quantize_eval_model.pb is %.2f points below float (allowed: %.1f)"
          % (drop, MAX_DROP_POINTS))
    return 1
  print("OK: quantize_eval_model.pb is within %.1f point of float" % MAX_DROP_POINTS)
  return 0


if __name__ == "__main__":
  sys.exit(main())
