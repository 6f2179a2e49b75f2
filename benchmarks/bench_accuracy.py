"""MNIST accuracy side by side: float, PTQ, qat_rewrite QAT and tfmot QAT, at 8 and 4 bits.

One Keras CNN (the examples' conv+BN+ReLU, depthwise+BN+ReLU6, 1x1 conv+BN with a residual add,
average pooling, dense), trained in float with Keras; both QAT tools fine-tune the same float
weights with the same optimizer, batches and step count. qat_rewrite rewrites the model called
in a tf.compat.v1 graph (symmetric, per-channel weights, as int8 TFLite wants); tfmot wraps the
Keras model (quantize_model at 8 bits, the experimental default_n_bit scheme at 4). PTQ: at 8
bits `qat_rewrite quantize --target tflite`'s calibration (int8 TFLite), at 4 bits the
qat_rewrite eval graph with ranges from calibration batches and no training (TFLite has no
4-bit kernels). Mean ± std over the seeds.

  python benchmarks/bench_accuracy.py [--seeds 0 1 2] [--float_steps N] [--qat_steps N] [--quick]
"""

import os
import statistics
import sys
import tempfile
import time

import bench_common as common
from bench_common import np, tf, tf_keras, v1

sys.path.insert(0, os.path.join(common.ROOT, "examples", "decent_q"))
from model import batches  # noqa: E402  (examples/decent_q/model.py: the shuffled batches)
from qat_rewrite import quantize  # noqa: E402
from qat_rewrite.datasets import load_mnist  # noqa: E402
from qat_rewrite.export import to_tflite  # noqa: E402
from qat_rewrite.targets.tflite import ptq as tflite_ptq  # noqa: E402

BATCH = 64
CALIB_BATCHES = 20
EPS = 1e-6  # equal means compare equal: they are sums of different seeds' figures
OPTIONS = dict(symmetric=True, per_channel_weights=True)
COLUMNS = ["float", "PTQ", "qat_rewrite QAT (eval graph)", "qat_rewrite QAT (int8 TFLite)",
           "tfmot QAT (Keras)", "tfmot QAT (int8 TFLite)"]


def add_arguments(parser):
  parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
  parser.add_argument("--float_steps", type=int, default=1000)
  parser.add_argument("--qat_steps", type=int, default=500)
  parser.add_argument("--bits", type=int, nargs="+", default=[8, 4])


def cnn(name="cnn"):
  """The examples' MNIST CNN as a Keras model; fixed layer names give both graphs one set of
  variable names."""
  layers = tf_keras.layers
  init = tf_keras.initializers.GlorotUniform
  x = inputs = layers.Input((28, 28, 1))
  x = layers.Conv2D(32, 3, 2, "same", use_bias=False, kernel_initializer=init(), name="conv1")(x)
  x = layers.ReLU(name="relu1")(layers.BatchNormalization(name="conv1_bn")(x))
  x = layers.DepthwiseConv2D(3, padding="same", use_bias=False, name="dw2")(x)
  skip = layers.ReLU(6.0, name="relu2")(layers.BatchNormalization(name="dw2_bn")(x))
  x = layers.Conv2D(32, 1, use_bias=False, kernel_initializer=init(), name="pw3")(skip)
  x = layers.Add(name="add3")([layers.BatchNormalization(name="pw3_bn")(x), skip])
  x = layers.AveragePooling2D(2, name="pool")(layers.ReLU(name="relu3")(x))
  x = layers.Dense(10, kernel_initializer=init(), name="logits")(layers.Flatten(name="flat")(x))
  return tf_keras.Model(inputs, x, name=name)


def keras_fit(model, data, steps, lr, seed):
  """Adam on the examples' batch order: the budget every trained model gets."""
  model.compile(tf_keras.optimizers.Adam(lr),
                tf_keras.losses.SparseCategoricalCrossentropy(from_logits=True))
  model.fit(batches(*data, BATCH, seed), steps_per_epoch=steps, epochs=1, verbose=0)


def top1(logits, labels):
  return 100.0 * float(np.mean(np.argmax(logits, 1) == labels))


# Keras, eager: float model and tfmot ------------------------------------------------------------

def train_float(data, test, args, seed):
  tf_keras.backend.clear_session()
  tf_keras.utils.set_random_seed(seed)
  model = cnn()
  keras_fit(model, data, args.float_steps, 1e-3, seed)
  return model, top1(model.predict(test[0], verbose=0), test[1])


