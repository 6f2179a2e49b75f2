"""Folds batch norm into the weights of the layer before it.

Eval (or a batch norm already in inference mode): w' = w·γ/σ, b' = β + (b − μ)·γ/σ with
the moving statistics, so the graph computes layer(x, q(w')) + b'.

Training: the layer runs once, on weights scaled by the moving statistics,
w' = w·s with s = γ/σ_moving (what the eval graph will quantize), as PyTorch's QAT
conv-BN does. y = layer(x, q(w')) divided back by s is the original layer output up to
its bias, so one FusedBatchNorm in training mode on y/s gives exactly the batch-statistics
output, the batch statistics and the full batch-norm gradient. The original batch
norm's moving-average updates are rerouted to these statistics, so the original
convolution no longer runs at all.

Where the weights are the smaller tensor, the division by s moves onto them once the target has
put its weight quantizer in place (`unscale_on_weights`): conv(x, q(w·s))/s = conv(x, q(w·s)/s),
since s is per output channel, so the step no longer multiplies (forward and backward) a whole
activation by 1/s, only the weights.

With `freeze_bn_delay` the fold is out = y·A + B instead, with A = γ/(σ_batch·s) and
B = β + (b − μ_batch)·γ/σ_batch from the moments of y; once the quantization step passes
the delay, A = 1 and B uses the moving statistics, which stop updating.
"""

import collections
import dataclasses
from typing import Dict, List, Optional

import tensorflow as tf

from qat_rewrite.graph import editor, roles
from qat_rewrite.graph.matcher import find_matches
from qat_rewrite.graph.view import (CONTROL_FLOW_TYPES, SHAPE_TYPES, GraphView,
                                    constant_value, context, join, value_of)
from qat_rewrite.layers import kind_of
from qat_rewrite.layers.patterns import fused_batch_norm, is_fold_batch_norm, unfused_batch_norm
from qat_rewrite.quant import fake_quant

# The name scope of what a fold builds: `<layer scope>/BatchNorm_Fold/`, as contrib named it.
FOLD_SCOPE = "BatchNorm_Fold"
# What the eval fold's bias β + (b − μ)·s is made of, and the name scope to build it in.
_EvalBias = collections.namedtuple("_EvalBias", "scope beta bias moving_mean scale")
# A training fold's y/s and 1/s, which may move onto the layer's weights.
_Unscale = collections.namedtuple("_Unscale", "layer unscaled inverse_scale")


@dataclasses.dataclass
class Folds:
  """What folding hands the steps after it (a value: no graph holds it). Which batch norm a
  fold replaced is a node attribute (roles.mark_replacement), for frozen graphs too."""
  folded: Dict[str, str]  # layer op name -> the batch norm folded into it
  notes: List[str]
  unscales: List[_Unscale]  # training folds, for `unscale_on_weights`
  eval_biases: Dict[str, object]  # layer name -> its _EvalBias, then the bias once built

  def eval_time_bias(self, layer_name):
    """β + (b − μ_moving)·γ/σ_moving: the bias the eval fold adds after layer `layer_name`,
    built (once) in a training graph whose fold normalizes with batch statistics, which never
    adds it. Targets that quantize the folded bias coarsely (DPU: weight_bit bits) need it to
    train with its rounding. None if the layer has no such fold."""
    recipe = self.eval_biases.get(layer_name)
    if isinstance(recipe, _EvalBias):  # built the first time it is asked for
      graph = recipe.beta.graph
      with graph.as_default(), graph.name_scope(recipe.scope):
        self.eval_biases[layer_name] = tf.add(
            recipe.beta, (recipe.bias - recipe.moving_mean) * recipe.scale, name="bias")
    return self.eval_biases.get(layer_name)


def replaced_outputs(graph) -> Dict[str, tf.Tensor]:
  """{op name: tensor} for each batch norm output a fold of `graph` replaced. A user who named
  that op (decent_q's output_nodes) means the folded tensor: the op itself is left behind,
  still computing the unfolded batch norm, read by nothing."""
  return {name: op.outputs[0]
          for name, op in roles.replacements(graph.get_operations()).items()}


