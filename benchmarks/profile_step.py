"""Where a QAT training step's extra time goes: per-op time of the float and the QAT step, by kind.

Traces a few training steps (TF's RunMetadata, FULL_TRACE) of a Keras application called with
training=True in a tf.compat.v1 graph, float and after `quantize.create_training_graph` (or,
with --dpu, `decent_q.CreateQuantizeTrainingGraph`), and sums each op's kernel time by what
made the op:

  model          the user's own ops but their batch norms
  fold           the batch norms: in the QAT graph, the fold that computes them
                 (BatchNorm_Fold/, mul_fold, post_conv_mul)
  <role>_quant   a quantizer: act_quant, weights_quant, conv_quant, add_quant, ...;
                 the DPU's FixNeurons: aquant, wquant
  optimizer      variable updates and the step counter

and the same for their gradients ("gradients/" ops are charged to the forward op they
differentiate). Kernel times summed over ops are CPU time, not wall time: two cores run
independent ops at once. Run it on an idle machine; the README's Training step cost quotes it.

  python benchmarks/profile_step.py [--model mobilenetv2|resnet50] [--size 224] [--batch 8]
                                    [--dpu]
"""

import argparse
import collections
import re
import statistics

import bench_common as common
from bench_common import v1
import bench_step_cost  # dpu_rewrite
import resnet50_rewrite as graphs  # build_graph, add_train_op

# An op's kind, from the first scope component that names one (the rewrite's scope names).
_QUANT_SCOPE = re.compile(r"^(\w*_quant|aquant|wquant)$")
_FOLD_SCOPES = ("BatchNorm_Fold", "mul_fold", "post_conv_mul")
_OPTIMIZER_SCOPES = ("GradientDescent", "fake_quantization_step")


_BATCH_NORM_TYPES = ("FusedBatchNormV3", "FusedBatchNormGradV3")


def kind_of(op_name, op_type):
  """(kind, 'forward'|'backward') of an op of a float or rewritten training graph. A float
  graph's batch norms count as "fold": in the QAT graph the fold computes them."""
  parts = op_name.split("/")
  direction = "backward" if parts[0] == "gradients" else "forward"
  for part in parts:
    part = part[:-len("_grad")] if part.endswith("_grad") else part  # gradients/<op>_grad/...
    if _QUANT_SCOPE.match(part):
      return part, direction
    if part in _FOLD_SCOPES:
      return "fold", direction
    if part in _OPTIMIZER_SCOPES:
      return "optimizer", direction
  return ("fold" if op_type in _BATCH_NORM_TYPES else "model"), direction


def traced_step(sess, train_op, feed):
  """({(kind, direction): kernel seconds}, wall seconds) of one traced training step."""
  metadata = v1.RunMetadata()
  sess.run(train_op, feed, options=v1.RunOptions(trace_level=v1.RunOptions.FULL_TRACE),
           run_metadata=metadata)
  totals, starts, ends = collections.Counter(), [], []
  for device in metadata.step_stats.dev_stats:
    for node in device.node_stats:
      name = node.node_name.split(":")[0]
      if name in ("_SOURCE", "_SINK"):
        continue
      try:
        op_type = sess.graph.get_operation_by_name(name).type
      except KeyError:  # a node the runtime added (a send/recv, a constant it folded)
        op_type = None
      totals[kind_of(name, op_type)] += node.all_end_rel_micros / 1e6
      starts.append(node.all_start_micros)
      ends.append(node.all_start_micros + node.all_end_rel_micros)
  return totals, (max(ends) - min(starts)) / 1e6


def medians(traces):
  """The per-kind and wall medians of a list of `traced_step` results."""
  keys = set().union(*(totals for totals, _ in traces))
  return ({k: statistics.median(totals[k] for totals, _ in traces) for k in keys},
          statistics.median(wall for _, wall in traces))


def session_for(model, size, x, y, quantized, dpu=False):
  """(session, train op, feed, graph op count) of the float or the rewritten model."""
  b = graphs.build_graph(model, size)
  if quantized and dpu:
    bench_step_cost.dpu_rewrite(b)
  elif quantized:
    graphs.time_rewrite(b)
  graphs.add_train_op(b)
  sess = v1.Session(graph=b.graph)
  sess.run(b.init)
  feed = {b.images: x, b.labels: y}
  for _ in range(2):  # the first steps build kernels
    sess.run(b.train_op, feed)
  return sess, b.train_op, feed, len(b.graph.get_operations())


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--model", default="mobilenetv2", choices=sorted(graphs.MODELS))
  parser.add_argument("--size", type=int, default=224)
  parser.add_argument("--batch", type=int, default=8)
  parser.add_argument("--steps", type=int, default=5)
  parser.add_argument("--dpu", action="store_true", help="the DPU rewrite (decent_q)")
  args = parser.parse_args(argv)
  graphs.BATCH = args.batch
  x, y = common.random_batch(args.batch, args.size)
  runs = [session_for(args.model, args.size, x, y, quantized, args.dpu)
          for quantized in (False, True)]
  traces = [[], []]
  for _ in range(args.steps):  # in turn, so that machine load falls on both alike
    for run, trace in zip(runs, traces):
      trace.append(traced_step(*run[:3]))
  (flt, flt_wall), (qat, qat_wall) = medians(traces[0]), medians(traces[1])
  flt_total, qat_total = sum(flt.values()), sum(qat.values())
  print("%s %dx%d batch %d, %s rewrite, %s; median of %d traced steps each, interleaved" % (
      args.model, args.size, args.size, args.batch, "DPU" if args.dpu else "contrib",
      common.machine(), args.steps))
  print("graph ops: float %d, QAT %d" % (runs[0][3], runs[1][3]))
  print("step wall time: float %.3f s, QAT %.3f s (%.2fx)" % (flt_wall, qat_wall,
                                                              qat_wall / flt_wall))
  print("kernel time summed: float %.3f s, QAT %.3f s (%.2fx)\n" % (flt_total, qat_total,
                                                                   qat_total / flt_total))
  print("| kind | QAT forward s | QAT backward s | share of the extra kernel time |")
  print("|---|---|---|---|")
  extra = qat_total - flt_total
  rows = sorted({kind for kind, _ in qat}, key=lambda k: -(qat.get((k, "forward"), 0)
                                                           + qat.get((k, "backward"), 0)))
  for kind in rows:
    fwd, bwd = qat.get((kind, "forward"), 0.0), qat.get((kind, "backward"), 0.0)
    in_float = flt.get((kind, "forward"), 0.0) + flt.get((kind, "backward"), 0.0)
    label = "%s (float: %.3f s)" % (kind, in_float) if in_float else kind
    print("| %s | %.3f | %.3f | %.0f%% |" % (label, fwd, bwd,
                                            100.0 * (fwd + bwd - in_float) / extra))
  return 0


if __name__ == "__main__":
  raise SystemExit(main())