def tfmot_model(float_model, bits):
  """tfmot's QAT wrapper of the float model (its weights kept)."""
  qk = common.tfmot().quantization.keras
  if bits == 8:
    return qk.quantize_model(float_model)
  scheme = qk.experimental.default_n_bit.DefaultNBitQuantizeScheme(
      num_bits_weight=bits, num_bits_activation=bits)
  return qk.quantize_apply(qk.quantize_annotate_model(float_model), scheme)


def tfmot_qat(float_model, data, test, args, seed, bits):
  """(Keras fake-quant accuracy, int8 TFLite accuracy or None at other widths)."""
  tf_keras.utils.set_random_seed(seed)
  model = tfmot_model(float_model, bits)
  keras_fit(model, data, args.qat_steps, 1e-4, seed)
  keras_acc = top1(model.predict(test[0], verbose=0), test[1])
  if bits != 8:
    return keras_acc, None
  content = common.tfmot_tflite(model)
  assert not common.float_tensors(content), "tfmot's TFLite model is not fully integer"
  return keras_acc, top1(common.tflite_predict(content, test[0]), test[1])


# qat_rewrite, tf.compat.v1 graphs -----------------------------------------------------------

class Net:
  """One graph of the CNN and its handles (a plain attribute bag)."""


def build_net(training, bits=None):
  """The CNN called on a placeholder in a new graph, rewritten for `bits` if given."""
  net = Net()
  with tf.Graph().as_default() as net.graph:
    net.images = v1.placeholder(tf.float32, [None, 28, 28, 1], "images")
    net.labels = v1.placeholder(tf.int64, [None], "labels")
    model = cnn()
    net.weights = list(model.weights)  # Keras' order: as get_weights() gives the float ones
    net.logits = model(net.images, training=training)
    net.output = net.logits.op.name
    net.loss = v1.losses.sparse_softmax_cross_entropy(net.labels, net.logits)
    rewrite = quantize.experimental_create_training_graph if training else \
        quantize.experimental_create_eval_graph
    if bits:
      rewrite(net.graph, weight_bits=bits, activation_bits=bits, **OPTIONS)
    if training:
      with tf.control_dependencies(model.get_updates_for(net.images)):
        net.train_op = v1.train.AdamOptimizer(1e-4).minimize(net.loss)
    net.init = v1.global_variables_initializer()
    net.saver = v1.train.Saver()
  return net


def graph_accuracy(net, test, checkpoint):
  with v1.Session(graph=net.graph) as sess:
    net.saver.restore(sess, checkpoint)
    logits = sess.run(net.logits, {net.images: test[0]})
  return top1(logits, test[1])


def qat_rewrite_run(float_weights, data, seed, steps, bits, path, train):
  """From the float weights: QAT steps (`train`) or forward passes only (calibration, PTQ)."""
  net = build_net(True, bits)
  with v1.Session(graph=net.graph) as sess:
    sess.run(net.init)
    for var, value in zip(net.weights, float_weights):
      var.load(value, sess)
    feed = batches(*data, BATCH, seed)
    for _ in range(steps):
      x, y = next(feed)
      sess.run(net.train_op if train else net.loss, {net.images: x, net.labels: y})
    return net.saver.save(sess, path)


def qat_rewrite_qat(float_weights, data, test, args, seed, bits, workdir):
  """(eval-graph accuracy, int8 TFLite accuracy or None at other widths)."""
  ckpt = qat_rewrite_run(float_weights, data, seed, args.qat_steps, bits,
                         os.path.join(workdir, "qat%d_%d" % (bits, seed), "model.ckpt"), True)
  net = build_net(False, bits)
  eval_acc = graph_accuracy(net, test, ckpt)
  if bits != 8:
    return eval_acc, None
  export = to_tflite(net.graph, os.path.join(workdir, "qat%d_%d.tflite" % (bits, seed)),
                     ["images"], [net.output], checkpoint=ckpt, input_ranges={"images": (0, 1)})
  with open(export.path, "rb") as f:
    return eval_acc, top1(common.tflite_predict(f.read(), test[0]), test[1])


def ptq(float_weights, data, test, seed, bits, workdir):
  """8 bits: the TFLite converter's int8 calibration of the frozen float graph; other widths:
  the rewritten graph's ranges after calibration batches, weights untouched."""
  if bits == 8:
    return tflite_ptq_accuracy(float_weights, data, test, workdir)
  ckpt = qat_rewrite_run(float_weights, data, seed, CALIB_BATCHES, bits,
                         os.path.join(workdir, "ptq%d_%d" % (bits, seed), "model.ckpt"), False)
  return graph_accuracy(build_net(False, bits), test, ckpt)