@dataclasses.dataclass
class BatchNormFold:
  """One batch norm and the layer it folds into, as found before any edit."""
  layer: tf.Operation
  bn_name: str
  output: tf.Tensor            # the tensor whose consumers get the folded result
  layer_output: tf.Tensor      # layer output (after BatchToSpaceND for atrous)
  bias: Optional[tf.Tensor]
  gamma: Optional[tf.Tensor]
  beta: Optional[tf.Tensor]
  epsilon: float
  moving_mean: Optional[tf.Tensor]   # tensor or variable handle/ref
  moving_variance: Optional[tf.Tensor]
  batch_mean: Optional[tf.Tensor]    # set when the batch norm normalizes with batch statistics
  batch_variance: Optional[tf.Tensor]
  fused_op: Optional[tf.Operation]   # FusedBatchNorm: its mean/var outputs feed the updates
  bn_ops: frozenset


def fold_batch_norms(graph, training, freeze_bn_delay=None, in_scope=lambda op: True):
  """Finds and folds every batch norm that follows a weight layer.

  Returns (folded, unfoldable, notes): layer op name -> batch norm name, the
  (op, reason) pairs left alone, and notes for the report.
  """
  folds, unfoldable, _ = find_batch_norm_folds(GraphView(graph), in_scope)
  result = apply_folds(graph, folds, training, freeze_bn_delay)
  return result.folded, unfoldable, result.notes


def apply_folds(graph, folds, training, freeze_bn_delay=None, use_resource=None):
  """Folds `folds`; all are checked before the first is folded, so a refusal changes nothing.
  Returns `Folds`."""
  for f in folds:
    if f.moving_mean is None or f.moving_variance is None:
      raise ValueError(
          "Batch norm '%s' normalizes with batch statistics but no moving-average update of "
          "them was found, and the folded weights need the moving statistics. Keep the "
          "moving-average updates (e.g. tf.compat.v1.layers.batch_normalization) or build "
          "the layer without batch norm." % f.bn_name)
  result = Folds(folded={}, notes=[], unscales=[], eval_biases={})
  with graph.as_default():
    frozen = None
    if training and freeze_bn_delay is not None and any(f.batch_mean is not None for f in folds):
      frozen = fake_quant.step_reached(graph, freeze_bn_delay, "freeze_batch_norm", use_resource)
    view = GraphView(graph)
    for f in folds:
      fold(view, f, training, frozen, result)
      result.folded[f.layer.name] = f.bn_name
  return result


def find_batch_norm_folds(view, in_scope):
  """Returns (folds, float_reasons, folded_before): the foldable batch norms, why others are
  not, and how many an earlier rewrite already folded."""
  folds, reasons, folded_before = [], [], 0
  for pattern, fused in ((fused_batch_norm(), True), (unfused_batch_norm(), False)):
    for m in find_matches(pattern, view.ops, "layer"):
      bn = m.op("bn")
      if not in_scope(m.op("layer")):
        continue
      if is_fold_batch_norm(bn):  # an earlier fold's own
        continue
      if _already_folded(m):  # its consumers moved to an earlier fold
        folded_before += 1
        continue
      if not fused and m.tensor("inv_again").op is not (m.op("inv") or m.op("rsqrt")):
        continue
      reason = _unsupported(m, fused) or (
          "a batch norm on a reshaped input must be reshaped back by a single Reshape"
          if m.has("reshape") and _reshape_back(view, bn) is None else None) or (
              _shared_input(view, bn) if fused else None)
      if reason:
        reasons.append((bn, reason))
        continue
      folds.append(_describe(view, m, fused))
  return folds, reasons, folded_before


def _shared_input(view, bn):
  """Why a fused batch norm cannot fold into the layer before it when something else reads
  the layer output too (a residual shortcut): folding rescales that output in place."""
  read = bn.inputs[0].op.inputs[0] if bn.inputs[0].op.type == "Reshape" else bn.inputs[0]
  others = [c.name for c in view.consumers(read) if c is not bn and c is not bn.inputs[0].op
            and c.type not in SHAPE_TYPES
            and not c.type.startswith("FusedBatchNormGrad")]  # its own gradient
  if others:
    return "the layer output is also read by %s; folding would change what it reads" % others[0]
  return None


def _reshape_back(view, bn):
  """The Reshape that turns a 4-D batch norm output back into the 2-D MatMul shape."""
  back = view.consumers(bn.outputs[0])
  return back[0] if len(back) == 1 and back[0].type == "Reshape" else None


def _already_folded(m):
  """An earlier fold scaled the layer's weights (`<scope>/mul_fold`, maybe quantized since) and
  left the batch norm read by nothing. Being read by nothing alone does not tell: a batch norm
  that ends the graph is read by nothing too."""
  layer = m.op("layer")
  ops = [layer.inputs[kind_of(layer).weight_input].op]
  for _ in range(6):  # mul_fold → [reshape] → FakeQuant → [restore, delay Select, Identity]
    if any(roles.of(op) == "fold_weights" for op in ops):
      return True
    ops = [t.op for op in ops for t in op.inputs]
  return False


