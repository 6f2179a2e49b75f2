"""Tensor decomposition of an MNIST CNN, then AMCT quantization-aware training for Ascend.

The AMCT workflow with `from qat_rewrite import amct`: train the float model; auto_decomposition
(meta + checkpoint -> decomposed checkpoint and a JSON record of the graph changes); in the
training script decompose_graph, restore the decomposed weights and fine-tune at a tenth of the
learning rate; then AMCT retrain (create_quant_retrain_config / _model, retrain, record,
save_quant_retrain_model). Prints float, decomposed, fine-tuned and INT8 accuracy on 1,000
held-out digits, the conv FLOPs and the model sizes.

  python examples/decompose/decompose.py [--workdir DIR] [--float_steps N] [--finetune_steps N]
                                         [--retrain_steps N] [--seed S]
"""

import argparse
import os
import sys
import time
import warnings

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ["TF_USE_LEGACY_KERAS"] = "1"  # tf.compat.v1.layers needs tf_keras, not Keras 3.

import tensorflow as tf  # noqa: E402
from absl import logging  # noqa: E402

warnings.filterwarnings("ignore", message=".*is deprecated", category=UserWarning)
tf.get_logger().setLevel("ERROR")
logging.set_verbosity(logging.WARNING)

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(os.path.dirname(HERE)))
sys.path.insert(0, os.path.join(os.path.dirname(HERE), "decent_q"))  # batches, accuracy
from qat_rewrite import amct  # noqa: E402
from qat_rewrite.datasets import load_mnist  # noqa: E402
from qat_rewrite.decompose.auto import format_report  # noqa: E402
from model import accuracy, batches, placeholders  # noqa: E402

v1 = tf.compat.v1
OUTPUT = "model/logits/BiasAdd"


def model_fn(images, is_training):
  """conv 5x5 (1->32), conv 5x5 (32->64), conv 3x3 (64->64), each + BN + ReLU, pools, dense."""
  def conv_bn(x, filters, kernel, name):
    x = v1.layers.conv2d(x, filters, kernel, padding="same", use_bias=False,
                         kernel_initializer=v1.glorot_uniform_initializer(), name=name)
    x = v1.layers.batch_normalization(x, training=is_training, fused=True, name=name + "_bn")
    return tf.nn.relu(x)

  with v1.variable_scope("model"):
    x = v1.layers.max_pooling2d(conv_bn(images, 32, 5, "conv1"), 2, 2)  # 14x14x32
    x = v1.layers.max_pooling2d(conv_bn(x, 64, 5, "conv2"), 2, 2)  # 7x7x64
    x = conv_bn(x, 64, 3, "conv3")
    x = tf.reduce_mean(x, [1, 2])
    return v1.layers.dense(x, 10, kernel_initializer=v1.glorot_uniform_initializer(),
                           name="logits")


