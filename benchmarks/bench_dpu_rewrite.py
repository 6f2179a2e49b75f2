"""The DPU (decent_q) path's own cost on ResNet50: rewrite times and graph sizes.

tf_keras.applications.ResNet50 (weights=None, logits out), batch 8, called with training=True
for the training graph and training=False for the evaluation graph, each in a tf.compat.v1
graph with a loss. Timed in one process: `CreateQuantizeTrainingGraph`, one training step
(so every position has a count), `CreateQuantizeEvaluationGraph`, `CreateQuantizeDeployGraph`
from the checkpoint. Ops: the training graph after the rewrite against the float one.
Goals (issue 14): training rewrite <= 2 s, deploy <= 5 s, training-graph ops <= 3x float.

  python benchmarks/bench_dpu_rewrite.py [--quick] [--size N]   (--quick: a 3-conv net at 32²)
"""

import os
import sys
import tempfile
import time

import bench_common as common
from bench_common import tf, tf_keras
from qat_rewrite import decent_q

v1 = tf.compat.v1
BATCH = 8


def add_arguments(parser):
  parser.add_argument("--size", type=int, default=224, help="input height and width")


def _graph(build, size, training):
  tf_keras.backend.clear_session()
  return common.keras_model_graph(build, BATCH, size, training=training)


def _config(net, output_dir):
  return decent_q.QuantizeConfig(input_nodes=[net.images.op.name],
                                 output_nodes=[net.logits.op.name],
                                 input_shapes=[net.images.shape.as_list()],
                                 output_dir=output_dir)


def measure(build, size, directory):
  """{figure: value} for one model."""
  out = {}
  net = _graph(build, size, training=True)
  out["float ops"] = common.graph_nodes(net.graph)
  with net.graph.as_default():
    start = time.perf_counter()
    decent_q.CreateQuantizeTrainingGraph(config=_config(net, directory))
    out["training rewrite s"] = time.perf_counter() - start
    out["training ops"] = common.graph_nodes(net.graph)
    common.add_train_op(net)
    images, labels = common.random_batch(BATCH, size)
    with v1.Session() as sess:
      sess.run(net.init)
      start = time.perf_counter()
      sess.run(net.train_op, {net.images: images, net.labels: labels})
      out["training step s"] = time.perf_counter() - start
      checkpoint = net.saver.save(sess, os.path.join(directory, "model.ckpt"))
  net = _graph(build, size, training=False)
  with net.graph.as_default():
    start = time.perf_counter()
    decent_q.CreateQuantizeEvaluationGraph(config=_config(net, directory))
    out["eval rewrite s"] = time.perf_counter() - start
    start = time.perf_counter()
    decent_q.CreateQuantizeDeployGraph(checkpoint=checkpoint, config=_config(net, directory))
    out["deploy s"] = time.perf_counter() - start
  return out


def main(argv=None):
  args = common.parse_args(__doc__, add_arguments, argv=argv)
  if args.quick:
    import functools  # pylint: disable=import-outside-toplevel
    name, size = "ConvNet-3", 32
    build = functools.partial(common.conv_net, 3, size)
  else:
    name, size = "ResNet50", args.size
    build = lambda: tf_keras.applications.ResNet50(  # noqa: E731
        weights=None, input_shape=(size, size, 3), classifier_activation=None)
  with tempfile.TemporaryDirectory() as directory:
    figures = measure(build, size, directory)
  for key, value in figures.items():
    print("%s: %s: %s" % (name, key, "{:,}".format(value) if isinstance(value, int)
                          else "%.2f" % value), flush=True)
  ratio = figures["training ops"] / figures["float ops"]
  goals = [("training rewrite <= 2 s", figures["training rewrite s"] <= 2.0),
           ("deploy <= 5 s", figures["deploy s"] <= 5.0),
           ("training-graph ops <= 3x float (%.1fx)" % ratio, ratio <= 3.0)]
  notes = ["Goal, %s: %s." % (goal, "**met**" if met else "**not met**") for goal, met in goals]
  row = [name, "%d²" % size, "{:,}".format(figures["float ops"]),
         "{:,}".format(figures["training ops"]), "%.1fx" % ratio,
         "%.2f s" % figures["training rewrite s"], "%.2f s" % figures["eval rewrite s"],
         "%.2f s" % figures["deploy s"], "%.2f s" % figures["training step s"]]
  common.write_table(args, "dpu_rewrite", "DPU path: rewrite times and graph size",
                     ["model", "input", "float ops", "DPU training ops", "ratio",
                      "training rewrite", "eval rewrite", "deploy", "first training step"],
                     [row], notes)
  return 0


if __name__ == "__main__":
  sys.exit(main())