def folded_away_ops(view):
  """Ops left behind by earlier folds: dangling batch norms and what only they consumed.

  They stay in the graph (TF cannot delete ops) but never run; the quantizer pass
  must not mistake them for a layer's bias or activation.
  """
  dead = set()
  for pattern in (fused_batch_norm(), unfused_batch_norm()):
    for m in find_matches(pattern, view.ops, "layer"):
      if _already_folded(m) and not is_fold_batch_norm(m.op("bn")):
        back = _reshape_back(view, m.op("bn")) if m.has("reshape") else None
        dead |= {m.op("bn"), back} - {None}
  frontier = list(dead)
  while frontier:
    op = frontier.pop()
    for t in op.inputs:
      producer = t.op
      if producer not in dead and producer.outputs and all(
          c in dead for out in producer.outputs for c in view.consumers(out)):
        dead.add(producer)
        frontier.append(producer)
  return dead


def _unsupported(m, fused):
  layer = m.op("layer")
  kind = kind_of(layer)
  why = kind.supports(layer) if kind.supports else None
  if why:
    return why
  if fused and m.op("bn").get_attr("data_format").decode() != "NHWC":
    return "batch norm data_format must be NHWC"
  if not fused and constant_value(m.tensor("epsilon")) is None:
    return "epsilon of the batch normalization is not a constant"
  for role in ("mean", "variance"):
    if m.tensor(role).op.type in CONTROL_FLOW_TYPES:
      raise ValueError(
          "Batch norm '%s' takes its %s from the conditional op '%s', selected by a "
          "training-flag tensor; it cannot be folded. Build the model with training=True for "
          "the training graph and training=False for the eval graph."
          % (m.op("bn").name, role, m.tensor(role).op.name))
  return None


def _describe(view, m, fused):
  bn = m.op("bn")
  layer_output = m.tensor("batch_to_space") if m.has("batch_to_space") else m.op("layer").outputs[0]
  bn_input = m.tensor("bias") if m.has("bias") else (
      m.tensor("identity") if m.has("identity") else layer_output)
  common = dict(layer=m.op("layer"), bn_name=bn.name if fused else context(bn),
                output=bn.outputs[0], layer_output=layer_output,
                bias=m.tensor("bias_value"), gamma=m.tensor("gamma"), beta=m.tensor("beta"),
                bn_ops=frozenset(m.ops))
  if fused:
    if m.has("reshape"):  # reshaped 2-D → 4-D → 2-D around the batch norm: replace the 2-D result
      back = _reshape_back(view, bn)
      common["output"] = back.outputs[0]
      common["bn_ops"] = common["bn_ops"] | {back}
    training = bn.get_attr("is_training")
    mean, var = m.tensor("mean"), m.tensor("variance")
    has_moving_inputs = mean.shape.num_elements() not in (0, None)
    moving_mean = mean if has_moving_inputs else view.find_assigned_variable(bn.outputs[1])
    moving_var = var if has_moving_inputs else view.find_assigned_variable(bn.outputs[2])
    return BatchNormFold(
        epsilon=bn.get_attr("epsilon"), moving_mean=moving_mean, moving_variance=moving_var,
        batch_mean=bn.outputs[1] if training else None,
        batch_variance=bn.outputs[2] if training else None,
        fused_op=bn if training else None, **common)
  mean, var = _before_identity(m.tensor("mean")), _before_identity(m.tensor("variance"))
  training = _depends_on(mean, bn_input)
  return BatchNormFold(
      epsilon=float(constant_value(m.tensor("epsilon"))),
      moving_mean=view.find_assigned_variable(mean) if training else mean,
      moving_variance=view.find_assigned_variable(var) if training else var,
      batch_mean=mean if training else None, batch_variance=var if training else None,
      fused_op=None, **common)


def _before_identity(tensor):
  """Forced updates (contrib's updates_collections=None) pass the statistics through an Identity
  that depends on the update ops; the updates read the tensor before it."""
  return tensor.op.inputs[0] if tensor.op.type == "Identity" else tensor


def _depends_on(tensor, source, max_depth=6):
  frontier = [tensor.op]
  for _ in range(max_depth):
    if any(t is source or (t.op is source.op and t.value_index == source.value_index)
           for op in frontier for t in op.inputs):
      return True
    frontier = [t.op for op in frontier for t in op.inputs]
  return False


