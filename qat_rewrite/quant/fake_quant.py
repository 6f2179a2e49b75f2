"""Turns one QuantSpec into TF ops: range variables, their training updates, FakeQuant.

Knows nothing about patterns or layers. Variable names follow tf.contrib.quantize
(`<scope>/min`, `<scope>/max`, and `min/biased`, `min/local_step` for the
zero-debiased moving average) so contrib-era checkpoints restore.
"""

import tensorflow as tf

from qat_rewrite.quant.spec import LAST_VALUE

STEP_NAME = "fake_quantization_step"


def quantization_step(graph):
  """The step counter that `quant_delay` and `freeze_bn_delay` count in.

  It advances by one on every session.run that evaluates the rewritten graph's
  outputs (one training step, if you only run the training op), like contrib's.
  """
  try:
    return graph.get_tensor_by_name(STEP_NAME + "/Identity:0")
  except KeyError:
    pass
  with graph.as_default(), graph.name_scope(None):
    var = _variable(STEP_NAME, [], tf.int64, 0, scope="")
    with graph.name_scope(STEP_NAME + "/"):
      return tf.identity(tf.compat.v1.assign_add(var, 1), name="Identity")


def step_reached(graph, step_count, name):
  """A scalar bool: has the quantization step reached `step_count`?"""
  with graph.name_scope(name + "/"):
    threshold = tf.constant(step_count, dtype=tf.int64, name="delay")
    return tf.greater_equal(quantization_step(graph), threshold, name="reached")


def _variable(name, shape, dtype, init, scope):
  var_scope = tf.compat.v1.VariableScope(reuse=False, name=scope)
  with tf.compat.v1.variable_scope(var_scope, auxiliary_name_scope=False):
    return tf.compat.v1.get_variable(
        name, shape=shape, dtype=dtype, initializer=tf.compat.v1.constant_initializer(init),
        trainable=False, collections=[tf.compat.v1.GraphKeys.GLOBAL_VARIABLES],
        aggregation=tf.VariableAggregation.MEAN)


def _batch_range(x, spec, channels):
  axes = list(range(x.shape.rank - 1)) if channels else None
  batch_min = tf.reduce_min(x, axis=axes, name="BatchMin")
  batch_max = tf.reduce_max(x, axis=axes, name="BatchMax")
  if spec.symmetric:
    ratio = -1.0 if spec.narrow_range else -(2.0 ** spec.bits - 2.0) / 2.0 ** spec.bits
    return (tf.minimum(batch_min, batch_max / ratio), tf.maximum(batch_max, batch_min * ratio))
  return tf.minimum(batch_min, 0.0), tf.maximum(batch_max, 0.0)


def _ema(var, value, decay, name):
  """Zero-debiased moving average, as TF1's assign_moving_average(zero_debias=True)."""
  with tf.name_scope(name):
    biased = _variable("biased", var.shape, tf.float32, 0.0, scope=var.op.name)
    local_step = _variable("local_step", [], tf.float32, 0.0, scope=var.op.name)
    biased_new = tf.compat.v1.assign_sub(biased, (biased - value) * (1.0 - decay))
    step_new = tf.compat.v1.assign_add(local_step, 1.0)
    unbiased = biased_new / (1.0 - tf.pow(decay, step_new))
  return tf.compat.v1.assign(var, unbiased, name=name)


def _updated_range(x, spec, min_var, max_var, channels):
  range_min, range_max = _batch_range(x, spec, channels)
  if spec.tracker == LAST_VALUE:
    return (tf.compat.v1.assign(min_var, range_min, name="AssignMinLast"),
            tf.compat.v1.assign(max_var, range_max, name="AssignMaxLast"))
  return (_ema(min_var, range_min, spec.ema_decay, "AssignMinEma"),
          _ema(max_var, range_max, spec.ema_decay, "AssignMaxEma"))


def fake_quantize(x, spec, scope, training, per_channel_shape=None, delay_reached=None):
  """Returns `x` fake-quantized under `spec`, with its range variables in `scope`.

  `scope` is an absolute name scope ending in '/'. In training the range follows
  the data; in eval it is read from the variables only (restored from training).
  `per_channel_shape` reshapes `x` so its channels are last (depthwise weights).
  `delay_reached`, a scalar bool, passes `x` through unchanged until it is true.
  """
  graph = x.graph
  var_scope = scope.rstrip("/")
  with graph.name_scope(scope):
    source = x
    if spec.per_channel and per_channel_shape is not None:
      source = tf.reshape(x, per_channel_shape, name="per_channel_reshape")
    channels = source.shape[-1] if spec.per_channel else None
    shape = [channels] if channels else []
    min_var = _variable("min", shape, tf.float32, spec.init_min, var_scope)
    max_var = _variable("max", shape, tf.float32, spec.init_max, var_scope)
    if training:
      range_min, range_max = _updated_range(source, spec, min_var, max_var, channels)
    else:
      range_min, range_max = tf.identity(min_var), tf.identity(max_var)
    if channels:
      quantized = tf.quantization.fake_quant_with_min_max_vars_per_channel(
          source, range_min, range_max, num_bits=spec.bits, narrow_range=spec.narrow_range,
          name="FakeQuantWithMinMaxVarsPerChannel")
    else:
      quantized = tf.quantization.fake_quant_with_min_max_vars(
          source, range_min, range_max, num_bits=spec.bits, narrow_range=spec.narrow_range,
          name="FakeQuantWithMinMaxVars")
    if source is not x:
      quantized = tf.reshape(quantized, tf.shape(x), name="per_channel_restore")
    if delay_reached is not None:
      quantized = tf.where(delay_reached, quantized, x, name="delayed_quant")
  return quantized
