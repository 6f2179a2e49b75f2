"""Contrib's and TFLite's quantizer rules: where a (folded) graph's FakeQuant ops go, planned
as `quantizer_plan.Point`s and then built (`build_quantizers`).

Placement and names follow tf.contrib.quantize, so its checkpoints and tools keep
working: `weights_quant` on the weights, `act_quant` after the activation (or after
the last op of a layer without one), `conv_quant` and `add_quant` around a residual
add before the activation, `post_activation_bypass_quant` after a residual add that
follows the activation, and `<op>/activation_<Type>_quant` on other Add/Mul ops fed
by quantized tensors and on a ReLU of a quantized tensor that no layer owns. Beyond contrib,
pooling gets the ranges TFLite needs: an AvgPool output is rounded on its input quantizer's
grid (`<op>/activation_AvgPool_quant`, no new variables), a pooling Mean gets a range of its
own (`<op>/activation_Mean_quant`), and a max pool read by several layers gets its input's grid
explicitly (`<op>/activation_MaxPool_quant`).
A concat runs on one grid, as TFLite runs it (`<op>/activation_ConcatV2_quant`): the grid of
its first input that has one, else a range of its own; a layer output that only concats read
gets no `act_quant` of its own.
A residual sum read beside its ReLU gets `add_quant`, and a layer output read beside its ReLU
`conv_quant`. Every quantizer feeds every reader of the tensor it quantizes.
"""

import dataclasses

import numpy as np
import tensorflow as tf

from qat_rewrite.graph import editor, roles
from qat_rewrite.graph.matcher import find_matches
from qat_rewrite.graph.view import (FAKE_QUANT_TYPES, RELU_TYPES, SHAPE_TYPES, GraphView,
                                    constant_value, context, dropout_input, folded_constant,
                                    is_dropout, is_fake_quantized, is_weight_unscale, join,
                                    sole_relu_consumer, variable_source)
from qat_rewrite.layers import PASS_THROUGH_TYPES, kind_of
from qat_rewrite.layers.catalogue import ADD_TYPES, LAYER_TYPES, UNSUPPORTED_COMPUTE_TYPES
from qat_rewrite.layers.patterns import FUSED_BATCH_NORM_TYPES, quantizable_layer
from qat_rewrite.passes import runtime_emulation
from qat_rewrite.passes.build_quantizers import build
from qat_rewrite.passes.fold_batch_norm import folded_away_ops
from qat_rewrite.passes.options import RewriteOptions
from qat_rewrite.passes.quantizer_grids import SAME_GRID_TYPES
from qat_rewrite.passes.quantizer_plan import (BiasGrid, OwnRange, Point, PoolRounding,
                                               QuantizerPlan, SameGrid, edges_of)
from qat_rewrite.quant import fake_quant, integer_requantize, pool_rounding
from qat_rewrite.report import FloatOp, LayerReport

# The ops of a layer before its residual add and activation, last first.
_CHAIN_ROLES_LAST_FIRST = ("forced_updates", "bias", "fold_reshape_back", "folded_bn", "fold_scale",
                           "batch_to_space", "layer")
_GENERIC_TYPES = ADD_TYPES + ("Mul",)
# Preprocessing by constants that TFLite runs in int8; the data must come first in the last two.
_DATA_FIRST_TYPES = ("Sub", "RealDiv")
_PREPROCESSING_TYPES = _GENERIC_TYPES + _DATA_FIRST_TYPES
_POOL_TYPES = ("AvgPool", "Mean")
_CONCAT_TYPES = ("ConcatV2",)


@dataclasses.dataclass(frozen=True)
class Settings:
  """The caller's options and what folding found out about the graph."""
  options: RewriteOptions
  graph: tf.Graph
  excluded: dict  # layer op -> why it stays float
  use_resource: bool  # quantizer variables match the graph's own (resource or ref)

  def delay_reached(self, name):
    """A scalar bool tensor, true once quant_delay steps have run; None without a delay."""
    if not self.options.quant_delay:
      return None
    return fake_quant.step_reached(self.graph, self.options.quant_delay, name, self.use_resource)


