"""auto_decomposition and decompose_graph: the workflow around the Tucker-2 math.

auto_decomposition reads the trained model, decides per conv (eligibility, rank rule, whether
the FLOP saving is worth it), edits the imported graph, fills the new kernels and saves the
decomposed model with a JSON record. decompose_graph replays the record on the user's training
graph, checking everything before it changes anything.
"""

import dataclasses

import numpy as np
import tensorflow as tf
from absl import logging

from qat_rewrite.decompose import eligibility, graph_edit, measure, record, save, tucker

v1 = tf.compat.v1

# Rank rule defaults: at most 50 % relative kernel error (fine-tuning follows, as AMCT asks),
# and a layer is decomposed only if its FLOPs fall at least 1.5x (three layers instead of one
# cost memory traffic and launch overhead that a smaller saving would not repay).
MAX_ERROR = 0.5
MIN_FLOP_REDUCTION = 1.5


@dataclasses.dataclass
class Options:
  max_error: float = MAX_ERROR
  min_flop_reduction: float = MIN_FLOP_REDUCTION
  ranks: dict = None  # {conv name: (R_in, R_out)} overrides the rule (tests, benchmarks)


def load_graph(meta_path, ckpt_path):
  """(graph, checkpoint reader, the variables to restore).

  Raises ValueError if the two files do not belong together: a model variable (trainable, a
  model or moving-average variable, a BN moving statistic) missing from the checkpoint, or any
  shape that differs. Other variables missing (optimizer slots, a step counter saved apart) are
  left out of the decomposed model.
  """
  graph = tf.Graph()
  with graph.as_default():
    try:
      v1.train.import_meta_graph(meta_path, clear_devices=True)
    except Exception as e:  # a meta file of another TF or a corrupt file: name the file
      raise ValueError("meta_path %r cannot be imported: %s" % (meta_path, e)) from e
  try:
    reader = tf.train.load_checkpoint(ckpt_path)
  except (tf.errors.OpError, ValueError) as e:
    raise ValueError("ckpt_path %r is not a readable checkpoint: %s" % (ckpt_path, e)) from e
  shapes = reader.get_variable_to_shape_map()
  model = {v.op.name for key in (v1.GraphKeys.TRAINABLE_VARIABLES, v1.GraphKeys.MODEL_VARIABLES,
                                 v1.GraphKeys.MOVING_AVERAGE_VARIABLES)
           for v in graph.get_collection(key)}
  problems, restore, left_out = [], {}, []
  for var in graph.get_collection(v1.GraphKeys.GLOBAL_VARIABLES):
    name = var.op.name
    if name not in shapes:
      if name in model or "moving_" in name:
        problems.append("%s is missing" % name)
      else:
        left_out.append(name)
    elif var.shape.is_fully_defined() and list(shapes[name]) != var.shape.as_list():
      problems.append("%s has shape %s, the graph %s" % (name, shapes[name], var.shape.as_list()))
    else:
      restore[name] = var
  if problems:
    raise ValueError("checkpoint %r does not belong to %r: %s%s"
                     % (ckpt_path, meta_path, "; ".join(problems[:3]),
                        " (and %d more)" % (len(problems) - 3) if len(problems) > 3 else ""))
  if left_out:  # optimizer slots, a step counter: one line, not one per variable
    logging.warning("%d variables of the graph are not in %s and are left out of the decomposed "
                    "model (optimizer slots or counters; the model's own are all there): %s%s",
                    len(left_out), ckpt_path, ", ".join(left_out[:3]),
                    ", ..." if len(left_out) > 3 else "")
  return graph, reader, restore


