"""AMCT quantization-aware training of the MNIST CNN, as in Huawei's retrain workflow.

The only change from an `amct_tensorflow` script is the import. Steps (AMCT's numbering):
float training; 1 create_quant_retrain_config; 2 create_quant_retrain_model on the training
graph; 3-4 optimizer, retrain, checkpoint; 5 the same on the eval graph, restore; 6 run
retrain_ops[-1] (writes the record), freeze; 7-8 save_quant_retrain_model. Then it scores the
float model and the fake-quant model (stock TensorFlow) on 1,000 held-out digits and exits 1 if
the quantized accuracy is more than 1 point below float.

  python examples/amct/retrain.py [--workdir DIR] [--float_steps N] [--retrain_steps N] [--seed S]
"""

import argparse
import os
import sys
import time
import warnings

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ["TF_USE_LEGACY_KERAS"] = "1"  # tf.compat.v1.layers needs tf_keras, not Keras 3.

import tensorflow as tf  # noqa: E402

warnings.filterwarnings("ignore", message=".*is deprecated", category=UserWarning)
tf.get_logger().setLevel("ERROR")

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(os.path.dirname(HERE)))
sys.path.insert(0, os.path.join(os.path.dirname(HERE), "decent_q"))  # the shared MNIST CNN
# import amct_tensorflow as amct
from qat_rewrite import amct  # noqa: E402
from qat_rewrite.datasets import load_mnist  # noqa: E402
from model import accuracy, model_fn, placeholders  # noqa: E402
from train import train_loop  # noqa: E402  (examples/decent_q/train.py)

v1 = tf.compat.v1
OUTPUT = "model/logits/BiasAdd"


def parse_args(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--workdir", default="./amct_mnist")
  parser.add_argument("--float_steps", type=int, default=3000)
  parser.add_argument("--retrain_steps", type=int, default=1500)
  parser.add_argument("--batch_size", type=int, default=64)
  parser.add_argument("--seed", type=int, default=0)
  return parser.parse_args(argv)


def minimize(loss, lr):
  with tf.control_dependencies(v1.get_collection(v1.GraphKeys.UPDATE_OPS)):
    return v1.train.AdamOptimizer(lr).minimize(loss)


def float_model(args, data, test, ckpt):
  """Float training (skipped if the checkpoint exists); returns the float test accuracy."""
  if not tf.io.gfile.exists(ckpt + ".index"):
    with tf.Graph().as_default():
      v1.set_random_seed(args.seed)
      images, labels = placeholders()
      loss = v1.losses.sparse_softmax_cross_entropy(labels, model_fn(images, True))
      train_op = minimize(loss, 1e-3)
      with v1.Session() as sess:
        sess.run(v1.global_variables_initializer())
        train_loop(sess, train_op, loss, images, labels, data, args, args.float_steps, "float")
        v1.train.Saver().save(sess, ckpt)
  with tf.Graph().as_default():
    v1.set_random_seed(args.seed)
    images, _ = placeholders()
    predictions = tf.argmax(model_fn(images, False), axis=1)
    with v1.Session() as sess:
      v1.train.Saver().restore(sess, ckpt)
      return accuracy(sess, predictions, images, test)


def main(argv=None):
  args = parse_args(argv)
  v1.disable_eager_execution()
  tf.config.experimental.enable_op_determinism()
  os.makedirs(args.workdir, exist_ok=True)
  paths = {name: os.path.join(args.workdir, name) for name in (
      "float.ckpt", "retrain.ckpt", "config.json", "record.txt", "retrained_eval.pb")}
  data, test = load_mnist(seed=args.seed)
  start = time.time()
  print("== Float model (%d steps)" % args.float_steps)
  float_accuracy = float_model(args, data, test, paths["float.ckpt"])

  print("\n== Retrain (%d steps from the float checkpoint)" % args.retrain_steps)
  train_graph = tf.Graph()
  with train_graph.as_default():
    v1.set_random_seed(args.seed)
    images, labels = placeholders()
    loss = v1.losses.sparse_softmax_cross_entropy(labels, model_fn(images, True))
    float_vars = v1.global_variables()
    # 1. the per-layer config, from the simple config
    amct.create_quant_retrain_config(paths["config.json"], train_graph,
                                     config_defination=os.path.join(HERE, "retrain.cfg"))
    # 2. quantizers into the training graph, before the optimizer
    retrain_ops = amct.create_quant_retrain_model(train_graph, paths["config.json"],
                                                  paths["record.txt"])
    print(retrain_ops.report)
    # 3. the optimizer; 4. retrain from the float weights and save
    train_op = minimize(loss, 1e-4)
    init = v1.global_variables_initializer()
    with v1.Session() as sess:
      sess.run(init)
      v1.train.Saver(float_vars).restore(sess, paths["float.ckpt"])
      train_loop(sess, train_op, loss, images, labels, data, args, args.retrain_steps,
                 "retrain")
      v1.train.Saver().save(sess, paths["retrain.ckpt"])

  print("\n== Eval graph, record file, quantized model")
  eval_graph = tf.Graph()
  with eval_graph.as_default():
    v1.set_random_seed(args.seed)
    images, _ = placeholders()
    model_fn(images, False)
    # 5. the same rewrite on the eval graph, then restore the retrained checkpoint
    retrain_ops = amct.create_quant_retrain_model(eval_graph, paths["config.json"],
                                                  paths["record.txt"])
    with v1.Session() as sess:
      v1.train.Saver().restore(sess, paths["retrain.ckpt"])
      sess.run(retrain_ops[-1])  # 6. writes the scale/offset of every layer into the record
      frozen = v1.graph_util.convert_variables_to_constants(sess, eval_graph.as_graph_def(),
                                                            [OUTPUT])
  with open(paths["retrained_eval.pb"], "wb") as f:
    f.write(frozen.SerializeToString())
  # 7-8. the deploy model and its stock-TensorFlow twin
  written = amct.save_quant_retrain_model(paths["retrained_eval.pb"], [OUTPUT + ":0"],
                                          paths["record.txt"],
                                          os.path.join(args.workdir, "result", "mnist"))
  for path in sorted(written.values()):
    print("  wrote %s (%.0f KB)" % (path, os.path.getsize(path) / 1024))
  print("  record %s (%d layers)" % (paths["record.txt"],
                                      open(paths["record.txt"]).read().count("key:")))
  quantized_accuracy = fake_quant_accuracy(written["mnist_fake_quant.pb"], test)

  print("\nfloat model:               %.2f%%" % float_accuracy)
  print("fake-quant model (INT8):   %.2f%%  (%+.2f)" % (quantized_accuracy,
                                                       quantized_accuracy - float_accuracy))
  print("done in %.0f s" % (time.time() - start))
  if quantized_accuracy < float_accuracy - 1.0:
    print("FAIL: the fake-quant model is %.2f points below float (allowed: 1.0)"
          % (float_accuracy - quantized_accuracy))
    return 1
  return 0


def fake_quant_accuracy(path, test):
  graph_def = v1.GraphDef()
  with open(path, "rb") as f:
    graph_def.ParseFromString(f.read())
  with tf.Graph().as_default() as graph:
    tf.import_graph_def(graph_def, name="")
    predictions = tf.argmax(graph.get_tensor_by_name(OUTPUT + ":0"), axis=1)
    with v1.Session() as sess:
      return accuracy(sess, predictions, graph.get_tensor_by_name("net_in:0"), test)


if __name__ == "__main__":
  sys.exit(main())