def insert_quantizers(graph, settings, folded):
  """Quantizes every matched layer; returns (layer reports, other quantizers, float ops)."""
  _merge_repeated_relus(graph, settings)
  view = GraphView(graph)
  plan = QuantizerPlan(view)
  # A layer's chain ends where the scope ends; folded-away ops never run.
  excluded = folded_away_ops(view) | {op for op in view.ops if not settings.options.in_scope(op)}
  matches = find_matches(quantizable_layer(), view.ops, "layer", exclude=excluded)
  reports, quantized_weights, layer_ops, inputs = [], {}, set(), []
  concatenated = set()  # layer outputs left to their concat's quantizer
  float_ops = _unmatched_layers(view, matches, settings)
  for m in matches:
    layer = m.op("layer")
    layer_ops |= m.ops
    if layer in settings.excluded:
      continue
    kind = kind_of(layer)
    why = kind.supports(layer) if kind.supports else None
    if why:
      float_ops.append(FloatOp(layer.name, layer.type, why))
      continue
    reports.append(_quantize_layer(plan, m, settings, folded, quantized_weights, concatenated))
    inputs.append((m, reports[-1]))
  generic = LayerReport(layer="", kind="output")
  _quantize_generic_ops(plan, settings, layer_ops, concatenated, generic)
  # after every output quantizer: layers are not in graph order
  if settings.options.quantize_inputs:
    for m, report in inputs:
      layer = m.op("layer")
      _quantize_model_input(plan, layer.inputs[kind_of(layer).data_input], layer, settings,
                            report)
  biases = [(m, report) for m, report in inputs if m.has("bias")]
  # Last: every input quantizer (pools, generic ops) is planned by now.
  for m, report in biases:
    report.bias_quantized = _quantize_bias(plan, m.op("layer"), m.op("bias"),
                                           m.tensor("bias_value"))
  build(graph, plan, settings)
  # last: every quantizer is in place
  if settings.options.requantize != integer_requantize.DEFAULT_MODE:
    runtime_emulation.emulate(graph, [(m.op("layer"), report) for m, report in inputs],
                              settings.options.requantize, settings.options.in_scope)
  float_ops.extend(_lone_batch_norms(view, settings, layer_ops, set(folded.values())))
  return reports, generic.quantizers, float_ops


def _merge_repeated_relus(graph, settings):
  """The readers of a second ReLU (or ReLU6) of one tensor read the first's output instead
  (NASNet opens each branch of a cell with a ReLU of the cell input). The converter merges such
  ReLUs into one before it fuses them into the layer, so the int8 model rounds their values
  once, on one grid; apart, they had a range each and the layer output a third, rounded twice.
  The second ReLU stays in the graph, unread, and reads the first (the same values), so the
  layer output has one reader: the ReLU fused into it. The first is the earliest in graph order
  (`consumers()` has no stable order, and the rewrite must name the same quantizers each run)."""
  ops = graph.get_operations()
  order = {op.name: i for i, op in enumerate(ops)}
  for op in ops:
    if op.type not in RELU_TYPES or not settings.options.in_scope(op):
      continue
    first = min((c for c in op.inputs[0].consumers() if c.type == op.type
                 and settings.options.in_scope(c)), key=lambda c: order[c.name])
    if first is not op:
      editor.reroute(op.outputs[0], first.outputs[0], list(op.outputs[0].consumers()))
      editor.replace_input(op, 0, first.outputs[0])


