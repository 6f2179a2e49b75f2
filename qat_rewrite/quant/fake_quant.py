"""Turns one QuantSpec into TF ops: range variables, their training updates, FakeQuant.

Knows nothing about patterns or layers. The range variables are named as
tf.contrib.quantize named them (`<scope>/min`, `<scope>/max`), so contrib-era eval
checkpoints restore; a moving average adds `<scope>/local_step`.

Under tf.distribute (MirroredStrategy, MultiWorkerMirroredStrategy) in graph mode, replica k > 0
builds its tower under `replica_<k>/`. When the rewrite runs with the strategy active (inside its
scope or a replica function), that tower's quantizers create no variables: they read the range of
the first replica's quantizer of the same name, after its update. So every replica quantizes on
one grid, the ranges learn from the first replica's data (ONLY_FIRST_REPLICA), and the update,
built outside any replica context, writes every mirrored copy alike. With several workers, each
worker's graph has its own first replica; their batch ranges are averaged before the update.
"""

import contextlib
import re

import tensorflow as tf
from absl import logging

from qat_rewrite.graph import roles
from qat_rewrite.quant import per_channel_gradient

from qat_rewrite.quant.spec import LAST_VALUE

STEP_NAME = "fake_quantization_step"


def quantization_step(graph, use_resource=None):
  """The step counter that `quant_delay` and `freeze_bn_delay` count in.

  It advances by one on every session.run that evaluates the rewritten graph's
  outputs (one training step, if you only run the training op), like contrib's; the
  first run sees 1.
  """
  try:
    return graph.get_tensor_by_name(STEP_NAME + "/Identity:0")
  except KeyError:
    pass
  with graph.as_default(), graph.name_scope(None):
    var = new_variable(STEP_NAME, [], tf.int64, 0, scope="", use_resource=use_resource)
    with graph.name_scope(STEP_NAME + "/"):
      return tf.identity(tf.compat.v1.assign_add(var, 1), name="Identity")


def step_reached(graph, step_count, name, use_resource=None):
  """A scalar bool, true once `step_count` steps have run: false for the first `step_count` runs."""
  with graph.name_scope(name + "/"):
    threshold = tf.constant(step_count, dtype=tf.int64, name="delay")
    return tf.greater(quantization_step(graph, use_resource), threshold, name="reached")


def _initial_value(graph, value, dtype, shape):
  """Scalar initial values are shared by all range variables of a graph: fewer ops to build."""
  if shape:
    return tf.constant(value, dtype=dtype, shape=shape, name="Initializer/Const")
  name = "quantizer_initial_values/%s_%s" % (dtype.name, ("%g" % value).replace("-", "minus"))
  try:
    return graph.get_tensor_by_name(name + ":0")
  except KeyError:
    with graph.name_scope(None), tf.control_dependencies(None):
      return tf.constant(value, dtype=dtype, name=name)


def new_variable(name, shape, dtype, init, scope, use_resource=None):
  """A non-trainable variable named exactly `<scope>/<name>`, in GLOBAL_VARIABLES."""
  if use_resource is None:
    use_resource = tf.compat.v1.resource_variables_enabled()
  graph = tf.compat.v1.get_default_graph()
  with graph.name_scope(scope + "/" if scope else None):
    return tf.compat.v1.Variable(
        _initial_value(graph, init, dtype, shape), trainable=False,
        name=name, use_resource=use_resource,
        collections=[tf.compat.v1.GraphKeys.GLOBAL_VARIABLES],
        aggregation=tf.VariableAggregation.ONLY_FIRST_REPLICA)


# The name scope tf.distribute gives replica k > 0's tower in graph mode.
_REPLICA_SCOPE = re.compile(r"(^|/)replica_[1-9][0-9]*/")


def in_replica_scope(scope):
  """True if `scope` is under a tf.distribute replica's tower (`replica_<k>/`, k > 0)."""
  return bool(_REPLICA_SCOPE.search(scope if scope.endswith("/") else scope + "/"))


