"""Turns one QuantSpec into TF ops: range variables, their training updates, FakeQuant.

Knows nothing about patterns or layers. The range variables are named as
tf.contrib.quantize named them (`<scope>/min`, `<scope>/max`), so contrib-era eval
checkpoints restore; a moving average adds `<scope>/local_step`.
"""

import tensorflow as tf

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
    var = _variable(STEP_NAME, [], tf.int64, 0, scope="", use_resource=use_resource)
    with graph.name_scope(STEP_NAME + "/"):
      return tf.identity(tf.compat.v1.assign_add(var, 1), name="Identity")


def step_reached(graph, step_count, name, use_resource=None):
  """A scalar bool, true once `step_count` steps have run: false for the first `step_count` runs."""
  with graph.name_scope(name + "/"):
    threshold = tf.constant(step_count, dtype=tf.int64, name="delay")
    return tf.greater(quantization_step(graph, use_resource), threshold, name="reached")


def _variable(name, shape, dtype, init, scope, use_resource=None):
  """A non-trainable variable named exactly `<scope>/<name>`, in GLOBAL_VARIABLES."""
  if use_resource is None:
    use_resource = tf.compat.v1.resource_variables_enabled()
  with tf.compat.v1.get_default_graph().name_scope(scope + "/" if scope else None):
    return tf.compat.v1.Variable(
        tf.constant(init, dtype=dtype, shape=shape, name="Initializer/Const"), trainable=False,
        name=name, use_resource=use_resource,
        collections=[tf.compat.v1.GraphKeys.GLOBAL_VARIABLES],
        aggregation=tf.VariableAggregation.MEAN)


def _batch_range(x, spec, channels):
  axes = list(range(x.shape.rank - 1)) if channels else None
  batch_min = tf.reduce_min(x, axis=axes, name="BatchMin")
  batch_max = tf.reduce_max(x, axis=axes, name="BatchMax")
  if spec.symmetric:
    ratio = -1.0 if spec.narrow_range else -(2.0 ** spec.bits - 2.0) / 2.0 ** spec.bits
    return (tf.minimum(batch_min, batch_max / ratio), tf.maximum(batch_max, batch_min * ratio))
  return tf.minimum(batch_min, 0.0), tf.maximum(batch_max, 0.0)


def _updated_range(x, spec, min_var, max_var, channels, use_resource):
  range_min, range_max = _batch_range(x, spec, channels)
  if spec.tracker == LAST_VALUE:
    return (tf.compat.v1.assign(min_var, range_min, name="AssignMinLast"),
            tf.compat.v1.assign(max_var, range_max, name="AssignMaxLast"))
  return _zero_debiased_ema(min_var, max_var, range_min, range_max, spec.ema_decay, use_resource)


def _zero_debiased_ema(min_var, max_var, range_min, range_max, decay, use_resource):
  """Moving averages of the range, zero-debiased as TF1's assign_moving_average.

  The debiased average m_t = b_t / (1 - d^t) of the biased one b_t = d·b_(t-1) + (1-d)·x_t
  obeys m_t = (d·(1 - d^(t-1))·m_(t-1) + (1-d)·x_t) / (1 - d^t), so only m and t are
  stored: the first step takes the batch range as it is, and later ones average.
  """
  local_step = _variable("local_step", [], tf.float32, 0.0, min_var.op.name.rpartition("/")[0],
                         use_resource)
  decay_power = tf.pow(decay, tf.compat.v1.assign_add(local_step, 1.0))
  norm = 1.0 - decay_power
  old_weight, new_weight = (decay - decay_power) / norm, (1.0 - decay) / norm
  return (tf.compat.v1.assign(min_var, old_weight * min_var + new_weight * range_min,
                              name="AssignMinEma"),
          tf.compat.v1.assign(max_var, old_weight * max_var + new_weight * range_max,
                              name="AssignMaxEma"))


def fake_quantize(x, spec, scope, training, per_channel_shape=None, delay_reached=None,
                  use_resource=None):
  """Returns `x` fake-quantized under `spec`, with its range variables in `scope`.

  `scope` is an absolute name scope ending in '/'. In training the range follows
  the data; in eval it is read from the variables only (restored from training).
  `per_channel_shape` reshapes `x` so its channels are last (depthwise weights).
  `delay_reached`, a scalar bool, passes `x` through unchanged until it is true.
  `use_resource` picks resource or ref variables (None: TensorFlow's default).
  """
  graph = x.graph
  var_scope = scope.rstrip("/")
  with graph.name_scope(scope):
    source = x
    if spec.per_channel and per_channel_shape is not None:
      source = tf.reshape(x, per_channel_shape, name="per_channel_reshape")
    channels = source.shape[-1] if spec.per_channel else None
    shape = [channels] if channels else []
    min_var = _variable("min", shape, tf.float32, spec.init_min, var_scope, use_resource)
    max_var = _variable("max", shape, tf.float32, spec.init_max, var_scope, use_resource)
    if training:
      range_min, range_max = _updated_range(source, spec, min_var, max_var, channels, use_resource)
    else:
      range_min, range_max = min_var, max_var
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
