"""Peak resident memory of the rewrite and of a QAT training step vs float, next to tfmot's.

Each figure is one fresh Python process (this script with --child MODE) that builds ResNet50
(tf_keras.applications, weights=None, 224x224, batch 8), does one thing, and reports its own
peak RSS (ru_maxrss): the memory a user's process would need for that stage. Two children run
at a time; peak RSS of one process does not depend on the other.

  python benchmarks/bench_memory.py [--quick]
"""

import concurrent.futures
import json
import resource
import subprocess
import sys

# (mode, what it does); "import" is the TensorFlow runtime alone.
MODES = [
    ("import", "import TensorFlow, tf_keras and tfmot"),
    ("graph", "qat_rewrite: build the float training graph"),
    ("rewrite", "qat_rewrite: build, create_training_graph"),
    ("float_step", "qat_rewrite: float graph, 3 SGD steps"),
    ("qat_step", "qat_rewrite: rewritten graph, 3 SGD steps"),
    ("keras", "tfmot: build the Keras model"),
    ("tfmot_apply", "tfmot: build, quantize_model"),
    ("keras_step", "tfmot: float Keras model, 3 train_on_batch steps"),
    ("tfmot_step", "tfmot: quantize_model, 3 train_on_batch steps"),
]
QUICK_MODES = ["qat_step", "tfmot_step"]  # every code path, in two processes
BATCH = 8
STEPS = 3


def model(quick):
  """(builder, input size, label)."""
  import functools  # pylint: disable=import-outside-toplevel
  import bench_common as common  # pylint: disable=import-outside-toplevel
  if quick:
    return functools.partial(common.conv_net, 3), 32, "ConvNet-3, 32x32"
  builder = functools.partial(common.tf_keras.applications.ResNet50, weights=None,
                              input_shape=(224, 224, 3), classifier_activation=None)
  return builder, 224, "ResNet50, 224x224"


def run_graph_mode(mode, build, size, x, y):
  import bench_common as common  # pylint: disable=import-outside-toplevel
  from qat_rewrite import quantize  # pylint: disable=import-outside-toplevel
  net = common.keras_model_graph(build, BATCH, size)
  if mode in ("rewrite", "qat_step"):
    quantize.create_training_graph(net.graph)
  if mode.endswith("_step"):
    common.add_train_op(net)
    with common.v1.Session(graph=net.graph) as sess:
      sess.run(net.init)
      for _ in range(STEPS):
        sess.run(net.train_op, {net.images: x, net.labels: y})


def run_keras_mode(mode, build, x, y):
  import bench_common as common  # pylint: disable=import-outside-toplevel
  keras_model = build()
  if mode in ("tfmot_apply", "tfmot_step"):
    keras_model = common.tfmot().quantization.keras.quantize_model(keras_model)
  if mode.endswith("_step"):
    keras_model.compile(common.tf_keras.optimizers.SGD(0.01),
                        common.tf_keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    for _ in range(STEPS):
      keras_model.train_on_batch(x, y)


def child(mode, quick):
  """Does `mode` and prints {"mode", "peak_mb"} as the last line."""
  import bench_common as common  # pylint: disable=import-outside-toplevel
  common.tfmot()
  build, size, _ = model(quick)
  x, y = common.random_batch(BATCH, size)
  if mode in ("graph", "rewrite", "float_step", "qat_step"):
    run_graph_mode(mode, build, size, x, y)
  elif mode != "import":
    run_keras_mode(mode, build, x, y)
  peak_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KB on Linux
  print(json.dumps({"mode": mode, "peak_mb": peak_kb / 1024.0}))


def measure(mode, quick):
  cmd = [sys.executable, __file__, "--child", mode] + (["--quick"] if quick else [])
  done = subprocess.run(cmd, capture_output=True, text=True, check=False)
  if done.returncode != 0:
    raise RuntimeError("%s failed:\n%s" % (mode, done.stderr[-3000:]))
  result = json.loads(done.stdout.strip().splitlines()[-1])
  print("%-12s %7.0f MB" % (mode, result["peak_mb"]), flush=True)
  return result["peak_mb"]


def table(peaks):
  ratio = lambda a, b: "%.2f" % (peaks[a] / peaks[b]) if a in peaks and b in peaks else ""  # noqa
  versus = {"rewrite": ratio("rewrite", "graph"), "qat_step": ratio("qat_step", "float_step"),
            "tfmot_apply": ratio("tfmot_apply", "keras"),
            "tfmot_step": ratio("tfmot_step", "keras_step")}
  return [[mode, what, "%.0f MB" % peaks[mode], versus.get(mode, "")] for mode, what in MODES
          if mode in peaks]


def main(argv=None):
  if argv is None:
    argv = sys.argv[1:]
  if "--child" in argv:
    child(argv[argv.index("--child") + 1], "--quick" in argv)
    return 0
  import bench_common as common  # pylint: disable=import-outside-toplevel
  args = common.parse_args(__doc__, argv=argv)
  modes = QUICK_MODES if args.quick else [m for m, _ in MODES]
  with concurrent.futures.ThreadPoolExecutor(2) as pool:
    peaks = dict(zip(modes, pool.map(lambda m: measure(m, args.quick), modes)))
  label = model(args.quick)[2]
  notes = ["%s, batch %d, each row a fresh process, peak RSS (ru_maxrss). Ratios: rewrite vs "
           "building the graph, QAT step vs float step, quantize_model vs building the Keras "
           "model, tfmot step vs Keras float step." % (label, BATCH)]
  common.write_table(args, "memory", "Peak resident memory, %s" % label,
                     ["process", "what it does", "peak RSS", "vs float"], table(peaks), notes)
  return 0


if __name__ == "__main__":
  sys.exit(main())