def _first_replica_range(graph, var_scope):
  """(min, max) read by the first replica's quantizer for the tower quantizer `var_scope`
  (`replica_<k>/<name>` -> `<name>`), or None: one range shared by all replicas."""
  first_scope, replicas = _REPLICA_SCOPE.subn(r"\1", var_scope + "/", count=1)
  if not replicas:
    return None
  if not tf.distribute.has_strategy():
    logging.warning("%s looks like a tf.distribute replica's quantizer, but no strategy is "
                    "active: it gets range variables of its own (call the rewrite inside "
                    "strategy.scope() to share the first replica's)", var_scope)
    return None
  for op_type in ("FakeQuantWithMinMaxVars", "FakeQuantWithMinMaxVarsPerChannel"):
    try:
      quantizer = graph.get_operation_by_name(first_scope + op_type)
    except KeyError:
      continue
    return quantizer.inputs[1], quantizer.inputs[2]
  logging.warning("%s looks like a tf.distribute replica's quantizer, but the first replica has "
                  "no quantizer %s: it gets range variables of its own", var_scope,
                  first_scope.rstrip("/"))
  return None


def _batch_range(x, spec, channels, nonnegative):
  """The batch's range, widened to contain 0 (or made symmetric)."""
  axes = list(range(x.shape.rank - 1)) if channels else None
  batch_max = tf.reduce_max(x, axis=axes, name="BatchMax")
  if nonnegative and not spec.symmetric:
    return 0.0, tf.maximum(batch_max, 0.0)  # after a ReLU the minimum is 0: skip the reduction
  batch_min = tf.reduce_min(x, axis=axes, name="BatchMin")
  if spec.symmetric:
    ratio = -1.0 if spec.narrow_range else -(2.0 ** spec.bits - 2.0) / 2.0 ** spec.bits
    return (tf.minimum(batch_min, batch_max / ratio), tf.maximum(batch_max, batch_min * ratio))
  return tf.minimum(batch_min, 0.0), tf.maximum(batch_max, 0.0)


def _assign(var, value, name):
  """Assigns `value`: the assign op (resource variables) or the updated ref tensor."""
  if var.dtype._is_ref_dtype:  # pylint: disable=protected-access
    return tf.compat.v1.assign(var, value, name=name)
  return var.assign(value, read_value=False, name=name)


def _read_after(var, update):
  """The variable's value once `update` (an assign op, a ref tensor or None) has run."""
  if isinstance(update, tf.Tensor):
    return update
  with tf.control_dependencies([update] if update is not None else []):
    return var.value()


def _across_workers(range_min, range_max):
  """The batch range averaged over the workers of a multi-worker strategy (one all-reduce), so
  that each worker's first replica makes the same update; unchanged on one worker."""
  if not tf.distribute.has_strategy():
    return range_min, range_max
  strategy = tf.distribute.get_strategy()
  local_replicas = len(strategy.extended.worker_devices)
  if strategy.num_replicas_in_sync == local_replicas:
    return range_min, range_max
  both = tf.stack([range_min, range_max], name="BatchRange")
  # Every local replica contributes this worker's range: the mean weighs workers equally. The
  # graph-mode (V1) strategies lack the public form of this call.
  extended = strategy.extended
  per_replica = getattr(strategy, "experimental_distribute_values_from_function", None) or (
      extended._experimental_distribute_values_from_function)  # pylint: disable=protected-access
  mean = strategy.reduce(tf.distribute.ReduceOp.MEAN, per_replica(lambda _: both), axis=None)
  return mean[0], mean[1]


def _updated_range(x, spec, min_var, max_var, channels, use_resource, nonnegative,
                   in_update_ops):
  range_min, range_max = _across_workers(*_batch_range(x, spec, channels, nonnegative))
  if spec.tracker == LAST_VALUE:
    updates = (_assign(min_var, range_min, "AssignMinLast"),
               _assign(max_var, range_max, "AssignMaxLast"))
  else:
    local_step = new_variable("local_step", [], tf.float32, 0.0,
                              min_var.op.name.rpartition("/")[0], use_resource)
    weight = _debiased_weight(local_step, spec.ema_decay)
    updates = (_moving_average(min_var, range_min, weight, "AssignMinEma"),
               _moving_average(max_var, range_max, weight, "AssignMaxEma"))
  if in_update_ops:
    add_to_update_ops(*updates)
  return updates


