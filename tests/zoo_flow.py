"""The README's int8 QAT flow on one model-zoo subject (zoo_models.py), as a user's scripts run it.

  python tests/zoo_flow.py MODEL WORKDIR [--decent-q] [--step-cost]

prints one line `ZOO_RESULT {json}` with what a user would look at:

  train     build(is_training=True), experimental_create_training_graph (symmetric, per-channel,
            quantize_inputs), the loss built after the rewrite, Adam under UPDATE_OPS, 2 steps
            at batch 2, batch-norm re-estimation, save: the report's counts and float ops, the
            quantizer names
  eval      build(is_training=False), experimental_create_eval_graph, restore, run: quantizer names
  tflite    to_tflite(net_in -> net_out); when the input has no FakeQuant range (preprocessing in
            front of the first conv), again with input_ranges {net_in: (0, 1)}, the images' range;
            fully integer or the float tensor count; the logits' integer agreement with the eval
            graph on the 4 training images, with XNNPACK and with the builtin kernels, each
            against its own eval graph (requantize="xnnpack" / "tflite_builtin"), and the
            two runtimes' agreement with each other; `float_eval` keeps the same figures against
            the requantize="float" eval graph, the one exported
  decent_q  (--decent-q, slim nets) the loss built before CreateQuantizeTrainingGraph, 2 steps,
            CreateQuantizeEvaluationGraph, CreateQuantizeDeployGraph, deploy-vs-eval agreement
  step cost (--step-cost) the float and the QAT training step, median of steps 2-4

Batch-norm re-estimation: after 2 steps a batch norm's moving statistics are still nearly
their initial ones (slim's decay is 0.9997), so the eval graph would compute activations far
from those training measured its ranges on (the TFLite agreement of inception_v1 read 100%
on those statistics and 65% after re-estimation). The flow sets them to the last batch's
statistics, as many epochs would bring them near the data's, so the agreement figures
describe a trained model's eval graph rather than an untrained one's.

One model per process: the heavy ones need their memory back. Grappler is off in every session:
on these graphs it spent most of the first step (inception_v3: 8 of 13 s) and changes nothing
the flow checks.
"""

import json
import os
import re
import sys
import time

os.environ["TF_USE_LEGACY_KERAS"] = "1"
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

import zoo_models  # noqa: E402
from qat_rewrite import decent_q, export, quantize  # noqa: E402
from qat_rewrite.export import agreement  # noqa: E402
from qat_rewrite.export import frozen as export_frozen  # noqa: E402
from qat_rewrite.graph import frozen  # noqa: E402
from qat_rewrite.report import LEARNING_PHASE_COPY  # noqa: E402
from qat_rewrite.targets.dpu import agreement as dpu_agreement  # noqa: E402

v1 = tf.compat.v1
RESULT_TAG = "ZOO_RESULT "
OPTIONS = dict(symmetric=True, per_channel_weights=True, quantize_inputs=True)
BATCH, STEPS = 2, 2


def _session(graph):
  config = v1.ConfigProto()
  config.graph_options.rewrite_options.disable_meta_optimizer = True
  return v1.Session(graph=graph, config=config)


def _quantizer_names(graph):
  return sorted(v.op.name for v in graph.get_collection(v1.GraphKeys.GLOBAL_VARIABLES)
                if v.op.name.endswith("/min"))


def _train_op(loss):
  with tf.control_dependencies(v1.get_collection(v1.GraphKeys.UPDATE_OPS)):
    return v1.train.AdamOptimizer(1e-4).minimize(loss)


def _run_steps(spec, quantized, batches, steps, workdir, rewrite=None):
  """Builds the training graph (rewritten unless not `quantized`), runs `steps` steps;
  returns (graph, report, losses, step seconds, checkpoint or None)."""
  graph = tf.Graph()
  with graph.as_default():
    images, out, _ = spec.build(is_training=True)
    report = None
    if quantized and rewrite is None:
      report = quantize.experimental_create_training_graph(**OPTIONS)
    labels = v1.placeholder(tf.int64, [None], name="labels")
    loss = v1.losses.sparse_softmax_cross_entropy(labels, out)
    if rewrite is not None:
      report = rewrite()  # decent_q: the loss before the rewrite, as its seed orders it
    train_op = _train_op(loss)
    # Everything the session runs is built before it starts: an op added later extends the
    # session's graph, which took minutes and 20 GB on NASNetMobile.
    reestimate = _batch_norm_reestimation(graph) if quantized else None
    saver = v1.train.Saver()
    losses, seconds = [], []
    with _session(graph) as sess:
      sess.run(v1.global_variables_initializer())
      for step in range(steps):
        x, y = batches[step % len(batches)]
        start = time.perf_counter()
        losses.append(float(sess.run([train_op, loss], {images: x, labels: y})[1]))
        seconds.append(time.perf_counter() - start)
      if reestimate:
        reestimate(sess, {images: x})
      os.makedirs(workdir, exist_ok=True)
      checkpoint = saver.save(sess, os.path.join(workdir, "model.ckpt"))
  return graph, report, losses, seconds, checkpoint


