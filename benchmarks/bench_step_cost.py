"""QAT/float training-step time ratio of qat_rewrite and of tfmot, on the same Keras models.

tf_keras.applications MobileNetV2 and ResNet50, weights=None, 224x224, batch 8, CPU, SGD with
the batch-norm updates. qat_rewrite: the model called with training=True in a tf.compat.v1
graph, float and rewritten sessions (resnet50_rewrite.py's graphs). tfmot: the Keras model and
its quantize_model copy, each stepped with train_on_batch. The four steps run in turn, one of
each per round, so machine load falls on all of them alike; medians per step. Each tool's ratio
is against its own float baseline (a session step and a Keras step are not the same runtime).

  python benchmarks/bench_step_cost.py [--steps 10] [--warmup 3] [--quick]
"""

import functools
import sys

import bench_common as common
from bench_common import tf_keras, v1
import resnet50_rewrite as graphs  # noqa: E402  (build_graph, add_train_op, time_rewrite)

BATCH = 8
MODELS = [("MobileNetV2", "mobilenetv2"), ("ResNet50", "resnet50")]


def add_arguments(parser):
  parser.add_argument("--steps", type=int, default=10, help="measured steps per variant")
  parser.add_argument("--warmup", type=int, default=3)


def qat_rewrite_steps(key, size, x, y):
  """(float step, QAT step) callables on v1 sessions of the same model."""
  qat = graphs.build_graph(key, size)
  graphs.time_rewrite(qat)
  flt = graphs.build_graph(key, size)
  steps = []
  for b in (flt, qat):
    graphs.add_train_op(b)
    sess = v1.Session(graph=b.graph)
    sess.run(b.init)
    steps.append(functools.partial(sess.run, b.train_op, {b.images: x, b.labels: y}))
  return steps


def keras_step(model, x, y):
  model.compile(tf_keras.optimizers.SGD(0.01),
                tf_keras.losses.SparseCategoricalCrossentropy(from_logits=True))
  return functools.partial(model.train_on_batch, x, y)


def tfmot_steps(key, size, x, y):
  """(float step, QAT step) callables: the Keras model and tfmot's quantize_model of it."""
  tf_keras.backend.clear_session()
  model = graphs.MODELS[key](weights=None, input_shape=(size, size, 3),
                             classifier_activation=None)
  qat = common.tfmot().quantization.keras.quantize_model(model)
  return keras_step(model, x, y), keras_step(qat, x, y)


def measure(label, key, size, args):
  x, y = common.random_batch(BATCH, size)
  steps = list(qat_rewrite_steps(key, size, x, y)) + list(tfmot_steps(key, size, x, y))
  times = common.interleaved_medians(steps, args.warmup, args.steps)
  print("%s: %s" % (label, ", ".join("%.3f s" % t for t in times)), flush=True)
  return times


def main(argv=None):
  args = common.parse_args(__doc__, add_arguments, argv)
  models, size = MODELS, 224
  if args.quick:
    graphs.MODELS["convnet"] = lambda input_shape, **_: common.conv_net(3, input_shape[0])
    models, size, args.steps, args.warmup = [("ConvNet-3", "convnet")], 32, 2, 1
  rows, goal, met = [], [], True
  for label, key in models:
    ours_f, ours_q, theirs_f, theirs_q = measure(label, key, size, args)
    ours, theirs = ours_q / ours_f, theirs_q / theirs_f
    rows.append([label, "%.3f s" % ours_f, "%.3f s" % ours_q, "**%.2f**" % ours,
                 "%.3f s" % theirs_f, "%.3f s" % theirs_q, "**%.2f**" % theirs])
    goal.append("%s %.2f vs %.2f" % (label, ours, theirs))
    met = met and ours <= theirs
  notes = ["%dx%d, batch %d, CPU, SGD with batch-norm updates; median of %d steps after %d "
           "warm-up, the four variants interleaved in one process." % (
               size, size, BATCH, args.steps, args.warmup),
           "Goal, qat_rewrite's QAT step overhead at most tfmot's: %s (QAT/float, qat_rewrite vs "
           "tfmot: %s)." % ("**met**" if met else "**not met**", "; ".join(goal))]
  common.write_table(args, "step_cost", "Training-step cost: QAT/float ratio per tool",
                     ["model", "qat_rewrite float step", "qat_rewrite QAT step",
                      "qat_rewrite QAT/float", "Keras float step", "tfmot QAT step",
                      "tfmot QAT/float"], rows, notes)
  return 0


if __name__ == "__main__":
  sys.exit(main())