def parse_args(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--workdir", default="./decompose_mnist")
  parser.add_argument("--float_steps", type=int, default=1200)
  parser.add_argument("--finetune_steps", type=int, default=400)
  parser.add_argument("--retrain_steps", type=int, default=300)
  parser.add_argument("--max_error", type=float, default=0.6)
  parser.add_argument("--batch_size", type=int, default=64)
  parser.add_argument("--seed", type=int, default=0)
  return parser.parse_args(argv)


def train(args, data, steps, lr, save, restore=None, decomposed=None, retrain=None):
  """Builds the training graph (decomposed and/or quantized as asked), restores, trains, saves."""
  with tf.Graph().as_default() as graph:
    v1.set_random_seed(args.seed)
    images, labels = placeholders()
    loss = v1.losses.sparse_softmax_cross_entropy(labels, model_fn(images, True))
    if decomposed:
      amct.decompose_graph(decomposed)  # before the optimizer and the Saver
    model_vars = v1.global_variables()
    retrain_ops = None
    if retrain:
      amct.create_quant_retrain_config(retrain["config"], graph,
                                       config_defination=os.path.join(HERE, "retrain.cfg"))
      retrain_ops = amct.create_quant_retrain_model(graph, retrain["config"], retrain["record"])
    with tf.control_dependencies(v1.get_collection(v1.GraphKeys.UPDATE_OPS)):
      train_op = v1.train.AdamOptimizer(lr).minimize(loss)
    with v1.Session() as sess:
      sess.run(v1.global_variables_initializer())
      if restore:
        v1.train.Saver(model_vars).restore(sess, restore)
      feed = batches(*data, args.batch_size, args.seed)
      for step in range(1, steps + 1):
        x, y = next(feed)
        _, value = sess.run([train_op, loss], {images: x, labels: y})
        if step == steps:
          print("  step %d  loss %.4f" % (step, value))
      v1.train.Saver(model_vars if not retrain else None).save(sess, save)
  return retrain_ops


def evaluate(test, ckpt, decomposed=None):
  with tf.Graph().as_default():
    v1.set_random_seed(0)  # initializers exist, though restored over; determinism wants a seed
    images, _ = placeholders()
    predictions = tf.argmax(model_fn(images, False), axis=1)
    if decomposed:
      amct.decompose_graph(decomposed)
    with v1.Session() as sess:
      v1.train.Saver().restore(sess, ckpt)
      return accuracy(sess, predictions, images, test)


def export_ascend(paths, decomposed, test):
  """AMCT steps 5-8 on the decomposed eval graph: record, freeze, Ascend model."""
  with tf.Graph().as_default() as graph:
    v1.set_random_seed(0)
    images, _ = placeholders()
    model_fn(images, False)
    amct.decompose_graph(decomposed)
    retrain_ops = amct.create_quant_retrain_model(graph, paths["config"], paths["record"])
    with v1.Session() as sess:
      v1.train.Saver().restore(sess, paths["retrained"])
      sess.run(retrain_ops[-1])
      frozen = v1.graph_util.convert_variables_to_constants(sess, graph.as_graph_def(), [OUTPUT])
  with open(paths["eval_pb"], "wb") as f:
    f.write(frozen.SerializeToString())
  written = amct.save_quant_retrain_model(paths["eval_pb"], [OUTPUT + ":0"], paths["record"],
                                          paths["result"])
  graph_def = v1.GraphDef()
  with open(written["mnist_fake_quant.pb"], "rb") as f:
    graph_def.ParseFromString(f.read())
  with tf.Graph().as_default() as graph:
    tf.import_graph_def(graph_def, name="")
    with v1.Session() as sess:
      int8 = accuracy(sess, tf.argmax(graph.get_tensor_by_name(OUTPUT + ":0"), axis=1),
                      graph.get_tensor_by_name("net_in:0"), test)
  return written, int8


def totals(report):
  """(conv MACs per image, conv weights) before and after, from the decomposition report."""
  flops, weights = [0, 0], [0, 0]
  for row in report:
    decomposed = row["decision"] == "decomposed"
    flops[0] += row["flops_before"]
    flops[1] += row["flops_after"] if decomposed else row["flops_before"]
    weights[0] += row["params_before"]
    weights[1] += row["params_after"] if decomposed else row["params_before"]
  return flops, weights


def checkpoint_bytes(prefix):
  reader = tf.train.load_checkpoint(prefix)
  shapes = reader.get_variable_to_shape_map()
  return sum(4 * max(1, int(tf.TensorShape(s).num_elements())) for s in shapes.values())


def main(argv=None):
  args = parse_args(argv)
  v1.disable_eager_execution()
  tf.config.experimental.enable_op_determinism()
  os.makedirs(args.workdir, exist_ok=True)
  paths = {name: os.path.join(args.workdir, name) for name in (
      "float", "decomposed", "finetuned", "retrained", "config.json", "record.txt",
      "retrained_eval.pb")}
  paths.update(config=paths["config.json"], record=paths["record.txt"],
               eval_pb=paths["retrained_eval.pb"],
               result=os.path.join(args.workdir, "result", "mnist"))
  data, test = load_mnist(seed=args.seed)
  start = time.time()

  print("== Float model (%d steps)" % args.float_steps)
  train(args, data, args.float_steps, 1e-3, paths["float"])
  float_acc = evaluate(test, paths["float"])

  print("\n== auto_decomposition")
  t0 = time.time()
  # max_error: the rank rule's bound on each layer's relative kernel error (default 0.5);
  # this small net's kernels are close to their random start, so a larger budget is needed
  # for a real saving, and fine-tuning wins the accuracy back.
  new_convs = amct.auto_decomposition(paths["float"] + ".meta", paths["float"],
                                      paths["decomposed"], max_error=args.max_error)
  print(format_report(new_convs.report))
  print("  %d new convs in %.1f s; record %s.json" % (len(new_convs), time.time() - t0,
                                                      paths["decomposed"]))
  decomposed_acc = evaluate(test, paths["decomposed"], decomposed=paths["decomposed"])

  print("\n== Fine-tune the decomposed model (%d steps, lr 1e-4)" % args.finetune_steps)
  train(args, data, args.finetune_steps, 1e-4, paths["finetuned"], restore=paths["decomposed"],
        decomposed=paths["decomposed"])
  finetuned_acc = evaluate(test, paths["finetuned"], decomposed=paths["decomposed"])

  print("\n== AMCT retrain of the decomposed model (%d steps)" % args.retrain_steps)
  train(args, data, args.retrain_steps, 1e-4, paths["retrained"], restore=paths["finetuned"],
        decomposed=paths["decomposed"], retrain=paths)
  written, int8_acc = export_ascend(paths, paths["decomposed"], test)
  for path in sorted(written.values()):
    print("  wrote %s (%.0f KB)" % (path, os.path.getsize(path) / 1024))

  flops, weights = totals(new_convs.report)
  print("\nconv MACs per image:   float %.2f M, decomposed %.2f M (%.2fx fewer)"
        % (flops[0] / 1e6, flops[1] / 1e6, flops[0] / flops[1]))
  print("conv weights:          float %d, decomposed %d (%.2fx fewer)"
        % (weights[0], weights[1], weights[0] / weights[1]))
  print("model size:            float checkpoint %.0f KB, decomposed %.0f KB, Ascend INT8 "
        "deploy model %.0f KB" % (checkpoint_bytes(paths["float"]) / 1024,
                                  checkpoint_bytes(paths["decomposed"]) / 1024,
                                  os.path.getsize(written["mnist_quantized.pb"]) / 1024))
  print("\nfloat model:                  %.2f%%" % float_acc)
  print("decomposed (no fine-tune):    %.2f%%" % decomposed_acc)
  print("decomposed, fine-tuned:       %.2f%%" % finetuned_acc)
  print("decomposed, AMCT INT8:        %.2f%%  (%+.2f vs float)" % (int8_acc,
                                                                   int8_acc - float_acc))
  print("done in %.0f s" % (time.time() - start))
  if int8_acc < float_acc - 1.5:
    print("FAIL: the decomposed INT8 model is %.2f points below float (allowed: 1.5)"
          % (float_acc - int8_acc))
    return 1
  return 0


if __name__ == "__main__":
  sys.exit(main())