def _quantize_layer(plan, m, settings, folded, quantized_weights, concatenated):
  layer = m.op("layer")
  kind = kind_of(layer)
  report = LayerReport(layer=layer.name, kind=kind.name, folded_batch_norm=folded.get(layer.name))
  _quantize_weights(plan, layer, kind, settings, quantized_weights, report)
  ctx = context(layer)
  last = next(m.op(role) for role in _CHAIN_ROLES_LAST_FIRST if m.has(role))
  # TFLite fuses only ReLU/ReLU6 into a conv or an ADD (not into TRANSPOSE_CONV) and drops an
  # Identity; before any other activation (LeakyRelu) the layer output or the sum is a tensor of
  # its own: its own range.
  fusable = RELU_TYPES if m.has("bypass") or kind.fuses_relu else ()
  # An Identity or a dropout (the eval graph's Identity) passes the layer output on unchanged.
  passes_on = m.has("activation") and (m.op("activation").type == "Identity"
                                       or is_dropout(m.op("activation")))
  unfused = m.has("activation") and not passes_on and m.op("activation").type not in fusable
  # A layer output read beside its fused ReLU (NASNet's cell-input conv, also padded into the
  # cell's pools) is a tensor of its own: the converter runs the conv in int8 only if every
  # reader reads its FakeQuant, and then the ReLU requantizes.
  read_beside = (m.has("activation") and not passes_on and not unfused
                 and _read_beside(plan.view, last.outputs[0], m.op("activation")))
  if (unfused or read_beside) and not m.has("bypass"):
    _quantize_output(plan, last.outputs[0], join(ctx, "conv_quant"), settings,
                     settings.options.activation_spec(), report)
  if m.has("bypass"):
    add_ctx = context(m.op("bypass"))
    # Every reader gets the quantized tensor, not only the add (contrib rerouted the add
    # alone, so a conv output also read by the next block stayed float).
    _quantize_output(plan, last.outputs[0], join(ctx, "conv_quant"), settings,
                     settings.options.activation_spec(), report)
    if not m.has("activation") or unfused:
      _quantize_unless_concatenated(plan, m.tensor("bypass"), join(add_ctx, "add_quant"),
                                    settings, concatenated, report)
    elif len(plan.view.consumers(m.tensor("bypass"))) > 1:
      # A sum read beside its ReLU (Xception's next shortcut) is a tensor of its own: the
      # converter quantizes an ADD only if every reader, the ReLU too, reads its FakeQuant.
      _quantize_output(plan, m.tensor("bypass"), join(add_ctx, "add_quant"), settings,
                       settings.options.activation_spec(), report)
    ctx = add_ctx
    last = m.op("bypass")
  if m.has("activation"):
    last = m.op("activation")
  if m.has("activation") or not m.has("bypass"):
    # Before a dropout: training quantizes what eval quantizes, the values it drops at random.
    output = dropout_input(last) if is_dropout(last) else last.outputs[0]
    _quantize_unless_concatenated(plan, output, join(ctx, "act_quant"), settings, concatenated,
                                  report)
  if m.has("post_bypass"):
    _quantize_output(plan, m.tensor("post_bypass"), join(context(m.op("post_bypass")),
                     "post_activation_bypass_quant"), settings, settings.options.activation_spec(),
                     report)
  return report


def _quantize_weights(plan, layer, kind, settings, quantized_weights, report):
  weight = layer.inputs[kind.weight_input]
  report.weights_quantized = True
  if is_fake_quantized(weight):
    return  # already quantized by an earlier rewrite
  source = variable_source(weight) or weight.op
  if source in quantized_weights:  # a weight shared with an earlier layer: reuse its quantizer
    plan.read_by(layer, kind.weight_input, quantized_weights[source])
    report.notes.append("weights shared with an earlier layer; one quantizer serves both")
    return
  spec = settings.options.weight_spec()
  per_channel_shape = kind.per_channel_shape(layer, weight.shape.as_list()) if spec.per_channel else None
  if spec.per_channel and per_channel_shape is None:
    spec = settings.options.weight_spec(per_channel=False)
    report.notes.append("per-channel weights are not supported for %s; per-tensor used" % layer.type)
  quantized_weights[source] = plan.add(Point(
      join(context(layer), "weights_quant"), weight, [(layer, kind.weight_input)],
      OwnRange(spec, per_channel_shape), report))


def _quantize_output(plan, tensor, name, settings, spec, report, owner=None, nonnegative=None):
  """Plans a quantizer with a range of its own on `tensor` for all its readers, unless it has
  one or its `owner` op (default: the tensor's own) is out of scope. `nonnegative` defaults to
  whether `tensor` is a ReLU output."""
  if not settings.options.in_scope(owner or tensor.op) or plan.quantized(tensor):
    return
  nonnegative = tensor.op.type in RELU_TYPES if nonnegative is None else nonnegative
  plan.add(Point(name, tensor, edges_of(tensor, plan.view.consumers(tensor)),
                 OwnRange(spec, nonnegative=nonnegative,
                          in_update_ops=_may_update(plan.view, tensor)), report))


