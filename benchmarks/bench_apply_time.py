"""Time to make a model quantization-aware: qat_rewrite's graph rewrite vs tfmot quantize_model.

For ResNet50, ResNet101, ResNet152 and MobileNetV2 (tf_keras.applications, weights=None,
224x224): qat_rewrite.quantize.create_training_graph on the model called with training=True in
a tf.compat.v1 graph (batch 8, with a loss), and tfmot.quantization.keras.quantize_model on the
Keras model. Both are timed against the node count of that training graph, fitted with a line
(time per node) and a power law (exponent 1 = linear growth); plot in apply_time.png. Beside
them, the rewrite as it ran before it was grafted from a copy: a rehearsal on a copy, then the
rewrite again in place (what v1 control flow, a py_func or a tf.distribute strategy still
cost). And the median of 10 rewrites of a 2-layer model (conv + batch norm + ReLU, dense).

  python benchmarks/bench_apply_time.py [--quick]
"""

import functools
import sys
import time

import statistics

import bench_common as common
from bench_common import np, tf_keras
from qat_rewrite import quantize
from qat_rewrite.graph import graft

BATCH = 8


def time_rewrite(build, size, in_place=False):
  """(graph nodes before the rewrite, seconds of create_training_graph); `in_place`: rehearse
  on a copy, then rewrite the graph itself (the rewrite before grafting)."""
  tf_keras.backend.clear_session()
  graph = common.keras_model_graph(build, BATCH, size).graph
  nodes = common.graph_nodes(graph)
  copy_of = graft.copy_of
  if in_place:  # what graft.copy_of answers for a graph it cannot graft
    graft.copy_of = lambda g, plain=False: copy_of(g, plain=True) if plain else (None, "")
  try:
    start = time.perf_counter()
    quantize.create_training_graph(graph)
    return nodes, time.perf_counter() - start
  finally:
    graft.copy_of = copy_of


def two_layer_ms(repeats=10):
  """Median milliseconds of create_training_graph on a 2-layer model (conv+BN+ReLU, dense)."""
  build = functools.partial(common.conv_net, 1, classes=10)
  return 1000.0 * statistics.median(time_rewrite(build, 32)[1] for _ in range(repeats))


def time_tfmot(build):
  """(Keras layers, seconds of quantize_model) on a freshly built eager Keras model."""
  tf_keras.backend.clear_session()
  model = build()
  start = time.perf_counter()
  common.tfmot().quantization.keras.quantize_model(model)
  return len(model.layers), time.perf_counter() - start


def fit(nodes, seconds):
  """(ms per node, intercept s, power-law exponent); None without two model sizes."""
  if len(set(nodes)) < 2:
    return None
  slope, intercept = np.polyfit(nodes, seconds, 1)
  exponent = np.polyfit(np.log(nodes), np.log(seconds), 1)[0]
  return 1000.0 * slope, intercept, exponent


def describe(tool, fitted):
  if fitted is None:
    return "%s: one model size, no fit." % tool
  ms, intercept, exponent = fitted
  shape = "looks linear" if 0.8 <= exponent <= 1.25 else "does not look linear"
  return ("%s: %.3f ms per node (+ %.2f s), time ∝ nodes^%.2f: growth %s." % (
      tool, ms, intercept, exponent, shape))


def plot(path, points, fits):
  import matplotlib  # pylint: disable=import-outside-toplevel
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel
  fig, ax = plt.subplots(figsize=(6, 4))
  for tool, marker in (("qat_rewrite create_training_graph", "o"),
                       ("tfmot quantize_model", "s")):
    xs, ys, names = zip(*points[tool])
    ax.plot(xs, ys, marker, label=tool)
    for x, y, name in zip(xs, ys, names):
      ax.annotate(name, (x, y), fontsize=7, xytext=(3, 3), textcoords="offset points")
    if fits[tool]:
      grid = np.linspace(0, max(xs) * 1.05, 50)
      ax.plot(grid, fits[tool][1] + fits[tool][0] / 1000.0 * grid, "--", lw=0.8)
  ax.set_xlabel("training-graph nodes")
  ax.set_ylabel("seconds")
  ax.set_xlim(left=0)
  ax.set_ylim(bottom=0)
  ax.set_title("Time to make the model quantization-aware")
  ax.legend(fontsize=8)
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  print("wrote " + path)


def main(argv=None):
  args = common.parse_args(__doc__, argv=argv)
  rows, ours, theirs = [], [], []
  # First calls pay one-time costs (imports, tracing caches): not what is measured here.
  time_rewrite(functools.partial(common.conv_net, 1), 32)
  time_tfmot(functools.partial(common.conv_net, 1))
  for name, (build, size) in common.applications(args.quick).items():
    nodes, t_ours = time_rewrite(build, size)
    _, t_in_place = time_rewrite(build, size, in_place=True)
    layers, t_theirs = time_tfmot(build)
    print("%s: %d nodes, %d layers: rewrite %.2f s (rehearsed in place %.2f s), quantize_model "
          "%.2f s" % (name, nodes, layers, t_ours, t_in_place, t_theirs), flush=True)
    ours.append((nodes, t_ours, name))
    theirs.append((nodes, t_theirs, name))
    rows.append([name, "{:,}".format(nodes), layers, "%.2f s" % t_ours, "%.2f s" % t_in_place,
                 "%.2fx" % (t_in_place / t_ours), "%.2f s" % t_theirs,
                 "%.1fx" % (t_theirs / t_ours)])
  small = two_layer_ms()
  print("2-layer model: rewrite %.0f ms (median of 10)" % small, flush=True)
  points = {"qat_rewrite create_training_graph": ours, "tfmot quantize_model": theirs}
  fits = {tool: fit([p[0] for p in pts], [p[1] for p in pts]) for tool, pts in points.items()}
  plot(common.os.path.join(args.out, "apply_time.png"), points, fits)
  notes = [describe(tool, fitted) for tool, fitted in fits.items()]
  notes = ["- " + n for n in notes] + ["", "One measurement per model and tool; nodes: the "
                                       "training graph the rewrite edits (batch %d, with a loss)."
                                       " Plot: apply_time.png." % BATCH]
  notes.append("2-layer model (conv + batch norm + ReLU, dense): %.0f ms, median of 10 "
               "rewrites; goal < 50 ms: %s." % (small, "**met**" if small < 50 else "**not met**"))
  resnet50 = [r for r in rows if r[0] == "ResNet50"]
  if resnet50:
    speedup = float(resnet50[0][-1][:-1])
    linear = fits["qat_rewrite create_training_graph"]
    notes.append("Goal, ResNet50 rewrite at least 10x faster than quantize_model: %s (%.1fx). "
                 "Goal, rewrite time linear in graph size: %s (exponent %.2f)." % (
                     "**met**" if speedup >= 10 else "**not met**", speedup,
                     "**met**" if 0.8 <= linear[2] <= 1.25 else "**not met**", linear[2]))
  common.write_table(args, "apply_time", "Time to make the model quantization-aware",
                     ["model", "graph nodes", "Keras layers", "qat_rewrite rewrite",
                      "rehearsed, in place", "in place / grafted", "tfmot quantize_model",
                      "tfmot / qat_rewrite"], rows, notes)
  return 0


if __name__ == "__main__":
  sys.exit(main())