def fold(view, f, training, frozen, result):
  """Folds one batch norm in place; its notes, unscale and eval bias go into `result`
  (`Folds`)."""
  notes = result.notes
  batch_stats = training and f.batch_mean is not None
  if f.batch_mean is not None and not training:
    notes.append("batch norm %s was built in training mode; the eval rewrite folds it with "
                 "its moving statistics" % f.bn_name)
  graph = f.layer.graph
  kind = kind_of(f.layer)
  ctx = context(f.layer)
  weight = f.layer.inputs[kind.weight_input]
  with graph.as_default(), graph.name_scope(join(ctx, FOLD_SCOPE) + "/"):
    moving_mean = value_of(f.moving_mean, "moving_mean")
    moving_var = value_of(f.moving_variance, "moving_variance")
    gamma = f.gamma if f.gamma is not None else tf.ones_like(moving_mean)
    beta = f.beta if f.beta is not None else tf.zeros_like(moving_mean)
    bias = f.bias if f.bias is not None else tf.zeros_like(moving_mean)
    scale = tf.multiply(gamma, tf.math.rsqrt(moving_var + f.epsilon), name="mul")
    scale_for_weight = tf.reshape(scale, kind.scale_shape(f.layer, weight.shape.as_list()),
                                  name="scale_reshape")
  with graph.name_scope(join(ctx, "") if ctx else None):
    mul_fold = roles.mark(tf.multiply(weight, scale_for_weight, name="mul_fold"), "fold_weights")
  editor.replace_input(f.layer, kind.weight_input, mul_fold)
  y = f.layer_output
  with graph.name_scope(join(ctx, FOLD_SCOPE) + "/"):
    if batch_stats and frozen is None:
      folded, unscale = _batch_norm_of_unscaled(view, f, y, scale, gamma, beta, bias)
      result.unscales.append(unscale)
      result.eval_biases[f.layer.name] = _EvalBias(
          join(ctx, FOLD_SCOPE) + "/", beta, bias, moving_mean, scale)
    elif batch_stats:
      multiplier, offset = _batch_statistics_correction(
          view, f, y, scale, gamma, beta, bias, moving_mean, moving_var, frozen)
    else:
      offset = tf.add(beta, (bias - moving_mean) * scale, name="bias")
      if f.batch_mean is not None:
        # The eval graph must not change the model: its moving-average updates become no-ops.
        _reroute_statistic(view, f, f.batch_mean, moving_mean, input_index=3)
        _reroute_statistic(view, f, f.batch_variance, moving_var, input_index=4)
  if not batch_stats or frozen is not None:
    with graph.name_scope(join(ctx, "") if ctx else None):
      if batch_stats:
        y = tf.multiply(y, multiplier, name="post_conv_mul")
      folded = tf.add(y, offset, name="add_fold")
  changed = editor.reroute(f.output, folded, view.consumers(f.output))
  roles.mark_replacement(folded, f.output.op.name)
  if not changed:
    notes.append("batch norm %s output had no consumers" % f.bn_name)


def unscale_on_weights(graph, unscales):
  """Moves the 1/s of each training fold from the layer output y onto the layer's (quantized)
  weights, where they have fewer elements than one example's output: conv(x, q(w·s))·(1/s)
  becomes conv(x, q(w·s)·(1/s)), the same up to float rounding. Call it after the weight
  quantizers are in place, as they must quantize w·s (what the eval graph quantizes). Returns
  the layers changed. `unscales`: `Folds.unscales`."""
  moved = []
  for layer, unscaled, inverse_scale in unscales:
    kind = kind_of(layer)
    weight = layer.inputs[kind.weight_input]
    y = unscaled.op.inputs[0]
    example = y.shape[1:]
    if (y.shape.rank != 4 or not example.is_fully_defined() or not weight.shape.is_fully_defined()
        or weight.shape.num_elements() >= example.num_elements()):
      continue
    with graph.as_default(), graph.name_scope(join(context(layer), FOLD_SCOPE) + "/"):
      per_channel = tf.reshape(inverse_scale, kind.scale_shape(layer, weight.shape.as_list()))
      unscaled_weight = roles.mark(tf.multiply(weight, per_channel, name="unscale_weights"),
                                   "weight_unscale")
    editor.replace_input(layer, kind.weight_input, unscaled_weight)
    editor.reroute(unscaled, y, unscaled.consumers())
    moved.append(layer.name)
  return moved