def add_to_update_ops(*updates):
  """Puts the ops of range updates (assign ops, updated ref tensors, assigned resource variables)
  into tf.GraphKeys.UPDATE_OPS.

  The quantized tensor waits for its range update, but a loss built after the rewrite reads the
  float tensor the user's model_fn returned, so nothing would run the update of the quantizer
  behind it. TF1 training scripts run UPDATE_OPS with the train op (batch norm needs it too), so
  the range learns in either script order.
  """
  for update in updates:
    tf.compat.v1.add_to_collection(tf.compat.v1.GraphKeys.UPDATE_OPS,
                                   update if isinstance(update, tf.Operation) else update.op)


def _moving_average(var, value, weight, name):
  old = var.value()
  return _assign(var, old + weight * (value - old), name)


def _debiased_weight(local_step, decay):
  """The weight w_t of the new value in a zero-debiased moving average, m_t = m + w_t·(x - m).

  TF1's assign_moving_average(zero_debias=True) reports m_t = b_t / (1 - d^t) for the biased
  average b_t = d·b_(t-1) + (1-d)·x_t; that equals m_(t-1) + (1-d)/(1-d^t)·(x_t - m_(t-1)), so
  only m and the step t are stored, and the first step takes the batch range as it is.
  """
  step = tf.compat.v1.assign_add(local_step, 1.0)
  return (1.0 - decay) / (1.0 - tf.pow(decay, step))


def fake_quantize(x, spec, scope, training, per_channel_shape=None, delay_reached=None,
                  use_resource=None, nonnegative=False, in_update_ops=False):
  """Returns `x` fake-quantized under `spec`, with its range variables in `scope`.

  `scope` is an absolute name scope ending in '/'. In training the range follows
  the data; in eval it is read from the variables only (restored from training).
  `per_channel_shape` reshapes `x` so its channels are last (depthwise weights).
  `delay_reached`, a scalar bool, passes `x` through unchanged until it is true.
  `use_resource` picks resource or ref variables (None: TensorFlow's default).
  `nonnegative` says `x` is never below 0 (a ReLU output), so its minimum need not be measured.
  `in_update_ops` also puts the training range update in UPDATE_OPS (see `add_to_update_ops`).
  """
  graph = x.graph
  var_scope = scope.rstrip("/")
  shared = _first_replica_range(graph, var_scope)
  # A replica's quantizer runs on its tower's device (the rewrite itself runs outside replicas).
  with graph.name_scope(scope), (tf.device(x.device) if shared else contextlib.nullcontext()):
    source = x
    if spec.per_channel and per_channel_shape is not None:
      source = tf.reshape(x, per_channel_shape, name="per_channel_reshape")
    channels = source.shape[-1] if spec.per_channel else None
    shape = [channels] if channels else []
    if shared is None:
      min_var = new_variable("min", shape, tf.float32, spec.init_min, var_scope, use_resource)
      max_var = new_variable("max", shape, tf.float32, spec.init_max, var_scope, use_resource)
      updates = (None, None)
      if training:
        updates = _updated_range(source, spec, min_var, max_var, channels, use_resource,
                                 nonnegative, in_update_ops)
    fake_quant_op = (tf.quantization.fake_quant_with_min_max_vars_per_channel if channels
                     else tf.quantization.fake_quant_with_min_max_vars)
    with tf.name_scope("FakeQuantWithMinMaxVars" + ("PerChannel" if channels else "")) as op_name:
      range_min, range_max = shared or (_read_after(min_var, updates[0]),
                                        _read_after(max_var, updates[1]))
      # Training builds the per-channel op with a faster gradient (per_channel_gradient).
      with (per_channel_gradient.overridden(graph) if training and channels
            else contextlib.nullcontext()):
        quantized = fake_quant_op(source, range_min, range_max, num_bits=spec.bits,
                                  narrow_range=spec.narrow_range, name=op_name)
    if source is not x:
      quantized = roles.mark(tf.reshape(quantized, tf.shape(x), name="per_channel_restore"),
                             "per_channel_restore")
    if delay_reached is not None:
      quantized = delay_select(delay_reached, quantized, x)
  return quantized


