"""The pipeline every front end shares: check, fold batch norms, insert quantizers, report."""

import functools
import time

from absl import logging

from qat_rewrite.graph.view import GraphView
from qat_rewrite.passes import checks, lone_batch_norm, settings_record
from qat_rewrite.passes.fold_batch_norm import (apply_folds, find_batch_norm_folds,
                                                unscale_on_weights)
from qat_rewrite.passes.insert_quantizers import Settings, insert_quantizers
from qat_rewrite.quant import fake_quant, integer_requantize, pool_rounding
from qat_rewrite.quant.spec import activation_spec, weight_spec
from qat_rewrite.report import LEARNING_PHASE_COPY, FloatOp, QuantizeReport


def _check_bits(name, value):
  if isinstance(value, bool) or not isinstance(value, int) or not 2 <= value <= 16:
    raise ValueError("%s must be an integer in 2..16 (FakeQuant's limits), got %r" % (name, value))


def _check_delay(name, value):
  if value is None:
    return
  if isinstance(value, bool) or not isinstance(value, int) or value < 0:
    raise ValueError("%s must be a non-negative integer number of steps or None, got %r"
                     % (name, value))


def fold_for_quantization(graph, training, in_scope, freeze_bn_delay=None,
                          fold_lone_batch_norms=False):
  """The steps every target shares: refuse what cannot be rewritten, then fold batch norms.

  With `fold_lone_batch_norms`, a batch norm that follows no weight layer first gets a unit
  depthwise layer to fold into (see `lone_batch_norm`). Returns (report, folded, excluded,
  use_resource): the report so far, layer name -> folded batch norm name, layers that must
  stay float -> why, and whether the graph uses resource variables. Nothing is edited before
  every check has passed.
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
    lone_batch_norm.add_unit_layers(graph, lone)
    folds, unfoldable, folded_before = find_batch_norm_folds(GraphView(graph), in_scope)
    notes.append("%d batch norm(s) that follow no weight layer fold into a unit 1x1 depthwise "
                 "layer each (TFLite runs them as int8 DEPTHWISE_CONV_2D), e.g. %s"
                 % (len(lone), lone[0].name))
  types = {op.type for op in graph.get_operations()}
  use_resource = "VariableV2" not in types or "VarHandleOp" in types
  folded, fold_notes = apply_folds(graph, folds, training, freeze_bn_delay, use_resource)
  notes.extend(fold_notes)

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
  return report, folded, excluded, use_resource


def _learning_phase_copy(conditional, folds):
  """The conditional-BN layers that are Keras' construction copy of a model the user called
  with training=True/False: the called layers carry the same names under the model's name
  scope (`resnet50v2/conv1_conv/Conv2D` for `conv1_conv/Conv2D`), and they fold. A model built
  without `training=` and never called so has no folded twin, and keeps its warning."""
  called = set()
  for fold in folds:
    parts = fold.layer.name.split("/")
    called.update("/".join(parts[i:]) for i in range(1, len(parts)))
  return {layer for layer in conditional if layer.name in called}


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


def rewrite(graph, *args, **kwargs):
  """Rewrites `graph` in place for quantization-aware training or evaluation.

  See `_rewrite` for the arguments. New ops get absolute names, whatever name scope
  the caller is in (contrib's testWithNameScope).
  """
  with graph.as_default(), graph.name_scope(None):
    return _rewrite(graph, *args, **kwargs)


def _rewrite(graph, training, weight_bits=8, activation_bits=8, symmetric=False, quant_delay=None,
            freeze_bn_delay=None, scope=None, per_channel=False, quantize_inputs=False,
            pool_ties=pool_rounding.DEFAULT_RULE, requantize=integer_requantize.DEFAULT_MODE):
  """Everything that can be refused is checked before the graph is touched."""
  started = time.perf_counter()
  pool_rounding.check_rule(pool_ties)
  integer_requantize.check_mode(requantize)
  if training and requantize != integer_requantize.DEFAULT_MODE:
    raise ValueError("requantize=%r is for eval graphs only (it emulates a runtime's integer "
                     "arithmetic, which has no gradient): rewrite the training graph with "
                     "requantize='float'" % (requantize,))
  make_weight_spec = functools.partial(weight_spec, weight_bits, symmetric)
  make_activation_spec = functools.partial(activation_spec, activation_bits, symmetric)
  _check_bits("weight_bits", weight_bits)
  _check_bits("activation_bits", activation_bits)
  _check_delay("quant_delay", quant_delay)
  _check_delay("freeze_bn_delay", freeze_bn_delay)
  if scope is not None and not isinstance(scope, str):
    raise ValueError("scope must be a string or None, got %r" % (scope,))
  prefix = scope if not scope or scope.endswith("/") else scope + "/"
  in_scope = lambda op: not prefix or op.name.startswith(prefix)  # noqa: E731
  settings_text = settings_record.describe(
      target="quantize", weight_bits=weight_bits, activation_bits=activation_bits,
      symmetric=symmetric, per_channel_weights=per_channel, quantize_inputs=bool(quantize_inputs))
  settings_record.refuse_other_settings(graph, settings_text)

  report, folded, excluded, use_resource = fold_for_quantization(
      graph, training, in_scope, freeze_bn_delay, fold_lone_batch_norms=True)
  settings = Settings(
      training=training,
      weight_spec=lambda per_channel=per_channel: make_weight_spec(per_channel=per_channel),
      activation_spec=make_activation_spec, in_scope=in_scope, excluded=excluded,
      use_resource=use_resource, quantize_inputs=bool(quantize_inputs), pool_ties=pool_ties,
      requantize=requantize,
      delay_reached=lambda name: (fake_quant.step_reached(graph, quant_delay, name, use_resource)
                                  if quant_delay else None))
  layers, others, float_ops = insert_quantizers(graph, settings, folded)
  unscale_on_weights(graph)
  report.layers, report.other_quantizers = layers, others
  report.float_ops.extend(float_ops)
  if layers or others:
    settings_record.record(graph, settings_text, training, use_resource)
  warn_if_nothing_quantized(report)

  logging.info("%s (%.2f s)", report.summary(), time.perf_counter() - started)
  logging.debug("%s", report)
  return report