def _batch_norm_reestimation(graph):
  """A function (session, feed) that sets each batch norm's moving mean and variance to the
  batch statistic its update op averages in on `feed`, or None without batch norms. Both
  families update as `v -= (v - batch_stat) * (1 - decay)` in UPDATE_OPS (the rewrite reroutes
  batch_stat to its fold's statistics), so the statistic is the second input of the `Sub` that
  reads the variable."""
  targets = {}
  for update in graph.get_collection(v1.GraphKeys.UPDATE_OPS):
    update = getattr(update, "op", update)
    variable = update.inputs[0].op.name if update.type == "AssignSubVariableOp" else ""
    if variable.endswith(("/moving_mean", "/moving_variance")):
      subs = [t.op for t in update.inputs[1].op.inputs
              if t.op.type == "Sub" and t.op.inputs[0].op.type == "ReadVariableOp"]
      if len(subs) != 1:
        raise LookupError("%s: no `variable - batch statistic` input" % update.name)
      targets[variable] = subs[0].inputs[1]
  if not targets:
    return None  # no batch norm (alexnet_v2, vgg)
  variables = {v.op.name: v for v in graph.get_collection(v1.GraphKeys.GLOBAL_VARIABLES)}
  placeholders = {name: v1.placeholder(variables[name].dtype.base_dtype, target.shape)
                  for name, target in targets.items()}
  assigns = [variables[name].assign(placeholders[name]) for name in targets]

  def reestimate(sess, feed):
    values = sess.run(targets, feed)
    sess.run(assigns, {placeholders[name]: value for name, value in values.items()})
  return reestimate


def train(spec, batches, workdir, result):
  graph, report, losses, seconds, checkpoint = _run_steps(spec, True, batches, STEPS,
                                                          os.path.join(workdir, "train"))
  if not np.all(np.isfinite(losses)):
    raise FloatingPointError("non-finite training loss %s" % losses)
  copy_ops = [f for f in report.float_ops if f.reason.startswith(LEARNING_PHASE_COPY)]
  result["train"] = dict(
      layers=len(report.layers), bn_folded=len(report.folded_batch_norms),
      quantizers=report.quantizer_count, losses=losses, first_step_s=seconds[0],
      float_ops=[(f.op, f.type, f.reason) for f in report.float_ops if f not in copy_ops],
      learning_phase_copy_float_ops=len(copy_ops), quantizer_names=_quantizer_names(graph))
  return checkpoint


def evaluate(spec, checkpoint, batches, result):
  graph = tf.Graph()
  with graph.as_default():
    images, out, _ = spec.build(is_training=False)
    quantize.experimental_create_eval_graph(**OPTIONS)
    with _session(graph) as sess:
      v1.train.Saver().restore(sess, checkpoint)
      value = sess.run(out, {images: batches[0][0]})
  result["eval"] = dict(quantizer_names=_quantizer_names(graph),
                        finite=bool(np.all(np.isfinite(value))))
  return graph


def _runtime_eval_graph(spec, checkpoint, mode, exported):
  """The frozen eval graph rewritten with requantize=`mode`: the reference for that runtime."""
  graph = tf.Graph()
  with graph.as_default():
    spec.build(is_training=False)
    quantize.experimental_create_eval_graph(requantize=mode, **OPTIONS)
  return export_frozen.freeze(graph, exported.output_nodes, checkpoint)


