"""Per-channel weight quantizers: forward and gradient time, TF's gradient kernel vs the rewrite's.

Each model's weights (random, their real shapes), each through a FakeQuantWithMinMaxVarsPerChannel
on its per-channel range, channels last as the rewrite quantizes them (a depthwise kernel
[h, w, c, m] as [h, w, c·m]). One session run computes every quantized weight (forward) or every
weight's gradient through its quantizer (forward + gradient), once with TF's registered gradient
(FakeQuantWithMinMaxVarsPerChannelGradient) and once with the training rewrite's
(`quant/per_channel_gradient`). The variants run in turn; medians. This is what a QAT step with
per-channel weights (the README's int8 settings) spends on its weight quantizers.

  python benchmarks/bench_per_channel_gradient.py [--steps 5] [--quick]
"""

import contextlib

import numpy as np

import bench_common as common
from bench_common import tf_keras, v1
import tensorflow as tf  # noqa: E402
from qat_rewrite.quant import per_channel_gradient  # noqa: E402

VGG_16 = ([(3, 3, 3, 64), (3, 3, 64, 64), (3, 3, 64, 128), (3, 3, 128, 128), (3, 3, 128, 256)]
          + [(3, 3, 256, 256)] * 2 + [(3, 3, 256, 512)] + [(3, 3, 512, 512)] * 5
          + [(7, 7, 512, 4096), (1, 1, 4096, 4096), (1, 1, 4096, 1000)])  # tf_slim.nets.vgg


def add_arguments(parser):
  parser.add_argument("--steps", type=int, default=5, help="measured runs per variant")
  parser.add_argument("--warmup", type=int, default=1)


def keras_kernels(build):
  """Channels-last shapes of a tf_keras model's conv, depthwise and dense kernels."""
  tf_keras.backend.clear_session()
  model = build(weights=None, input_shape=(224, 224, 3))
  shapes = []
  for layer in model.layers:
    for weight in layer.weights:
      name, shape = weight.name, tuple(weight.shape.as_list())
      if "depthwise_kernel" in name:
        shapes.append(shape[:2] + (shape[2] * shape[3],))
      elif name.endswith("kernel:0"):
        shapes.append(shape)
  return shapes


def quantizer_graph(shapes, fast):
  """(graph, forward fetch, forward + gradient fetch) over weights of `shapes`."""
  rng = np.random.RandomState(0)
  with tf.Graph().as_default() as graph:
    weights, outputs = [], []
    for i, shape in enumerate(shapes):
      w = v1.get_variable("w%d" % i, shape, initializer=v1.random_normal_initializer(0, 0.05,
                                                                                     seed=i))
      low = tf.constant(-rng.uniform(0.05, 0.2, shape[-1]).astype(np.float32))
      high = tf.constant(rng.uniform(0.05, 0.2, shape[-1]).astype(np.float32))
      with per_channel_gradient.overridden(graph) if fast else contextlib.nullcontext():
        outputs.append(tf.quantization.fake_quant_with_min_max_vars_per_channel(
            w, low, high, num_bits=8, narrow_range=True))
      weights.append(w)
    # Sums fetched, not tf.group: Grappler prunes an op whose output only a group reads.
    forward = tf.add_n([tf.reduce_sum(o) for o in outputs])
    # The forward runs with the gradient, as in a training step (ours does not read its output).
    gradients = tf.add_n([forward] + [tf.reduce_sum(g) for g in tf.gradients(
        outputs, weights, [tf.ones_like(o) for o in outputs])])
    init = v1.global_variables_initializer()
  return graph, init, forward, gradients


def measure(shapes, args):
  """[TF forward, TF forward + gradient, ours forward + gradient] median seconds."""
  steps = []
  for fast in (False, True):
    graph, init, forward, gradients = quantizer_graph(shapes, fast)
    sess = v1.Session(graph=graph)
    sess.run(init)
    if not fast:
      steps.append(lambda sess=sess, f=forward: sess.run(f))
    steps.append(lambda sess=sess, g=gradients: sess.run(g))
  return common.interleaved_medians(steps, args.warmup, args.steps)


def main(argv=None):
  args = common.parse_args(__doc__, add_arguments, argv)
  models = [("vgg_16 (tf_slim)", VGG_16),
            ("MobileNetV2", keras_kernels(tf_keras.applications.MobileNetV2)),
            ("ResNet50", keras_kernels(tf_keras.applications.ResNet50))]
  if args.quick:
    models, args.steps, args.warmup = [("tiny", [(3, 3, 8, 16), (16, 10)])], 2, 1
  rows = []
  for label, shapes in models:
    forward, theirs, ours = measure(shapes, args)
    elements = sum(int(np.prod(s)) for s in shapes)
    rows.append([label, "%.1f M" % (elements / 1e6), "%.3f s" % forward, "%.3f s" % theirs,
                 "%.3f s" % ours, "%.3f s" % (theirs - forward), "%.3f s" % (ours - forward),
                 "**%.1f×**" % ((theirs - forward) / (ours - forward))
                 if ours > forward else "–"])
    print(rows[-1], flush=True)
  common.write_table(
      args, "per_channel_gradient", "Per-channel weight quantizers: TF's gradient kernel vs "
      "the rewrite's elementwise gradient",
      ["model", "weights", "forward", "forward + TF's gradient", "forward + ours",
       "TF's gradient alone", "ours alone", "gradient speed-up"], rows,
      ["Every weight of the model through its per-channel FakeQuant, one session run; median "
       "of %d runs after %d warm-up, the three variants in turn. \"alone\": forward + gradient "
       "minus forward." % (args.steps, args.warmup)])


if __name__ == "__main__":
  main()