def _read_beside(view, tensor, reader):
  """Whether an op besides `reader` reads the values of `tensor` (not just its shape)."""
  return any(c is not reader and c.type not in SHAPE_TYPES for c in view.consumers(tensor))


def _may_update(view, tensor):
  """Whether the range update of a quantizer on `tensor` may join UPDATE_OPS: not in a model
  that a training-flag conditional selects, whose input training never feeds."""
  return tensor.op not in view.conditional_models()


def _quantize_model_input(plan, tensor, layer, settings, report):
  """With `quantize_inputs`, a layer reading a tensor no quantizer covers (the model input, or
  preprocessing of it) gets `<layer>/input_quant` on it: the int8 model is fed integers, and
  the layer's bias is then rounded to TFLite's grid too. Constants are left alone."""
  if plan.input_grid(tensor) is not None or _reaches_fake_quant(plan, tensor, {}):
    return
  if constant_value(tensor) is not None:
    return
  rescaling = _rescaling_chain(tensor)
  # Asymmetric whatever `symmetric` says: TFLite's int8 inputs have a zero point, and an
  # image in [0, 1] would lose a bit to a symmetric range.
  spec = dataclasses.replace(settings.options.activation_spec(), symmetric=False)
  source = rescaling[0].inputs[0] if rescaling else tensor
  _quantize_output(plan, source, join(context(layer), "input_quant"), settings, spec, report,
                   owner=layer)
  for op in rescaling:
    _quantize_output(plan, op.outputs[0], join(op.name, "activation_%s_quant" % op.type),
                     settings, settings.options.activation_spec(), report, owner=layer)


def _rescaling_chain(tensor):
  """The ops between a placeholder and `tensor` that scale or shift it by constants, first
  first, or []: Keras' Rescaling (x·c + d, MobileNetV3) and Normalization ((x - mean) / std,
  EfficientNetV2, ConvNeXt). The input quantizer then goes on the placeholder and each of them
  gets a range, so TFLite runs them in int8 (a division by a constant as a MUL by its
  reciprocal) and the model takes the images' range (on the rescaled tensor, the input ran in
  float and the export needed input_ranges)."""
  chain = []
  while tensor.op.type in _PREPROCESSING_TYPES and len(tensor.op.inputs) == 2:
    data = [t for t in tensor.op.inputs if folded_constant(t) is None]
    if len(data) != 1 or (tensor.op.type in _DATA_FIRST_TYPES and data[0] is not
                          tensor.op.inputs[0]):
      return []
    chain.append(tensor.op)
    tensor = data[0]
  if tensor.op.type not in ("Placeholder", "PlaceholderWithDefault"):
    return []
  return chain[::-1]


def _quantize_generic_ops(plan, settings, layer_ops, concatenated, report):
  """Add/Mul ops fed by quantized tensors get an output quantizer (squeeze-excite, scaling),
  and so do ReLUs of quantized tensors that no layer owns, pools of quantized tensors and
  concats of quantized or `concatenated` tensors; in graph order, so a pool sees its input's
  quantizer and a concat its inner concats."""
  view = plan.view
  memo = {}
  for op in list(view.ops):
    if (op in layer_ops or not settings.options.in_scope(op) or dropout_input(op) is not None
        or is_weight_unscale(op)):  # dropout runs in training only: its range would be too
      continue
    if op.type in _POOL_TYPES:
      _quantize_pool(plan, op, settings, memo, report)
    elif op.type == "MaxPool" and len(view.consumers(op.outputs[0])) > 1:
      _quantize_on_input_grid(plan, op, report)
    elif op.type in _CONCAT_TYPES:
      _quantize_concat(plan, op, settings, memo, concatenated, report)
    elif op.type in _GENERIC_TYPES and any(_reaches_fake_quant(plan, t, memo) for t in op.inputs):
      target = sole_relu_consumer(op) or op  # an add fused with its ReLU is quantized after it
      _quantize_unless_concatenated(plan, target.outputs[0],
                                    join(op.name, "activation_%s_quant" % op.type), settings,
                                    concatenated, report)
    elif op.type in RELU_TYPES and _reaches_fake_quant(plan, op.inputs[0], memo):
      # A ReLU no layer owns (NASNet's branches each open with one on the cell input): its own
      # range, else each reading layer quantizes its output apart and the ReLU runs in float.
      _quantize_unless_concatenated(plan, op.outputs[0],
                                    join(op.name, "activation_%s_quant" % op.type), settings,
                                    concatenated, report)