def to_tflite(spec, graph, checkpoint, batches, workdir, result):
  path = os.path.join(workdir, "model.tflite")
  record = result["tflite"] = dict(input_ranges_needed=False)
  try:
    exported = export.to_tflite(graph, path, ["net_in"], ["net_out"], checkpoint=checkpoint)
  except export.NotFullyIntegerError as not_integer:
    return _not_fully_integer(record, not_integer)
  except ValueError as err:
    if "has no FakeQuant range" not in str(err):
      raise
    record["input_ranges_needed"] = True
    try:
      exported = export.to_tflite(graph, path, ["net_in"], ["net_out"], checkpoint=checkpoint,
                                  input_ranges={"net_in": (0.0, 1.0)})
    except export.NotFullyIntegerError as not_integer:
      return _not_fully_integer(record, not_integer)
  record.update(fully_integer=True, megabytes=exported.size_bytes / 1e6)
  feeds = {"net_in": np.concatenate([x for x, _ in batches])}
  logits, expected = [], None
  record["float_eval"] = {}
  for kernels, delegates, mode in (("xnnpack", True, "xnnpack"),
                                   ("builtin", False, "tflite_builtin")):
    got, params, eval_feeds = agreement.run_tflite(exported.path, feeds, delegates)
    ((ints, (scale, zero_point)),) = [(got[k], params[k]) for k in got]
    if expected is None:  # the same input integers for both runtimes
      (expected,) = frozen.run_graph_def(exported.eval_graph_def, eval_feeds,
                                         exported.output_nodes).values()
    agree = agreement.compare_integers(expected, scale, zero_point, ints)
    record["float_eval"][kernels] = dict(equal_share=agree.equal_share,
                                         max_lsb=int(agree.max_lsb))
    (emulated,) = frozen.run_graph_def(_runtime_eval_graph(spec, checkpoint, mode, exported),
                                       eval_feeds, exported.output_nodes).values()
    agree = agreement.compare_integers(emulated, scale, zero_point, ints)
    record[kernels] = dict(equal_share=agree.equal_share, max_lsb=int(agree.max_lsb))
    logits.append(ints.astype(np.int64))
  # The two runtimes' own agreement bounds what one eval graph can agree with both.
  diff = np.abs(logits[0] - logits[1])
  record["xnnpack_vs_builtin"] = dict(equal_share=float(np.mean(diff == 0)),
                                      max_lsb=int(diff.max()))
  return None


def _not_fully_integer(record, err):
  record.update(fully_integer=False, float_tensors=int(re.search(r"(\d+) tensor", str(err))[1]),
                error=str(err)[:600])


def run_decent_q(spec, batches, workdir, result):
  size = spec.input_size
  config = decent_q.QuantizeConfig(input_nodes=["net_in"], output_nodes=["net_out"],
                                   input_shapes=[[-1, size, size, 3]],
                                   output_dir=os.path.join(workdir, "decent_q"))
  start = time.perf_counter()
  _, _, losses, _, checkpoint = _run_steps(
      spec, True, batches, STEPS, os.path.join(workdir, "decent_q"),
      rewrite=lambda: decent_q.CreateQuantizeTrainingGraph(config=config))
  with tf.Graph().as_default():
    spec.build(is_training=False)
    decent_q.CreateQuantizeEvaluationGraph(config=config)
    files = decent_q.CreateQuantizeDeployGraph(checkpoint=checkpoint, config=config)
  seconds = time.perf_counter() - start
  feeds = {"net_in": np.concatenate([x for x, _ in batches])}
  agrees = dpu_agreement.compare(files, feeds)
  worst = min(agrees.values(), key=lambda a: (a.equal_share, -a.max_lsb))
  result["decent_q"] = dict(seconds=seconds, losses=losses, tensors=len(agrees),
                            outputs=sorted(n for n in agrees if n.startswith("net_out")),
                            worst_equal_share=worst.equal_share, worst_max_lsb=worst.max_lsb)


def step_cost(spec, batches, workdir, result):
  """Median of steps 2-4 (the first builds the kernels), float and QAT in the same process."""
  medians = {}
  for label, quantized in (("float", False), ("qat", True)):
    seconds = _run_steps(spec, quantized, batches, 4, os.path.join(workdir, label))[3]
    medians[label] = float(np.median(seconds[1:]))
  result["step_s"] = medians


def main(argv):
  name, workdir = argv[0], argv[1]
  tf.get_logger().setLevel("ERROR")
  v1.disable_eager_execution()
  spec = zoo_models.MODELS[name]
  rng = np.random.RandomState(0)
  batches = [(rng.uniform(0, 1, (BATCH, spec.input_size, spec.input_size, 3)).astype(np.float32),
              rng.randint(0, spec.num_classes, BATCH).astype(np.int64)) for _ in range(STEPS)]
  result = {"model": name, "family": spec.family, "input_size": spec.input_size}
  checkpoint = train(spec, batches, workdir, result)
  eval_graph = evaluate(spec, checkpoint, batches, result)
  to_tflite(spec, eval_graph, checkpoint, batches, workdir, result)
  if "--decent-q" in argv:
    run_decent_q(spec, batches, workdir, result)
  if "--step-cost" in argv:
    step_cost(spec, batches, workdir, result)
  print(RESULT_TAG + json.dumps(result), flush=True)


if __name__ == "__main__":
  main(sys.argv[1:])
