"""Agreement of the exported int8 TFLite and ONNX models with the QAT eval graph, and sizes.

Prints two markdown tables for the MNIST CNN (examples/tflite) and MobileNetV2 (random
weights, 3 QAT steps, 4 random images): output elements compared, % equal integers and max
LSB difference under TFLite's default XNNPACK delegate and its builtin kernels, int8 and float
TFLite sizes; then the same agreement for ONNX Runtime with and without its graph
optimizations (QDQ fusion into integer kernels). The TFLite table also compares each runtime
with its own eval graph (requantize="xnnpack" / "tflite_builtin"). The ONNX eval graph rounds pool ties to even
(pool_ties="to_even"), as ONNX Runtime does. Without the onnx extra the ONNX table is skipped.

  python benchmarks/export_agreement.py [--size 224] [--alpha 1.0]
"""

import argparse
import importlib.util
import os
import sys
import tempfile

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ["TF_USE_LEGACY_KERAS"] = "1"

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
import tf_keras  # noqa: E402

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, _ROOT)
_spec = importlib.util.spec_from_file_location(
    "tflite_example", os.path.join(_ROOT, "examples", "tflite", "train.py"))
mnist = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(mnist)  # the example's training and eval graph
from qat_rewrite import quantize  # noqa: E402
from qat_rewrite.datasets import load_mnist  # noqa: E402
from qat_rewrite.export import (NotFullyIntegerError, agreement, compare_tflite,  # noqa: E402
                                to_onnx, to_tflite)

v1 = tf.compat.v1
tf.get_logger().setLevel("ERROR")


def float_tflite_size(graph, checkpoint, inputs, output):
  """Bytes of the float TFLite model of the same frozen graph (FakeQuant left to float)."""
  with v1.Session(graph=graph) as sess:
    v1.train.Saver().restore(sess, checkpoint)
    frozen = v1.graph_util.convert_variables_to_constants(sess, graph.as_graph_def(), [output])
  shapes = [(name, [1] + graph.get_tensor_by_name(name + ":0").shape.as_list()[1:])
            for name in inputs]
  converter = v1.lite.TFLiteConverter(frozen, None, None, input_arrays_with_shape=shapes,
                                      output_arrays=[output])
  return len(converter.convert())


def both_kernels(export, feeds, build_eval_graph=None, checkpoint=None):
  """Agreement under the default interpreter (XNNPACK delegate) and TFLite's builtin kernels,
  which round some ties differently (e.g. AvgPool: builtin rounds half away from zero); with
  `build_eval_graph(requantize)`, each runtime against its own eval graph instead."""
  def reference(delegates):
    if build_eval_graph is None:
      return {}
    return dict(reference=build_eval_graph("xnnpack" if delegates else "tflite_builtin"),
                checkpoint=checkpoint)
  return tuple(agreement.combine(compare_tflite(export, feeds, delegates=d,
                                                **reference(d)).values())
               for d in (True, False))


def onnx_agreement(eval_graph, workdir, name, inputs, output, checkpoint, feeds, ranges=None):
  """(fused, unfused) Agreement of the ONNX export with `eval_graph`; None without onnx."""
  if importlib.util.find_spec("onnxruntime") is None or importlib.util.find_spec("tf2onnx") is None:
    return None
  export = to_onnx(eval_graph, os.path.join(workdir, name), inputs, [output],
                   checkpoint=checkpoint, input_ranges=ranges)
  return tuple(agreement.combine(agreement.compare_onnx(export, feeds, optimized=o).values())
               for o in (True, False))


def mnist_row(workdir):
  args = mnist.parse_args(["--workdir", workdir])
  train_data, test_data = load_mnist(seed=0)
  float_ckpt = mnist.train(train_data, args, args.float_steps, 1e-3, False,
                           save=os.path.join(workdir, "float", "model.ckpt"))
  mnist.train(train_data, args, args.qat_steps, 1e-4, True, restore=float_ckpt,
              save=os.path.join(workdir, "qat", "model.ckpt"))
  graph = mnist.eval_graph()
  export = to_tflite(graph, os.path.join(workdir, "m.tflite"), [mnist.INPUT_NODE],
                     [mnist.OUTPUT_NODE], checkpoint=os.path.join(workdir, "qat"))
  def mnist_eval_graph(requantize):
    with tf.Graph().as_default() as graph:
      mnist.model_fn(mnist.placeholders()[0], is_training=False)
      quantize.experimental_create_eval_graph(graph, requantize=requantize, **mnist.OPTIONS)
    return graph
  feeds = {mnist.INPUT_NODE: test_data[0]}
  result = both_kernels(export, feeds) + both_kernels(
      export, feeds, mnist_eval_graph, os.path.join(workdir, "qat"))
  with tf.Graph().as_default() as onnx_graph:
    mnist.model_fn(mnist.placeholders()[0], is_training=False)
    quantize.experimental_create_eval_graph(onnx_graph, pool_ties="to_even", **mnist.OPTIONS)
  onnx_result = onnx_agreement(onnx_graph, workdir, "m.onnx", [mnist.INPUT_NODE],
                               mnist.OUTPUT_NODE, os.path.join(workdir, "qat"),
                               {mnist.INPUT_NODE: test_data[0]})
  with tf.Graph().as_default() as float_graph:
    images, _ = mnist.placeholders()
    mnist.model_fn(images, is_training=False)
  size = float_tflite_size(float_graph, float_ckpt, [mnist.INPUT_NODE], mnist.OUTPUT_NODE)
  return "MNIST CNN, 1,000 held-out digits", result, export.size_bytes, size, onnx_result