def _quantize_pool(plan, op, settings, memo, report):
  """TFLite keeps AvgPool on its input's scale but rounds the average, so the eval graph rounds
  it with the input quantizer's range (the same variables: checkpoints need nothing new). A
  Mean (global average pooling) is requantized to a scale of its own: a new moving-average range.
  """
  output = op.outputs[0]
  if plan.quantized(output) or any(pool_rounding.is_ties_nudge(c) for c in output.consumers()):
    return
  name = join(op.name, "activation_%s_quant" % op.type)
  if op.type == "Mean":
    if _pools(op) and _reaches_fake_quant(plan, op.inputs[0], memo):
      _quantize_output(plan, output, name, settings, settings.options.activation_spec(), report)
    return
  source = plan.input_grid(op.inputs[0])
  if source is None:
    return
  kernel = op.get_attr("ksize")
  plan.add(Point(name, output, edges_of(output, plan.view.consumers(output)),
                 PoolRounding(source, kernel[1] * kernel[2], settings.options.pool_ties), report))


def _quantize_unless_concatenated(plan, tensor, name, settings, concatenated, report):
  """An output quantizer on `tensor`, unless it has one or only concats read it: the
  converter writes such a tensor (a layer output, a residual sum, an add) on its concat's
  grid, whatever range it had (NASNet's `h + sep(h)` branch, 1 LSB off on a third of its
  logits with a range of its own); it joins `concatenated`."""
  if plan.quantized(tensor):
    return
  if _read_only_by_concats(plan.view, tensor, settings):
    concatenated.add(tensor)
    return
  _quantize_output(plan, tensor, name, settings, settings.options.activation_spec(), report)


def _read_only_by_concats(view, tensor, settings):
  """True if every reader of `tensor` is a concat the rewrite quantizes (in scope)."""
  readers = view.consumers(tensor)
  return bool(readers) and all(r.type in _CONCAT_TYPES and settings.options.in_scope(r)
                               for r in readers)


def _quantize_concat(plan, op, settings, memo, concatenated, report):
  """TFLite's CONCATENATION has one scale for its inputs and output, and its converter takes
  the grid of the first input that has one (a pool, a tensor other ops read): the branches
  convert onto it, other inputs are requantized to it. The eval graph computes the same: the
  concat output is rounded on that grid (`activation_ConcatV2_quant`, no new variables), and
  a concat of layer outputs that only it reads gets a range of its own. Per-branch ranges
  instead were up to 77 LSB from TFLite on tf-slim inception_v2. A concat only concats read
  is left to the outer one."""
  values = op.inputs[:-1]  # the last input is the axis
  if not all(t.dtype == tf.float32 for t in values) or not any(
      t in concatenated or _reaches_fake_quant(plan, t, memo) for t in values):
    return
  output = op.outputs[0]
  if plan.quantized(output):
    return
  if _read_only_by_concats(plan.view, output, settings):
    concatenated.add(output)
    return
  name = join(op.name, "activation_%s_quant" % op.type)
  anchor = next((t for t in values if t not in concatenated), None)
  source = plan.input_grid(anchor) if anchor is not None else None
  if source is None:
    _quantize_output(plan, output, name, settings, settings.options.activation_spec(), report,
                     nonnegative=all(_nonnegative(t) for t in values))
    return
  plan.add(Point(name, output, edges_of(output, plan.view.consumers(output)), SameGrid(source),
                 report))


def _nonnegative(tensor):
  """True if `tensor` is a ReLU output, or a value-preserving op or concat of those."""
  op = tensor.op
  if op.type in RELU_TYPES:
    return True
  if op.type in _CONCAT_TYPES:
    return all(_nonnegative(t) for t in op.inputs[:-1])
  if op.type in SAME_GRID_TYPES or op.type in FAKE_QUANT_TYPES:
    return bool(op.inputs) and _nonnegative(op.inputs[0])
  return False


