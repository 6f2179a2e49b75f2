"""`qat_rewrite quantize` from the shell on a frozen Keras MobileNetV2 (random weights), for each
target: wall time, files written, and for the DPU the deploy/eval agreement over every tensor.

  python benchmarks/ptq_mobilenet_v2.py [--size 224] [--calib_iter 10] [--targets dpu tflite ascend]
"""

import argparse
import os
import subprocess
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ["TF_USE_LEGACY_KERAS"] = "1"  # tf_keras, not Keras 3: graph mode needs it.

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
import tf_keras  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from qat_rewrite.targets.dpu import agreement  # noqa: E402

v1 = tf.compat.v1
INPUT_FN = '''
import numpy as np

def input_fn(i):
  return {"images": np.random.RandomState(i).uniform(-1, 1, (4, %d, %d, 3)).astype(np.float32)}
'''


def frozen_mobilenet_v2(size, path):
  """MobileNetV2 (alpha 1.0, random weights) called with training=False, frozen; its output."""
  with tf.Graph().as_default() as graph:
    images = v1.placeholder(tf.float32, [None, size, size, 3], name="images")
    model = tf_keras.applications.MobileNetV2(weights=None, input_shape=(size, size, 3),
                                              classifier_activation=None)
    logits = model(images, training=False)
    with v1.Session() as sess:
      sess.run(v1.global_variables_initializer())
      graph_def = v1.graph_util.convert_variables_to_constants(
          sess, graph.as_graph_def(), [logits.op.name])
  with open(path, "wb") as f:
    f.write(graph_def.SerializeToString())
  return logits.op.name, len(graph_def.node)


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--size", type=int, default=224)
  parser.add_argument("--calib_iter", type=int, default=10)
  parser.add_argument("--targets", nargs="+", default=["dpu", "tflite", "ascend"])
  args = parser.parse_args(argv)
  v1.disable_eager_execution()
  workdir = tempfile.mkdtemp(prefix="ptq_mobilenet_v2.")
  pb = os.path.join(workdir, "mobilenet_v2.pb")
  output, nodes = frozen_mobilenet_v2(args.size, pb)
  with open(os.path.join(workdir, "calib.py"), "w") as f:
    f.write(INPUT_FN % (args.size, args.size))
  print("MobileNetV2 1.0 %dx%d, random weights, frozen: %d nodes; %d calibration batches of 4"
        % (args.size, args.size, nodes, args.calib_iter))
  print("| target | wall time (incl. process start) | files |")
  print("|---|---|---|")
  for target in args.targets:
    out = os.path.join(workdir, target)
    started = time.time()
    subprocess.run([sys.executable, "-m", "qat_rewrite", "quantize", "--input_frozen_graph", pb,
                    "--input_nodes", "images", "--output_nodes", output, "--input_shapes",
                    "?,%d,%d,3" % (args.size, args.size), "--input_fn", "calib.input_fn",
                    "--calib_iter", str(args.calib_iter), "--output_dir", out, "--target", target],
                   cwd=workdir, check=True, stdout=subprocess.DEVNULL)
    seconds = time.time() - started
    sizes = ", ".join("%s %.0f KB" % (name, os.path.getsize(os.path.join(out, name)) / 1024)
                      for name in sorted(os.listdir(out)))
    print("| %s | %.0f s | %s |" % (target, seconds, sizes))
    if target == "dpu":
      files = {name: os.path.join(out, name) for name in os.listdir(out)}
      images = np.random.RandomState(99).uniform(-1, 1, (2, args.size, args.size, 3))
      results = agreement.compare(files, {"images": images.astype(np.float32)})
      elements = sum(r.elements for r in results.values())
      equal = sum(r.equal_share * r.elements for r in results.values()) / elements
      dpu_line = ("DPU deploy_model.pb (integer runner) vs quantize_eval_model.pb: %d tensors, "
                  "%.4f%% equal integers, max %d LSB" % (len(results), 100 * equal,
                                                          max(r.max_lsb for r in results.values())))
  if "dpu" in args.targets:
    print(dpu_line)


if __name__ == "__main__":
  main()