def _batch_norm_of_unscaled(view, f, y, scale, gamma, beta, bias):
  """Batch-statistics batch norm of y/s, which is the original layer output up to its bias;
  returns (its output, the _Unscale of y/s).

  One FusedBatchNorm does the statistics, the normalization and (in the backward pass)
  the full batch-norm gradient; a bias before the batch norm cancels out of it.
  """
  inverse_scale = tf.math.divide_no_nan(1.0, scale, name="inverse_scale")
  ctx = context(f.layer)
  graph = tf.compat.v1.get_default_graph()
  with graph.name_scope(join(ctx, "") if ctx else None):
    unscaled = tf.multiply(y, inverse_scale, name="post_conv_mul")
  channels = scale.shape[-1]
  rank4 = unscaled.shape.rank == 4
  x = unscaled if rank4 else tf.reshape(unscaled, [-1, 1, 1, channels])
  # `BatchNorm_Fold/FusedBatchNorm:0` is the fold's output either way.
  out, batch_mean, batch_var = tf.compat.v1.nn.fused_batch_norm(
      x, gamma, beta, epsilon=f.epsilon, is_training=True,
      name="FusedBatchNorm" if rank4 else "FusedBatchNorm_4d")
  roles.mark(out, "fold_batch_norm")
  if not rank4:
    out = tf.reshape(out, tf.shape(unscaled), name="FusedBatchNorm")
  stat_var = batch_var  # Bessel-corrected, as FusedBatchNorm's own update reads it
  if f.fused_op is None:
    count = tf.cast(tf.size(x) // channels, tf.float32)
    stat_var = batch_var * tf.maximum(count - 1.0, 1.0) / count  # moments give the biased one
  _reroute_statistic(view, f, f.batch_mean, batch_mean + bias, input_index=3)
  _reroute_statistic(view, f, f.batch_variance, stat_var, input_index=4)
  return out, _Unscale(f.layer, unscaled, inverse_scale)


def _batch_statistics_correction(view, f, y, scale, gamma, beta, bias, moving_mean, moving_var,
                                 frozen):
  """A, B of out = y·A + B, and the rerouted moving-average inputs (see module doc)."""
  safe_scale = tf.where(tf.equal(scale, 0.0), tf.ones_like(scale), scale, name="safe_scale")
  axes = list(range(y.shape.rank - 1))
  mean_y, var_y = tf.nn.moments(y, axes=axes, name="moments")
  batch_mean = tf.add(mean_y / safe_scale, bias, name="batch_mean")
  batch_var = tf.divide(var_y, tf.square(safe_scale), name="batch_variance")
  batch_scale = gamma * tf.math.rsqrt(batch_var + f.epsilon)
  multiplier = tf.divide(batch_scale, safe_scale, name="correction_recip")
  offset = tf.add(beta, (bias - batch_mean) * batch_scale, name="correction_offset")
  stat_mean, stat_var = batch_mean, batch_var
  if f.fused_op is not None:
    count = tf.cast(tf.size(y) // tf.size(batch_mean), tf.float32)
    stat_var = batch_var * count / tf.maximum(count - 1.0, 1.0)  # FusedBatchNorm reports Bessel-corrected variance
  if frozen is not None:
    moving_bias = beta + (bias - moving_mean) * scale
    multiplier = tf.where(frozen, tf.ones_like(multiplier), multiplier, name="frozen_recip")
    offset = tf.where(frozen, moving_bias, offset, name="frozen_offset")
    stat_mean = tf.where(frozen, moving_mean, stat_mean, name="freeze_moving_mean")
    stat_var = tf.where(frozen, moving_var, stat_var, name="freeze_moving_var")
  _reroute_statistic(view, f, f.batch_mean, stat_mean, input_index=3)
  _reroute_statistic(view, f, f.batch_variance, stat_var, input_index=4)
  return multiplier, offset


def _reroute_statistic(view, f, old, new, input_index):
  """Points the moving-average update at the folded layer's statistics."""
  consumers = [op for op in view.consumers(old) if op not in f.bn_ops]
  if not consumers:
    return
  if f.fused_op is not None:
    factor = f.fused_op.get_attr("exponential_avg_factor") if "exponential_avg_factor" in \
        f.fused_op.node_def.attr else 1.0
    if factor != 1.0:  # the op's outputs are already the new running averages
      new = (1.0 - factor) * f.fused_op.inputs[input_index] + factor * new
  if old.shape.is_fully_defined() and old.shape != new.shape:
    new = tf.reshape(new, old.shape.as_list())
  editor.reroute(old, new, consumers)