def plan_layers(graph, reader, options):
  """(plans, kernels {conv: Tucker2}, report rows) for every forward Conv2D of `graph`."""
  plans, kernels, report = [], {}, []
  for conv in eligibility.forward_convs(graph):
    row = {"conv": conv.name, "kernel_shape": conv.inputs[1].shape.as_list()}
    report.append(row)
    if conv.inputs[1].shape.is_fully_defined():
      out_hw = _output_hw(conv)
      row.update(flops_before=measure.flops(row["kernel_shape"], (1, 1), out_hw, 1)[0],
                 params_before=int(np.prod(row["kernel_shape"])),
                 flops_per="image" if out_hw else "output pixel")
    why = eligibility.why_not(conv)
    if why:
      row.update(decision="left alone", reason=why)
      continue
    weight = eligibility.weight_variable(conv)
    kernel = reader.get_tensor(weight.name)
    forced = (options.ranks or {}).get(conv.name)
    stride = graph_edit.stride_of(conv)
    out_hw = _output_hw(conv)
    t = tucker.decompose(kernel, options.max_error, forced, cost=lambda r_in, r_out: (
        measure.flops(kernel.shape, (r_in, r_out), out_hw, stride)[1]))
    ranks = (t.core.shape[2], t.core.shape[3])
    before, after = measure.flops(kernel.shape, ranks, out_hw, stride)
    row.update(ranks=list(ranks), kernel_error=round(t.kernel_error, 5), flops_after=after,
               flop_reduction=round(before / after, 3),
               params_after=measure.params(kernel.shape, ranks)[1])
    if forced is None and before < options.min_flop_reduction * after:
      row.update(decision="left alone",
                 reason="FLOP reduction %.2fx at ranks %s (max error %.2f) is below %.2fx"
                 % (before / after, list(ranks), options.max_error, options.min_flop_reduction))
      continue
    row.update(decision="decomposed",
               output_error=round(measure.output_error(kernel, t, stride), 5))
    plans.append(graph_edit.Plan(conv.name, weight.name, tuple(kernel.shape), ranks))
    kernels[conv.name] = t
  return plans, kernels, report


def _output_hw(conv):
  shape = conv.outputs[0].shape
  if shape.rank != 4:
    return None
  hw = shape.as_list()[2:] if conv.get_attr("data_format") == b"NCHW" else shape.as_list()[1:3]
  return hw if None not in hw else None


def auto_decompose(meta_path, ckpt_path, save_path, options=None):
  """Returns (new conv names, report rows, written paths)."""
  options = options or Options()
  graph, reader, originals = load_graph(meta_path, ckpt_path)
  plans, kernels, report = plan_layers(graph, reader, options)
  graph_edit.check(graph, plans)
  with graph.as_default():
    new_vars = {plan.conv: graph_edit.apply(graph, plan) for plan in plans}
    kept = [v for v in v1.global_variables() if v.op.name in originals]
    saver = v1.train.Saver(kept + [v for vs in new_vars.values() for v in vs],
                           save_relative_paths=True)
    with v1.Session(graph=graph) as sess:
      v1.train.Saver(originals).restore(sess, ckpt_path)
      for conv, variables in new_vars.items():
        t = kernels[conv]
        for var, value in zip(variables, (t.first, t.core, t.last)):
          sess.run(var.initializer, {var.initial_value: value})
      written = save.save_model(sess, saver, save_path,
                                {".json": record.to_bytes(plans, report)})
  for row in report:
    _log(row)
  return [name for plan in plans for name in plan.child_convs()], report, written


def decompose(graph, save_path):
  """decompose_graph: replays `<save_path>.json` on `graph`; returns (new conv names, report)."""
  plans, report = record.load(save_path)
  if graph.finalized:
    raise ValueError("the graph is finalized: call decompose_graph before creating the session")
  graph_edit.check_no_training_ops(graph)
  graph_edit.check(graph, plans)
  for plan in plans:
    graph_edit.apply(graph, plan)
  return [name for plan in plans for name in plan.child_convs()], report


def _log(row):
  if row["decision"] == "decomposed":
    logging.info("decomposed %s %s -> ranks %s: kernel error %.4f, output error %.4f, "
                 "FLOPs %.2fx fewer", row["conv"], row["kernel_shape"], row["ranks"],
                 row["kernel_error"], row["output_error"], row["flop_reduction"])
  else:
    logging.info("left alone %s %s: %s", row["conv"], row["kernel_shape"], row["reason"])


def format_report(report):
  """The report as aligned text lines, for printing."""
  lines = []
  for row in report:
    if row["decision"] == "decomposed":
      lines.append("  %-40s %-18s ranks %-12s kernel err %.4f  output err %.4f  FLOPs /%.2f"
                   % (row["conv"], row["kernel_shape"], row["ranks"], row["kernel_error"],
                      row["output_error"], row["flop_reduction"]))
    else:
      lines.append("  %-40s %-18s left alone: %s" % (row["conv"], row["kernel_shape"],
                                                    row["reason"]))
  return "\n".join(lines)

