"""The DPU target on the command line: decent_q's files from a calibrated frozen graph."""

import tensorflow as tf

from qat_rewrite import error_report
from qat_rewrite.targets import target
from qat_rewrite.targets.dpu import calibrate, deploy, rewrite


def _output_names(args):
  return [deploy.EVAL_MODEL, deploy.DEPLOY_MODEL, deploy.INFO] + (
      [deploy.FIXNEURON_MODEL] if args.fixneuron_model else [])


def _calibrate(args, graph_def, input_fn, config):
  return calibrate.calibrated_contents(graph_def, input_fn, config, args.fixneuron_model)


def _report_rows(args, graph_def, contents, input_fn, config):
  """quantize_eval_model.pb against its float twin (the same model, quantizers bypassed)."""
  del args  # unused
  _, inputs = target.first_batch(graph_def, input_fn, config.input_nodes)
  eval_model = tf.compat.v1.GraphDef.FromString(contents[deploy.EVAL_MODEL])
  return error_report.frozen_graph_report(eval_model, inputs)


def _notes(graph, args, config_of):
  """{op name: how the DPU rewrite quantizes it, or why it stays float}."""
  if not args.input_nodes or not args.output_nodes:
    return "give --input_nodes and --output_nodes to see what is quantized"
  config = config_of(graph)
  with graph.as_default():
    rewrite.rewrite(graph, config, training=False)
  plan = rewrite.rewritten(graph).plan
  notes = {}
  for p in plan.points:
    op = p.tensor.op.name
    notes[op] = "; ".join(filter(None, [notes.get(op), "%s %d-bit, method %d (%s)"
                                        % (p.kind, p.bits, p.method, p.name)]))
  for g in plan.groups:
    notes[g.layer.name] = "layer: weights %d-bit%s, output %s" % (
        g.weights.bits, ", bias %d-bit" % g.bias.bits if g.bias else "", g.output.name)
  for f in plan.float_ops:
    notes[f.op] = "float: " + f.reason
  return notes


TARGET = target.Target(
    name="dpu", summary="decent_q's files", output_names=_output_names, calibrate=_calibrate,
    report_rows=_report_rows, notes=_notes,
    flags=(target.Flag("fixneuron_model", dict(
        type=int, default=1, help="also write quantize_eval_model_fixneuron.pb (default 1)")),))