def delay_select(delay_reached, quantized, x):
  """`quantized` once `delay_reached` is true, `x` before: a quantizer's delay, marked so that
  grid lookups see through it."""
  return roles.mark(tf.where(delay_reached, quantized, x, name="delayed_quant"), "delay_select")


def fake_quantize_like(x, quantizer, scope, delay_reached=None):
  """Returns `x` fake-quantized on the grid of the FakeQuantWithMinMaxVars op `quantizer`.

  It reads the range tensors `quantizer` reads (in training, after their updates), so it adds
  no variables: for an op TFLite keeps on its input's scale (AvgPool) but whose output it rounds.
  `scope` is an absolute name scope ending in '/'; `delay_reached` is the input's delay condition.
  """
  with x.graph.name_scope(scope):
    with tf.name_scope("FakeQuantWithMinMaxVars") as op_name:
      quantized = tf.quantization.fake_quant_with_min_max_vars(
          x, quantizer.inputs[1], quantizer.inputs[2], num_bits=quantizer.get_attr("num_bits"),
          narrow_range=quantizer.get_attr("narrow_range"), name=op_name)
    if delay_reached is not None:
      quantized = delay_select(delay_reached, quantized, x)
  return quantized


def scale_of(quantizer, name="scale"):
  """The grid step of a FakeQuantWithMinMaxVars(PerChannel) op: (max − min)/(qmax − qmin). Nudging
  shifts min and max together, so it keeps this step; TFLite's converter uses the same scale."""
  return tf.divide(quantizer.inputs[2] - quantizer.inputs[1], float(levels(quantizer)), name=name)


def converter_scale(quantizer):
  """The grid step of a FakeQuantWithMinMaxVars(PerChannel) op as TFLite's converter computes
  it: (max - min)/(qmax - qmin) in double from the float32 range (the file stores its
  float32), a float64 tensor."""
  low, high = (tf.cast(t, tf.float64) for t in quantizer.inputs[1:3])
  return (high - low) / float(levels(quantizer))


def levels(quantizer):
  """qmax - qmin of a FakeQuant op: 255 or, narrow, 254 at 8 bits."""
  return 2 ** quantizer.get_attr("num_bits") - (2 if quantizer.get_attr("narrow_range") else 1)


def quantize_bias(bias, input_quantizer, weight_quantizer, delay_reached=None):
  """`bias` rounded to multiples of s_in·s_w, the steps of the FakeQuant ops `input_quantizer`
  and `weight_quantizer` (TFLite's int32 bias grid), with a straight-through gradient. A zero
  scale (an all-zero channel) keeps the float bias.

  The integer is round(bias / (s_in·s_w)) with both steps and the quotient in double, as the
  converter computes it: a bias of 10^5 steps or more (squeeze-excite convs on small maps, tiny
  input and weight scales) is within float32's resolution of a tie, where float32 arithmetic
  lands on the other integer (MobileNetV3, Xception: 2 or 3 channels of a few hundred).
  """
  scale = tf.multiply(scale_of(input_quantizer, "input_scale"),
                      scale_of(weight_quantizer, "weight_scale"), name="bias_scale")
  exact_scale = converter_scale(input_quantizer) * converter_scale(weight_quantizer)
  steps = tf.round(tf.math.divide_no_nan(tf.cast(bias, tf.float64), exact_scale))
  rounded = tf.where(scale > 0.0, tf.cast(steps * exact_scale, bias.dtype), bias)
  quantized = tf.add(bias, tf.stop_gradient(rounded - bias), name="quantized")
  if delay_reached is not None:
    quantized = tf.where(delay_reached, quantized, bias, name="delayed")
  return roles.mark(quantized, "bias_quant")
