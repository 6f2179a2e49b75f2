"""What the side-by-side benchmarks with TensorFlow Model Optimization (tfmot) share.

Each bench_*.py answers one question, prints its figures and writes a markdown table (and
sometimes a PNG) to --out (default benchmarks/results). Import this module first: it sets up
tf_keras (tfmot and graph-mode Keras need it) before TensorFlow is imported.
"""

import argparse
import functools
import os
import platform
import statistics
import sys
import time
import warnings

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ["TF_USE_LEGACY_KERAS"] = "1"  # tfmot 0.8.1 runs on tf_keras, not Keras 3.

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
import tf_keras  # noqa: E402

warnings.filterwarnings("ignore")
tf.get_logger().setLevel("ERROR")

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)  # qat_rewrite from the checkout
sys.path.insert(0, HERE)  # the other benchmark scripts
RESULTS = os.path.join(HERE, "results")
v1 = tf.compat.v1


def parse_args(doc, add_arguments=None, argv=None):
  """--quick (a few steps on tiny models: checks the script works, figures meaningless) and
  --out (where the tables go), plus the script's own arguments."""
  parser = argparse.ArgumentParser(description=doc.splitlines()[0])
  parser.add_argument("--quick", action="store_true", help="tiny smoke run")
  parser.add_argument("--out", default=RESULTS, help="directory for the tables and plots")
  if add_arguments:
    add_arguments(parser)
  args = parser.parse_args(argv)
  os.makedirs(args.out, exist_ok=True)
  return args


def tfmot():
  """The tensorflow_model_optimization module (imported late: it is an optional extra)."""
  import tensorflow_model_optimization  # pylint: disable=import-outside-toplevel
  return tensorflow_model_optimization


def cpu_model():
  try:
    with open("/proc/cpuinfo") as f:
      for line in f:
        if line.startswith("model name"):
          return line.split(":", 1)[1].strip()
  except OSError:
    pass
  return platform.processor() or "unknown CPU"


def machine():
  """One line naming what the figures were measured on."""
  return "%d cores, %s, TensorFlow %s, tfmot %s, Python %s" % (
      os.cpu_count(), cpu_model(), tf.__version__, tfmot_version(), platform.python_version())


def tfmot_version():
  try:
    return tfmot().__version__
  except ImportError:
    return "not installed"


def markdown(header, rows):
  lines = ["| %s |" % " | ".join(header), "|%s" % ("---|" * len(header))]
  lines += ["| %s |" % " | ".join(str(c) for c in row) for row in rows]
  return "\n".join(lines)


def write_table(args, name, title, header, rows, notes=()):
  """Prints the table and writes it, with its title, notes and machine line, to OUT/name.md."""
  text = "### %s\n\n%s\n" % (title, markdown(header, rows))
  if notes:
    text += "\n" + "\n".join(notes) + "\n"
  text += "\n%s%s.\n" % ("QUICK MODE (tiny models, figures meaningless). " if args.quick else "",
                         machine())
  path = os.path.join(args.out, name + ".md")
  with open(path, "w") as f:
    f.write(text)
  print("\n" + text + "\nwrote " + path)
  return path


def mean_spread(values, fmt="%.2f"):
  """'mean ± sample std (min–max)' of a list, or the single value."""
  if len(values) == 1:
    return fmt % values[0]
  return (fmt + " ± " + fmt + " (" + fmt + "–" + fmt + ")") % (
      statistics.mean(values), statistics.stdev(values), min(values), max(values))


def interleaved_medians(steps, warmup, repeats):
  """Median seconds of each callable in `steps`, called in turn so that load hits all alike."""
  for _ in range(warmup):
    for step in steps:
      step()
  times = [[] for _ in steps]
  for _ in range(repeats):
    for i, step in enumerate(steps):
      start = time.perf_counter()
      step()
      times[i].append(time.perf_counter() - start)
  return [statistics.median(t) for t in times]


def graph_nodes(graph):
  return len(graph.get_operations())


class Net:
  """One v1 graph of a Keras model and its handles (a plain attribute bag)."""


def keras_model_graph(build, batch, size, training=True):
  """A fresh v1 graph holding `build()` called on a placeholder, with a loss: the graph the
  rewrite sees. Returns a Net: graph, images, labels, logits, loss, model."""
  net = Net()
  with tf.Graph().as_default() as net.graph:
    v1.set_random_seed(0)
    net.images = v1.placeholder(tf.float32, [batch, size, size, 3], "images")
    net.labels = v1.placeholder(tf.int64, [batch], "labels")
    net.model = build()
    net.logits = net.model(net.images, training=training)
    net.loss = v1.losses.sparse_softmax_cross_entropy(net.labels, net.logits)
  return net


