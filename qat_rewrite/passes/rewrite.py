"""The pipeline every front end shares: check, fold batch norms, insert quantizers, report."""

import collections
import time

from absl import logging

from qat_rewrite.graph.view import GraphView
from qat_rewrite.passes import checks, lone_batch_norm, settings_record
from qat_rewrite.passes.fold_batch_norm import (apply_folds, find_batch_norm_folds,
                                                unscale_on_weights)
from qat_rewrite.passes.insert_quantizers import Settings, insert_quantizers
from qat_rewrite.report import LEARNING_PHASE_COPY, FloatOp, QuantizeReport


def fold_for_quantization(graph, training, in_scope, freeze_bn_delay=None,
                          fold_lone_batch_norms=False):
  """The steps every target shares: refuse what cannot be rewritten, then fold batch norms.

  With `fold_lone_batch_norms`, a batch norm that follows no weight layer first gets a unit
  depthwise layer to fold into (see `lone_batch_norm`). Returns (report, folds, excluded,
  use_resource): the report so far, the `Folds` (`.folded`: layer name -> folded batch norm
  name), layers that must stay float -> why, and whether the graph uses resource variables.
  Nothing is edited before every check has passed.
  """
  checks.check_no_training_ops(graph)
  conditional = checks.conditional_batch_norms(graph, in_scope)
  view = GraphView(graph)
  folds, unfoldable, folded_before = find_batch_norm_folds(view, in_scope)
  copy = _learning_phase_copy(conditional, folds)
  # A graph rewritten before has its lone batch norms folded (and folds' own batch norms).
  first_rewrite = settings_record.recorded(graph) is None
  lone = (lone_batch_norm.lone_batch_norms(graph, in_scope, folds)
          if fold_lone_batch_norms and first_rewrite else [])
  if conditional and not folds and not folded_before and not lone:
    checks.raise_conditional_batch_norm(next(iter(conditional.values())))
  notes = []
  if lone:
    units = lone_batch_norm.add_unit_layers(graph, lone)
    unit_ops = {op for name in units
                for op in (graph.get_operation_by_name(name),
                           graph.get_operation_by_name(name).inputs[1].op)}
    in_scope = lambda op, outer=in_scope: outer(op) or op in unit_ops  # noqa: E731
    folds, unfoldable, folded_before = find_batch_norm_folds(GraphView(graph), in_scope)
    notes.append("%d batch norm(s) that follow no weight layer fold into a unit 1x1 depthwise "
                 "layer each (TFLite runs them as int8 DEPTHWISE_CONV_2D), e.g. %s"
                 % (len(lone), lone[0].name))
  types = {op.type for op in graph.get_operations()}
  use_resource = "VariableV2" not in types or "VarHandleOp" in types
  result = apply_folds(graph, folds, training, freeze_bn_delay, use_resource)
  notes.extend(result.notes)

  report = QuantizeReport(mode="training" if training else "eval", notes=notes)
  report.float_ops.extend(FloatOp(op.name, op.type, "batch norm not folded: " + why)
                          for op, why in unfoldable)
  excluded = {layer: _why_conditional(layer, cond, copy) for layer, cond in conditional.items()}
  left = [cond for layer, cond in conditional.items() if layer not in copy]
  if left:
    logging.warning("%d layers stay float: their batch norm is behind a training-flag "
                    "conditional (e.g. %s)", len(left), left[0].name)
  if len(left) < len(conditional):
    logging.info("%d layers stay float %s", len(conditional) - len(left), LEARNING_PHASE_COPY)
  return report, result, excluded, use_resource


def _learning_phase_copy(conditional, folds):
  """The conditional-BN layers that are Keras' construction copy of a model the user called
  with training=True/False: the called layers carry the same names under the model's name
  scope (`resnet50v2/conv1_conv/Conv2D` for `conv1_conv/Conv2D`), and they fold. The copy may
  nest a layer in scopes the called model does not (NASNet's
  `reduction_A_block_stem_1/reduction_conv_1_stem_1/Conv2D` for
  `NASNet/reduction_conv_1_stem_1/Conv2D`), so a name also matches by an end of two parts or
  more that one folded layer alone has. A model built without `training=` and never called so
  has no folded twin, and keeps its warning."""
  called, owners = set(), collections.Counter()
  for fold in folds:
    parts = fold.layer.name.split("/")
    called.update("/".join(parts[i:]) for i in range(1, len(parts)))
    owners.update(_name_ends(fold.layer.name))
  return {layer for layer in conditional
          if layer.name in called or any(owners[end] == 1 for end in _name_ends(layer.name))}


def _name_ends(name):
  """The ends of an op name of two parts or more: 'a/b/c' -> {'a/b/c', 'b/c'}."""
  parts = name.split("/")
  return {"/".join(parts[i:]) for i in range(len(parts) - 1)}


def _why_conditional(layer, cond, copy):
  if layer in copy:
    return "%s (its batch norm is inside the training-flag conditional %s)" % (
        LEARNING_PHASE_COPY, cond.name)
  return ("its batch norm is inside the training-flag conditional %s; build with "
          "training=True/False to quantize it" % cond.name)


def warn_if_nothing_quantized(report):
  """A graph with no quantizable layer is not an error (the report says why), but is surprising."""
  if not report.layers:
    logging.warning("no quantizable layer (conv, depthwise, transpose conv, matmul) found; the "
                    "report lists the compute ops left in float and why")


def rewrite(graph, options):
  """Rewrites `graph` in place for quantization-aware training or evaluation, as `options`
  (a `RewriteOptions`) ask. Everything that can be refused is checked before the graph is
  touched. New ops get absolute names, whatever name scope the caller is in (contrib's
  testWithNameScope).
  """
  with graph.as_default(), graph.name_scope(None):
    return _rewrite(graph, options)


def _rewrite(graph, options):
  started = time.perf_counter()
  settings_text = settings_record.describe(
      target="quantize", weight_bits=options.weight_bits,
      activation_bits=options.activation_bits, symmetric=options.symmetric,
      per_channel_weights=options.per_channel, quantize_inputs=bool(options.quantize_inputs))
  settings_record.refuse_other_settings(graph, settings_text)

  report, folds, excluded, use_resource = fold_for_quantization(
      graph, options.training, options.in_scope, options.freeze_bn_delay,
      fold_lone_batch_norms=True)
  settings = Settings(options=options, graph=graph, excluded=excluded, use_resource=use_resource)
  layers, others, float_ops = insert_quantizers(graph, settings, folds.folded)
  unscale_on_weights(graph, folds.unscales)
  report.layers, report.other_quantizers = layers, others
  report.float_ops.extend(float_ops)
  if layers or others:
    settings_record.record(graph, settings_text, options.training, use_resource)
  warn_if_nothing_quantized(report)

  logging.info("%s (%.2f s)", report.summary(), time.perf_counter() - started)
  logging.debug("%s", report)
  return report