def mobilenet_row(workdir, size, alpha):
  rng = np.random.RandomState(0)
  images = rng.uniform(-1, 1, (4, size, size, 3)).astype(np.float32)

  def build(training):
    x = v1.placeholder(tf.float32, [None, size, size, 3], name="images")
    model = tf_keras.applications.MobileNetV2(weights=None, input_shape=(size, size, 3),
                                              alpha=alpha, classes=1000)
    return x, model(x, training=training)

  options = dict(symmetric=True, per_channel_weights=True)
  tf_keras.backend.clear_session()
  with tf.Graph().as_default() as graph:
    x, logits = build(True)
    loss = v1.losses.sparse_softmax_cross_entropy(rng.randint(0, 1000, 4), logits)
    quantize.experimental_create_training_graph(graph, **options)
    with tf.control_dependencies(v1.get_collection(v1.GraphKeys.UPDATE_OPS)):
      train_op = v1.train.AdamOptimizer(1e-4).minimize(loss)
    with v1.Session() as sess:
      sess.run(v1.global_variables_initializer())
      for _ in range(3):
        sess.run(train_op, {x: images})
      v1.train.Saver().save(sess, os.path.join(workdir, "mnv2", "model.ckpt"))
  tf_keras.backend.clear_session()
  with tf.Graph().as_default() as eval_graph:
    _, logits = build(False)
    quantize.experimental_create_eval_graph(eval_graph, **options)
  label = "MobileNetV2 %g, %dx%d, 4 random images" % (alpha, size, size)
  output = logits.op.inputs[0].op.name if logits.op.type == "Softmax" else logits.op.name
  checkpoint, ranges = os.path.join(workdir, "mnv2"), {"images": (-1, 1)}
  onnx_result = onnx_agreement(eval_graph, workdir, "mnv2.onnx", ["images"], output, checkpoint,
                               {"images": images}, ranges)
  try:
    export = to_tflite(eval_graph, os.path.join(workdir, "mnv2.tflite"), ["images"], [output],
                       checkpoint=checkpoint, input_ranges=ranges)
  except NotFullyIntegerError as err:
    return label, str(err).splitlines()[0], None, None, onnx_result
  def runtime_eval_graph(requantize):
    tf_keras.backend.clear_session()
    with tf.Graph().as_default() as graph:
      build(False)
      quantize.experimental_create_eval_graph(graph, requantize=requantize, **options)
    return graph
  result = both_kernels(export, {"images": images}) + both_kernels(
      export, {"images": images}, runtime_eval_graph, checkpoint)
  return label, result, export.size_bytes, None, onnx_result


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--size", type=int, default=224)
  parser.add_argument("--alpha", type=float, default=1.0)
  args = parser.parse_args()
  v1.disable_eager_execution()
  workdir = tempfile.mkdtemp(prefix="export_agreement_")
  rows = [mnist_row(workdir), mobilenet_row(workdir, args.size, args.alpha)]
  print("\n| model | elements | equal integers (XNNPACK / builtin kernels) | max difference "
        "| each runtime's own eval graph (requantize=) | int8 TFLite | float TFLite |")
  print("|---|---|---|---|---|---|---|")
  for label, result, int8_size, float_size, _ in rows:
    sizes = ["%.1f KB" % (s / 1024.0) if s else "-" for s in (int8_size, float_size)]
    if isinstance(result, str):
      print("| %s | export refused: %s | | | | | |" % (label, result))
    else:
      xnnpack, builtin, own_xnnpack, own_builtin = result
      print("| %s | %d | %.2f%% / %.2f%% | %d / %d LSB | %.2f%% / %.2f%%, %d / %d LSB | %s | %s |"
            % (label, xnnpack.elements, 100 * xnnpack.equal_share, 100 * builtin.equal_share,
               xnnpack.max_lsb, builtin.max_lsb, 100 * own_xnnpack.equal_share,
               100 * own_builtin.equal_share, own_xnnpack.max_lsb, own_builtin.max_lsb,
               *sizes))
  if any(row[-1] is None for row in rows):
    print("\nONNX: skipped (pip install qat_rewrite[onnx])")
    return
  print("\n| model | elements | ONNX Runtime: equal integers (optimized / not) | max difference |")
  print("|---|---|---|---|")
  for label, *_, (fused, unfused) in rows:
    print("| %s | %d | %.2f%% / %.2f%% | %d / %d LSB |" % (
        label, fused.elements, 100 * fused.equal_share, 100 * unfused.equal_share,
        fused.max_lsb, unfused.max_lsb))


if __name__ == "__main__":
  main()