def _quantize_on_input_grid(plan, op, report):
  """A max pool read by several layers gets an explicit FakeQuant on its input quantizer's
  grid (the same variables; on values already on that grid it changes nothing): without one,
  TFLite's converter quantized the pool for an AvgPool branch but left a conv reading it in
  float (Keras InceptionV3)."""
  output = op.outputs[0]
  source = plan.input_grid(op.inputs[0])
  if source is None or plan.quantized(output):
    return
  plan.add(Point(join(op.name, "activation_%s_quant" % op.type), output,
                 edges_of(output, plan.view.consumers(output)), SameGrid(source), report))


def _quantize_bias(plan, layer, bias_op, bias):
  """Rounds the bias added by `bias_op` to the grid s_in·s_w of the layer's input and weight
  quantizers, as TFLite adds it (int32 on that grid, per output channel for per-channel
  weights); a float bias is up to ~0.003 output LSB off and flips values near a rounding tie.
  Straight-through gradient; no variables. Returns False (the bias stays float) unless both
  the data input and the weights are on a known FakeQuant grid."""
  kind = kind_of(layer)
  in_grid = plan.input_grid(layer.inputs[kind.data_input])
  w_grid = plan.weight_grid(layer, kind.weight_input)
  if in_grid is None or w_grid is None or roles.of(bias.op) == "bias_quant":
    return False
  index = next(i for i, t in enumerate(bias_op.inputs)
               if t.op is bias.op and t.value_index == bias.value_index)
  plan.add(Point(join(context(layer), "bias_quant"), bias, [(bias_op, index)],
                 BiasGrid(in_grid, w_grid), None))
  return True


def _pools(mean):
  """A Mean that keeps the batch axis pools features; one over the batch is a loss or a
  batch statistic and stays float."""
  rank = mean.inputs[0].shape.rank
  axes = constant_value(mean.inputs[1])
  if rank is None or rank < 2 or axes is None:
    return False
  return 0 not in {int(a) % rank for a in np.ravel(axes)}


def _reaches_fake_quant(plan, tensor, memo):
  """True if `tensor` is quantized (or planned to be), looking back through pass-through and
  Add/Mul ops."""
  if plan.on(tensor) is not None:  # that tensor only: another output of its op may stay float
    return True
  op = tensor.op
  if op not in memo:
    memo[op] = False  # guards against revisiting while the answer is pending
    if is_fake_quantized(tensor):
      memo[op] = True
    elif dropout_input(op) is not None:
      memo[op] = _reaches_fake_quant(plan, dropout_input(op), memo)
    elif op.type in PASS_THROUGH_TYPES and op.inputs:
      memo[op] = _reaches_fake_quant(plan, op.inputs[0], memo)
    elif op.type in _GENERIC_TYPES:
      memo[op] = any(_reaches_fake_quant(plan, t, memo) for t in op.inputs)
  return memo[op]


def _lone_batch_norms(view, settings, layer_ops, folded_names):
  """Batch norms still computing that belong to no layer (e.g. on the model input). A folded
  one may still feed a leftover op (a dense layer's Reshape back to 2-D): it is not lone."""
  return [FloatOp(op.name, op.type, "batch norm that does not follow a weight layer")
          for op in view.ops
          if op.type in FUSED_BATCH_NORM_TYPES and op not in layer_ops
          and settings.options.in_scope(op)
          and op.name not in folded_names and not view.is_dangling(op)]


def _unmatched_layers(view, matches, settings):
  matched = {m.op("layer") for m in matches}
  float_ops = []
  for op in view.ops:
    if op in settings.excluded:
      float_ops.append(FloatOp(op.name, op.type, settings.excluded[op]))
    elif op.type in LAYER_TYPES and not settings.options.in_scope(op):
      float_ops.append(FloatOp(op.name, op.type, "outside the requested scope"))
    elif op.type in LAYER_TYPES and op not in matched:
      float_ops.append(FloatOp(op.name, op.type, "no quantizable pattern matched"))
    elif op.type in UNSUPPORTED_COMPUTE_TYPES and settings.options.in_scope(op):
      float_ops.append(FloatOp(op.name, op.type, "%s is not a supported layer type" % op.type))
  return float_ops