def tflite_ptq_accuracy(float_weights, data, test, workdir):
  net = build_net(False)
  with v1.Session(graph=net.graph) as sess:
    for var, value in zip(net.weights, float_weights):
      var.load(value, sess)
    frozen = v1.graph_util.convert_variables_to_constants(sess, net.graph.as_graph_def(),
                                                          [net.output])
  calib = lambda i: {"images": data[0][i * 50:(i + 1) * 50]}  # noqa: E731
  content = tflite_ptq.calibrated_contents(frozen, calib, ["images"], [net.output],
                                           [[-1, 28, 28, 1]], CALIB_BATCHES)[tflite_ptq.MODEL]
  return top1(common.tflite_predict(content, test[0]), test[1])


# The table ----------------------------------------------------------------------------------

def one_seed(args, seed, workdir):
  """{bits: {column: accuracy}} for one seed."""
  data, test = load_mnist(seed=seed)
  started = time.time()
  float_model, float_acc = train_float(data, test, args, seed)
  weights = float_model.get_weights()
  results = {}
  for bits in args.bits:
    row = {"float": float_acc, "PTQ": ptq(weights, data, test, seed, bits, workdir)}
    row[COLUMNS[2]], row[COLUMNS[3]] = qat_rewrite_qat(weights, data, test, args, seed, bits,
                                                       workdir)
    row[COLUMNS[4]], row[COLUMNS[5]] = tfmot_qat(float_model, data, test, args, seed, bits)
    results[bits] = row
    print("seed %d, %d bits: %s (%.0f s)" % (seed, bits, ", ".join(
        "%s %s" % (k, "-" if v is None else "%.2f" % v) for k, v in row.items()),
        time.time() - started), flush=True)
  return results


def summary_rows(per_seed, bits_list):
  rows = []
  for bits in bits_list:
    cells = []
    for column in COLUMNS:
      values = [r[bits][column] for r in per_seed if r[bits][column] is not None]
      cells.append(common.mean_spread(values) + "%" if values else "n/a")
    rows.append(["%d" % bits] + cells)
  return rows


def goal_lines(per_seed):
  """8-bit goal: qat_rewrite QAT within 0.5 point of float and not below tfmot's."""
  if not all(8 in r for r in per_seed):
    return []
  mean = lambda c: statistics.mean(r[8][c] for r in per_seed)  # noqa: E731
  flt, ours_eval, ours_tfl = mean("float"), mean(COLUMNS[2]), mean(COLUMNS[3])
  theirs_keras, theirs_tfl = mean(COLUMNS[4]), mean(COLUMNS[5])
  met = lambda ok: "**met**" if ok else "**not met**"  # noqa: E731
  return [
      "Goal, 8-bit QAT within 0.5 point of float: %s (eval graph %+.2f, int8 TFLite %+.2f "
      "points vs float)." % (met(flt - min(ours_eval, ours_tfl) <= 0.5), ours_eval - flt,
                             ours_tfl - flt),
      "Goal, 8-bit QAT not below tfmot's: %s (int8 TFLite %.2f%% vs %.2f%%; fake-quant %.2f%% vs "
      "%.2f%%)." % (met(ours_tfl >= theirs_tfl - EPS and ours_eval >= theirs_keras - EPS), ours_tfl,
                    theirs_tfl, ours_eval, theirs_keras)]


def main(argv=None):
  args = common.parse_args(__doc__, add_arguments, argv)
  if args.quick:
    args.seeds, args.float_steps, args.qat_steps = args.seeds[:1], 20, 10
  workdir = tempfile.mkdtemp(prefix="bench_accuracy_")
  started = time.time()
  per_seed = [one_seed(args, seed, workdir) for seed in args.seeds]
  notes = ["MNIST CNN, 4,000 training / 1,000 held-out real digits per seed (seeds %s: split, "
           "init and batch order), batch %d; float %d Adam steps (1e-3), then each QAT tool %d "
           "Adam steps (1e-4) from the same float weights. %d seeds: mean ± std (min–max). "
           "4-bit TFLite does not exist (n/a). %.0f s." % (
               " ".join(map(str, args.seeds)), BATCH, args.float_steps, args.qat_steps,
               len(args.seeds), time.time() - started)]
  common.write_table(args, "accuracy", "Accuracy on MNIST: float, PTQ, qat_rewrite and tfmot QAT",
                     ["bits"] + COLUMNS, summary_rows(per_seed, args.bits),
                     notes + goal_lines(per_seed))
  return 0


if __name__ == "__main__":
  sys.exit(main())