def add_train_op(net, lr=0.01):
  """SGD with the Keras batch-norm updates (kept on the model, not in UPDATE_OPS), and init."""
  with net.graph.as_default():
    with tf.control_dependencies(net.model.get_updates_for(net.images)):
      net.train_op = v1.train.GradientDescentOptimizer(lr).minimize(net.loss)
    net.init = v1.global_variables_initializer()
    net.saver = v1.train.Saver()


def applications(quick):
  """{name: (builder, input size)}: tf_keras.applications models (random weights, logits out),
  or in quick mode two small conv nets of different depth."""
  apps = tf_keras.applications

  def make(cls, size, **kw):
    return lambda: cls(weights=None, input_shape=(size, size, 3), classifier_activation=None,
                       **kw)
  if quick:
    return {"ConvNet-%d" % depth: (functools.partial(conv_net, depth), 32) for depth in (3, 9)}
  return {name: (make(cls, 224), 224) for name, cls in [
      ("MobileNetV2", apps.MobileNetV2), ("ResNet50", apps.ResNet50),
      ("ResNet101", apps.ResNet101), ("ResNet152", apps.ResNet152)]}


def conv_net(depth, size=32, classes=1000):
  """`depth` conv+BN+ReLU blocks, global pooling and dense: a tiny stand-in for quick mode."""
  layers = tf_keras.layers
  x = inputs = layers.Input((size, size, 3))
  for i in range(depth):
    x = layers.Conv2D(8, 3, padding="same", use_bias=False, name="conv%d" % i)(x)
    x = layers.ReLU(name="relu%d" % i)(layers.BatchNormalization(name="bn%d" % i)(x))
  x = layers.GlobalAveragePooling2D(name="pool")(x)
  return tf_keras.Model(inputs, layers.Dense(classes, name="logits")(x))


def random_batch(batch, size, classes=1000, seed=0):
  rng = np.random.RandomState(seed)
  return (rng.uniform(-1, 1, (batch, size, size, 3)).astype(np.float32),
          rng.randint(0, classes, batch).astype(np.int64))


def tflite_interpreter(content, threads=None):
  """tf.lite.Interpreter, quiet about its TF 2.20 deprecation notice."""
  import contextlib  # pylint: disable=import-outside-toplevel
  import io  # pylint: disable=import-outside-toplevel
  with contextlib.redirect_stderr(io.StringIO()):
    return tf.lite.Interpreter(model_content=content, num_threads=threads)


def tflite_predict(content, x, batch=100):
  """Model outputs (dequantized) for float input x, quantizing it if the model wants ints."""
  interp = tflite_interpreter(content)
  inp, out = interp.get_input_details()[0], interp.get_output_details()[0]
  results = []
  for start in range(0, len(x), batch):
    chunk = x[start:start + batch]
    interp.resize_tensor_input(inp["index"], list(chunk.shape))
    interp.allocate_tensors()
    scale, zero = inp["quantization"]
    if np.issubdtype(inp["dtype"], np.integer):
      info = np.iinfo(inp["dtype"])
      chunk = np.clip(np.round(chunk / scale + zero), info.min, info.max)
    interp.set_tensor(inp["index"], chunk.astype(inp["dtype"]))
    interp.invoke()
    y = interp.get_tensor(out["index"]).astype(np.float32)
    scale, zero = out["quantization"]
    results.append((y - zero) * scale if scale else y)
  return np.concatenate(results)


def float_tensors(content):
  """Names of the float tensors of a TFLite model (none: fully integer)."""
  from qat_rewrite.export import integer_check  # pylint: disable=import-outside-toplevel
  return [name for name, _, _ in integer_check.float_tensors(content)]


def tfmot_tflite(keras_model, representative=None):
  """int8-in, int8-out TFLite from a Keras model (a tfmot QAT model, or a float one calibrated
  on `representative`): the fully integer form qat_rewrite exports, for a like-for-like size."""
  converter = tf.lite.TFLiteConverter.from_keras_model(keras_model)
  converter.optimizations = [tf.lite.Optimize.DEFAULT]
  if representative is not None:
    converter.representative_dataset = representative
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
  converter.inference_input_type = tf.int8
  converter.inference_output_type = tf.int8
  return converter.convert()


def float_tflite(keras_model):
  return tf.lite.TFLiteConverter.from_keras_model(keras_model).convert()
