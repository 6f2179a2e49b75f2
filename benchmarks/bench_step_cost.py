"""QAT/float training-step time ratio of qat_rewrite and of tfmot, on the same Keras models.

tf_keras.applications MobileNetV2 and ResNet50, weights=None, 224x224, batch 8, CPU, SGD with
the batch-norm updates. qat_rewrite: the model called with training=True in a tf.compat.v1
graph, float and rewritten sessions (resnet50_rewrite.py's graphs): the contrib rewrite
(create_training_graph), the same with the training fold's 1/s left on the layer outputs (as
before fold_batch_norm.unscale_on_weights: what that step saves), and the DPU rewrite
(decent_q.CreateQuantizeTrainingGraph). tfmot: the Keras model and its quantize_model copy, each
stepped with train_on_batch. All steps run in turn, one of each per round, so machine load falls
on all of them alike; medians per step. Each tool's ratio is against its own float baseline (a
session step and a Keras step are not the same runtime).

  python benchmarks/bench_step_cost.py [--steps 10] [--warmup 3] [--quick]
"""

import contextlib
import functools
import sys

import bench_common as common
from bench_common import tf_keras, v1
import resnet50_rewrite as graphs  # noqa: E402  (build_graph, add_train_op, time_rewrite)
from qat_rewrite import decent_q  # noqa: E402
from qat_rewrite.passes import rewrite as rewrite_pass  # noqa: E402

BATCH = 8
MODELS = [("MobileNetV2", "mobilenetv2"), ("ResNet50", "resnet50")]


def add_arguments(parser):
  parser.add_argument("--steps", type=int, default=10, help="measured steps per variant")
  parser.add_argument("--warmup", type=int, default=3)


@contextlib.contextmanager
def unscale_on_outputs():
  """The contrib rewrite as it was before the fold's 1/s moved onto the weights."""
  original = rewrite_pass.unscale_on_weights
  rewrite_pass.unscale_on_weights = lambda graph, unscales: []
  try:
    yield
  finally:
    rewrite_pass.unscale_on_weights = original


def dpu_rewrite(b):
  config = decent_q.QuantizeConfig(input_nodes=[b.images.op.name],
                                   output_nodes=[b.logits.op.name],
                                   input_shapes=[b.images.shape.as_list()])
  decent_q.CreateQuantizeTrainingGraph(b.graph, config)


def qat_rewrite_steps(key, size, x, y):
  """(float, QAT, QAT with 1/s on the outputs, DPU QAT) step callables on v1 sessions."""
  qat = graphs.build_graph(key, size)
  graphs.time_rewrite(qat)
  on_outputs = graphs.build_graph(key, size)
  with unscale_on_outputs():
    graphs.time_rewrite(on_outputs)
  dpu = graphs.build_graph(key, size)
  dpu_rewrite(dpu)
  flt = graphs.build_graph(key, size)
  steps = []
  for b in (flt, qat, on_outputs, dpu):
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
  rows, goal, issue, met = [], [], [], True
  for label, key in models:
    ours_f, ours_q, outputs_q, dpu_q, theirs_f, theirs_q = measure(label, key, size, args)
    ours, outputs, dpu = ours_q / ours_f, outputs_q / ours_f, dpu_q / ours_f
    theirs = theirs_q / theirs_f
    met = met and ours <= theirs
    rows.append([label, "%.3f s" % ours_f, "%.3f s" % ours_q, "**%.2f**" % ours,
                 "%.2f" % outputs, "%.3f s" % dpu_q, "**%.2f**" % dpu,
                 "%.3f s" % theirs_f, "%.3f s" % theirs_q, "**%.2f**" % theirs])
    goal.append("%s %.2f vs %.2f" % (label, ours, theirs))
    issue.append("%s %.2f (goal 1.15, %s), DPU %.2f (goal 1.25, %s)" % (
        label, ours, "met" if ours <= 1.15 else "not met", dpu,
        "met" if dpu <= 1.25 else "not met"))
  notes = ["%dx%d, batch %d, CPU, SGD with batch-norm updates; median of %d steps after %d "
           "warm-up, the six variants interleaved in one process. \"1/s on outputs\": the "
           "contrib rewrite with the training fold dividing each layer output by its batch-norm "
           "scale, as before `unscale_on_weights`." % (size, size, BATCH, args.steps, args.warmup),
           "Goal, qat_rewrite's QAT step overhead at most tfmot's: %s (QAT/float, qat_rewrite vs "
           "tfmot: %s)." % ("**met**" if met else "**not met**", "; ".join(goal)),
           "Issue 15's goals: %s." % "; ".join(issue)]
  common.write_table(args, "step_cost", "Training-step cost: QAT/float ratio per tool",
                     ["model", "qat_rewrite float step", "qat_rewrite QAT step",
                      "qat_rewrite QAT/float", "QAT/float, 1/s on outputs", "DPU QAT step",
                      "DPU QAT/float", "Keras float step", "tfmot QAT step",
                      "tfmot QAT/float"], rows, notes)
  return 0


if __name__ == "__main__":
  sys.exit(main())
