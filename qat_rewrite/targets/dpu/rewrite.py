"""The DPU rewrite of a live graph: check, fold batch norms, copy DPU arithmetic, plan, insert.

Only the subgraph between the config's input and output nodes is touched. The plan and the
position tensors are remembered per graph, so that `deploy` can freeze what `rewrite` built.
"""

import time

from absl import logging

from qat_rewrite.graph import roles, state
from qat_rewrite.graph.view import subgraph_ops
from qat_rewrite.layers import kind_of
from qat_rewrite.passes import settings_record
from qat_rewrite.passes.fold_batch_norm import replaced_outputs, unscale_on_weights
from qat_rewrite.passes.rewrite import fold_for_quantization, warn_if_nothing_quantized
from qat_rewrite.report import LayerReport
from qat_rewrite.targets.dpu import quantizers, simulate
from qat_rewrite.targets.dpu.plan import Precision, make_plan

_REWRITTEN = "dpu.rewritten"  # graph state (graph/state.py): the Rewritten record
_POST_TRAINING_FIELDS = ("do_cle", "fold_bn_only", "fold_reshape", "replace_softmax")


class Rewritten:
  """What `deploy` needs from a rewrite: the plan, the position tensors, the mode, the config."""

  def __init__(self, plan, positions, training, config):
    self.plan, self.positions, self.training, self.config = plan, positions, training, config


def rewritten(graph):
  """The record of the DPU rewrite of `graph`, or None."""
  return state.get(graph, _REWRITTEN)


def rewrite(graph, config, training):
  """Rewrites `graph` in place for decent_q-style QAT (training) or evaluation; returns a report."""
  with graph.as_default(), graph.name_scope(None):
    started = time.perf_counter()
    _check(graph, config)
    for field in _POST_TRAINING_FIELDS:
      if getattr(config, field):
        logging.warning("QuantizeConfig.%s only affects post-training quantization; ignored", field)
    scope = subgraph_ops(graph, config.input_nodes, config.output_nodes)
    # A batch norm that follows no layer (ResNet v2's pre-activation) becomes a unit depthwise
    # layer, so the DPU runs it as one (decent_q keeps it as a quantized Mul + BiasAdd).
    report, folds, excluded, use_resource = fold_for_quantization(
        graph, training, lambda op: op in scope, fold_lone_batch_norms=True)
    # An output node that was a batch norm's last op now means the folded tensor.
    replaced = {name: tensor for name, tensor in replaced_outputs(graph).items()
                if name in config.output_nodes}
    output_ops = [replaced[n].op.name if n in replaced else n for n in config.output_nodes]
    if config.replace_sigmoid:
      simulate.replace_sigmoid(graph, subgraph_ops(graph, config.input_nodes, output_ops))
    pool_scales = {}
    if config.simulate_dpu:
      pool_scales = simulate.simulate_dpu(
          graph, subgraph_ops(graph, config.input_nodes, output_ops), config.scale_all_avgpool)
    scope = subgraph_ops(graph, config.input_nodes, output_ops) - set(excluded)
    precision = Precision(config.weight_bit, config.activation_bit, config.method,
                          config.nodes_bit_map, config.nodes_method_map)
    plan = make_plan(graph, scope, config.input_nodes, set(config.ignore_nodes), precision,
                     folds, pool_scales, config.align_concat, config.align_pool,
                     config.output_nodes, replaced)
    positions = quantizers.build(graph, plan, training, use_resource, config.adjust_shift_cut,
                                 config.adjust_shift_bias)
    unscale_on_weights(graph, folds.unscales)
    state.put(graph, _REWRITTEN, Rewritten(plan, positions, training, config))
    settings_record.record(graph, settings_record.describe(
        target="dpu", weight_bit=config.weight_bit, activation_bit=config.activation_bit,
        method=config.method, nodes_bit=list(config.nodes_bit),
        nodes_method=list(config.nodes_method)), training, use_resource)
    _fill_report(report, plan, excluded)
    warn_if_nothing_quantized(report)
    logging.info("%s (%.2f s)", report.summary(), time.perf_counter() - started)
    return report


def _check(graph, config):
  """Everything that can be refused, before the graph is touched."""
  for field in ("input_nodes", "output_nodes"):
    if not getattr(config, field):
      raise ValueError("QuantizeConfig.%s is empty: name the ops where quantization %s"
                       % (field, "starts" if field == "input_nodes" else "ends"))
  config.check_against_graph(graph)
  done = next((op.name for op in graph.get_operations()
               if op.type == "Identity" and roles.of(op) == quantizers.FIX_NEURON_ROLE), None)
  if done:
    raise ValueError("the graph already holds decent_q quantizers (%s): build the float graph "
                     "again and rewrite that; a graph is rewritten once" % done)
  for name, shape in zip(config.input_nodes, config.input_shapes):
    op = graph.get_operation_by_name(name)
    if len(op.outputs) != 1:
      raise ValueError("input node %r has %d outputs; give a single-output node (put a "
                       "tf.identity after it)" % (name, len(op.outputs)))
    rank = op.outputs[0].shape.rank
    if rank is not None and rank != len(shape):
      raise ValueError("QuantizeConfig.input_shapes: %r has rank %d but input node %r outputs "
                       "rank %d" % (list(shape), len(shape), name, rank))
    static = op.outputs[0].shape.as_list() if rank is not None else [None] * len(shape)
    if any(want not in (-1, have) and have is not None for want, have in zip(shape, static)):
      raise ValueError("QuantizeConfig.input_shapes: %r does not fit input node %r, whose shape "
                       "is %s" % (list(shape), name, op.outputs[0].shape))
  scope = subgraph_ops(graph, config.input_nodes, config.output_nodes)
  for name in config.output_nodes:
    if graph.get_operation_by_name(name) not in scope:
      raise ValueError("output node %r does not depend on any input node (%s): is it upstream of "
                       "them, or in another part of the graph?"
                       % (name, ", ".join(config.input_nodes)))


def _fill_report(report, plan, excluded):
  in_groups = set()
  for g in plan.groups:
    names = [g.weights.name] + ([g.bias.name] if g.bias else []) + [g.output.name]
    in_groups.update(names)
    report.layers.append(LayerReport(layer=g.layer.name, kind=kind_of(g.layer).name,
                                     folded_batch_norm=g.folded_batch_norm,
                                     weights_quantized=True, quantizers=names))
  report.other_quantizers = [p.name for p in plan.points if p.name not in in_groups]
  report.float_ops.extend(plan.float_ops)
  if excluded:
    report.notes.append("%d layers behind a training-flag conditional stay float" % len(excluded))
