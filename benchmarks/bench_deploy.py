"""MobileNetV2 on the device side: int8 TFLite size and single-thread latency vs float TFLite.

qat_rewrite: the model rewritten for QAT (symmetric, per-channel weights), 3 training steps,
its eval graph exported by qat_rewrite.export.to_tflite.
tfmot: quantize_model of the Keras model, converted with int8 input and output (fully integer,
like qat_rewrite's). Float: the Keras model converted as is. Latency: tf.lite.Interpreter with
num_threads=1 (default delegates), batch 1, median of interleaved invokes.

  python benchmarks/bench_deploy.py [--size 224] [--runs 50] [--quick]
"""

import functools
import os
import sys
import tempfile

import bench_common as common
from bench_common import np, tf_keras, v1
from qat_rewrite import quantize
from qat_rewrite.export import to_tflite

OPTIONS = dict(symmetric=True, per_channel_weights=True)


def add_arguments(parser):
  parser.add_argument("--size", type=int, default=224)
  parser.add_argument("--alpha", type=float, default=1.0)
  parser.add_argument("--runs", type=int, default=50, help="measured invokes per model")


def builder(args):
  if args.quick:
    return functools.partial(common.conv_net, 3, args.size), "ConvNet-3"
  apps = tf_keras.applications
  return functools.partial(apps.MobileNetV2, weights=None, input_shape=(args.size, args.size, 3),
                           alpha=args.alpha, classifier_activation=None), \
      "MobileNetV2 %s" % args.alpha


def qat_rewrite_model(build, size):
  """3 QAT steps on random images, then the eval graph exported as int8 TFLite (bytes)."""
  workdir = tempfile.mkdtemp(prefix="bench_deploy_")
  tf_keras.backend.clear_session()
  net = common.keras_model_graph(build, 4, size, training=True)
  quantize.experimental_create_training_graph(net.graph, **OPTIONS)
  common.add_train_op(net)
  x, y = common.random_batch(4, size)
  with v1.Session(graph=net.graph) as sess:
    sess.run(net.init)
    for _ in range(3):
      sess.run(net.train_op, {net.images: x, net.labels: y})
    ckpt = net.saver.save(sess, os.path.join(workdir, "qat", "model.ckpt"))
  tf_keras.backend.clear_session()
  net = common.keras_model_graph(build, 1, size, training=False)
  quantize.experimental_create_eval_graph(net.graph, **OPTIONS)
  export = to_tflite(net.graph, os.path.join(workdir, "model.tflite"), ["images"],
                     [net.logits.op.name], checkpoint=ckpt, input_ranges={"images": (-1, 1)})
  with open(export.path, "rb") as f:
    return f.read()


def keras_models(build):
  """(float TFLite, tfmot int8 TFLite) of the same Keras model."""
  tf_keras.backend.clear_session()
  model = build()
  qat = common.tfmot().quantization.keras.quantize_model(model)
  int8 = common.tfmot_tflite(qat)
  assert not common.float_tensors(int8), "tfmot's TFLite model is not fully integer"
  return common.float_tflite(model), int8


def invoker(content, size):
  """A no-argument callable running one single-thread inference on a fixed random image."""
  interp = common.tflite_interpreter(content, threads=1)
  interp.allocate_tensors()
  detail = interp.get_input_details()[0]
  x = np.random.RandomState(0).uniform(-1, 1, (1, size, size, 3))
  if np.issubdtype(detail["dtype"], np.integer):
    scale, zero = detail["quantization"]
    x = np.clip(np.round(x / scale + zero), -128, 127)
  interp.set_tensor(detail["index"], x.astype(detail["dtype"]))
  return interp.invoke


def main(argv=None):
  args = common.parse_args(__doc__, add_arguments, argv)
  if args.quick:
    args.size, args.runs = 32, 3
  build, label = builder(args)
  float_model, tfmot_model = keras_models(build)
  models = [("float TFLite", float_model),
            ("qat_rewrite int8 TFLite", qat_rewrite_model(build, args.size)),
            ("tfmot int8 TFLite", tfmot_model)]
  times = common.interleaved_medians([invoker(c, args.size) for _, c in models], 5 if not
                                     args.quick else 1, args.runs)
  rows = []
  for (name, content), seconds in zip(models, times):
    rows.append([name, "%.2f MB" % (len(content) / 2.0**20),
                 "%.2f" % (len(content) / float(len(float_model))), "%.1f ms" % (1000 * seconds),
                 "%.2f" % (seconds / times[0])])
  notes = ["%s, %dx%d, random weights, 1000 classes; latency: batch 1, one thread, "
           "median of %d invokes after warm-up, the three models interleaved." % (
               label, args.size, args.size, args.runs)]
  common.write_table(args, "deploy", "%s int8 TFLite vs float TFLite" % label,
                     ["model", "size", "size / float", "latency (1 thread)", "latency / float"],
                     rows, notes)
  return 0


if __name__ == "__main__":
  sys.exit(main())
