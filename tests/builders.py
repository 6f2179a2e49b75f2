"""Test-graph builders that reproduce what `tf.contrib.layers` emitted for contrib.quantize's tests.

contrib.layers is gone, but the rewrite finds layers by structure and names its quantizers after the
layer scope, and the ported tests assert exact names. These builders use only `get_variable`, `tf.nn`
and array/math ops, and they emit contrib's variable names, op names and op order
(`<scope>/weights/read`, `<scope>/Conv2D`, `<scope>/BiasAdd`, `<scope>/Relu6`, `<scope>/depthwise`,
`<scope>/BatchNorm/FusedBatchNormV3`, `<scope>/BatchNorm/AssignMovingAvg`, ...).

Everything goes into the current default graph (the caller disables eager execution). `use_resource=None`
inherits the enclosing variable scope, which in TF 2.x graph mode means resource variables
(`VarHandleOp` read by a `ReadVariableOp` named `<scope>/<Layer op>/ReadVariableOp`). `False` gives
ref variables (`VariableV2` plus the `<var>/read` Identity).
"""
import tensorflow as tf

v1 = tf.compat.v1

NORMALIZERS = ('none', 'fused', 'unfused')
UPDATES = ('collection', 'forced')


def _pair(value):
  return (value, value) if isinstance(value, int) else tuple(value)


def _channels(tensor):
  channels = tensor.shape[-1]
  if channels is None:
    raise ValueError('%s needs a static last dimension' % tensor.name)
  return int(channels)


def _weights(name, shape, initializer, stddev):
  # contrib's tests used truncated normal weights (0.09 conv, 0.03 FC); xavier was contrib's default.
  initializer = initializer or v1.truncated_normal_initializer(stddev=stddev)
  return v1.get_variable(name, shape, initializer=initializer)


def _bias_norm_activation(outputs, normalizer, use_bias, activation, bn):
  """contrib's layer tail: BN replaces the bias (it has its own beta), then the activation."""
  if normalizer not in NORMALIZERS:
    raise ValueError('normalizer must be one of %s, got %r' % (NORMALIZERS, normalizer))
  if normalizer != 'none':
    outputs = batch_norm(outputs, fused=normalizer == 'fused', **bn)
  elif use_bias:
    biases = v1.get_variable('biases', [_channels(outputs)], initializer=v1.zeros_initializer())
    outputs = tf.nn.bias_add(outputs, biases)
  return activation(outputs) if activation is not None else outputs


def conv2d(inputs, num_outputs, kernel_size, stride=1, padding='SAME', activation=tf.nn.relu6,
           use_bias=True, normalizer='none', bn_scale=True, bn_center=True, bn_decay=0.997,
           bn_updates='collection', is_training=True, rate=1, scope=None, use_resource=None,
           weights_initializer=None, reuse=None):
  """`layers.conv2d`: `<scope>/weights` [k, k, cin, cout], ops `Conv2D`, `BiasAdd`, `Relu6`.

  scope=None means contrib's default name 'Conv' (uniquified: Conv, Conv_1, ...); scope='' puts the ops
  at the root as contrib did. rate > 1 uses Conv2D's `dilations` attribute.
  """
  with v1.variable_scope(scope, 'Conv', [inputs], reuse=reuse, use_resource=use_resource):
    kh, kw = _pair(kernel_size)
    sh, sw = _pair(stride)
    weights = _weights('weights', [kh, kw, _channels(inputs), num_outputs], weights_initializer, 0.09)
    outputs = tf.nn.conv2d(inputs, weights, [1, sh, sw, 1], padding, dilations=_pair(rate))
    bn = dict(scale=bn_scale, center=bn_center, decay=bn_decay, updates=bn_updates,
              is_training=is_training)
    return _bias_norm_activation(outputs, normalizer, use_bias, activation, bn)


def fully_connected(inputs, num_outputs, activation=tf.nn.relu6, use_bias=True, normalizer='none',
                    bn_scale=True, bn_center=True, bn_decay=0.997, bn_updates='collection',
                    is_training=True, scope=None, use_resource=None, weights_initializer=None,
                    reuse=None):
  """`layers.fully_connected` on a 2-D input: `<scope>/weights` [cin, cout], ops `MatMul`, `BiasAdd`.

  A fused normalizer reshapes to [-1, 1, 1, C] around FusedBatchNormV3 and back, as contrib did.
  """
  with v1.variable_scope(scope, 'fully_connected', [inputs], reuse=reuse, use_resource=use_resource):
    weights = _weights('weights', [_channels(inputs), num_outputs], weights_initializer, 0.03)
    outputs = tf.linalg.matmul(inputs, weights)
    bn = dict(scale=bn_scale, center=bn_center, decay=bn_decay, updates=bn_updates,
              is_training=is_training)
    return _bias_norm_activation(outputs, normalizer, use_bias, activation, bn)


def separable_conv2d(inputs, num_outputs, kernel_size, depth_multiplier=1, stride=1, padding='SAME',
                     rate=1, activation=tf.nn.relu6, use_bias=True, normalizer='none', bn_scale=True,
                     bn_center=True, bn_decay=0.997, bn_updates='collection', is_training=True,
                     scope=None, use_resource=None, weights_initializer=None, reuse=None):
  """`layers.separable_conv2d`; num_outputs=None builds the depthwise conv only.

  Depthwise only: `<scope>/depthwise_weights` [k, k, cin, mult] feeding `<scope>/depthwise`; with
  rate > 1 `tf.nn.depthwise_conv2d` still emits contrib's `depthwise/SpaceToBatchND -> depthwise ->
  depthwise/BatchToSpaceND`. With num_outputs, `tf.nn.separable_conv2d` adds `<scope>/pointwise_weights`
  and names the ops `<scope>/separable_conv2d/depthwise` and `<scope>/separable_conv2d` (the pointwise
  Conv2D), exactly as contrib's layer did (its quantize tests expect `<scope>/separable_conv2d/act_quant`).
  """
  with v1.variable_scope(scope, 'SeparableConv2d', [inputs], reuse=reuse, use_resource=use_resource):
    kh, kw = _pair(kernel_size)
    sh, sw = _pair(stride)
    channels = _channels(inputs)
    depthwise = _weights('depthwise_weights', [kh, kw, channels, depth_multiplier],
                         weights_initializer, 0.09)
    strides = [1, sh, sw, 1]
    if num_outputs is None:
      outputs = v1.nn.depthwise_conv2d(inputs, depthwise, strides, padding, rate=_pair(rate))
    else:
      pointwise = _weights('pointwise_weights', [1, 1, channels * depth_multiplier, num_outputs],
                           weights_initializer, 0.09)
      outputs = v1.nn.separable_conv2d(inputs, depthwise, pointwise, strides, padding,
                                       rate=_pair(rate))
    bn = dict(scale=bn_scale, center=bn_center, decay=bn_decay, updates=bn_updates,
              is_training=is_training)
    return _bias_norm_activation(outputs, normalizer, use_bias, activation, bn)


def _assign_moving_averages(pairs, decay):
  """contrib's `assign_moving_average(zero_debias=False)`: `moving -= (moving - batch) * (1 - decay)`.

  Built as `AssignMovingAvg{,_1}/{decay,sub,mul}` plus the AssignSub (or AssignSubVariableOp) named
  `AssignMovingAvg{,_1}`, which is the Mul(Sub(moving, bn_output), decay) shape the fold looks for.
  Returns the assign ops.
  """
  updates = []
  for moving, batch_stat in pairs:
    with v1.name_scope(None, 'AssignMovingAvg') as scope:
      decay_t = tf.constant(1.0 - decay, name='decay')
      delta = tf.multiply(tf.subtract(tf.convert_to_tensor(moving), batch_stat, name='sub'), decay_t,
                          name='mul')
      updates.append(moving.assign_sub(delta, name=scope, read_value=False))
  return updates


def batch_norm(inputs, fused=True, scale=True, center=True, decay=0.997, epsilon=0.001,
               is_training=True, updates='collection', scope=None, use_resource=None, reuse=None):
  """`layers.batch_norm` with a Python-bool `is_training`: variables `<scope>/{beta,gamma,moving_mean,
  moving_variance}`, scope default 'BatchNorm'.

  Training mode normalises with batch statistics and builds the moving-average updates. 'collection'
  adds the two assign ops to UPDATE_OPS. 'forced' (contrib's `updates_collections=None`) makes them
  control dependencies of an Identity: of the output for fused BN (`<scope>/Identity`), and of the
  batch mean and variance for unfused BN (`Identity`, `Identity_1`), as contrib did.
  Inference mode uses the moving statistics and builds no updates.
  """
  if updates not in UPDATES:
    raise ValueError('updates must be one of %s, got %r' % (UPDATES, updates))
  with v1.variable_scope(scope, 'BatchNorm', [inputs], reuse=reuse,
                         use_resource=use_resource) as var_scope:
    channels = _channels(inputs)
    beta = v1.get_variable('beta', [channels], initializer=v1.zeros_initializer()) if center else None
    gamma = v1.get_variable('gamma', [channels], initializer=v1.ones_initializer()) if scale else None
    # Like contrib: the moving statistics are never partitioned (the moving-average assign can't be).
    partitioner = var_scope.partitioner
    var_scope.set_partitioner(None)
    try:
      moving_mean = v1.get_variable('moving_mean', [channels], initializer=v1.zeros_initializer(),
                                    trainable=False)
      moving_variance = v1.get_variable('moving_variance', [channels],
                                        initializer=v1.ones_initializer(), trainable=False)
    finally:
      var_scope.set_partitioner(partitioner)

    def moving_average_updates(mean, variance):
      ops = _assign_moving_averages([(moving_mean, mean), (moving_variance, variance)], decay)
      if updates == 'collection':
        for op in ops:
          v1.add_to_collection(v1.GraphKeys.UPDATE_OPS, op)
      return ops

    if fused:
      return _fused_batch_norm(inputs, gamma, beta, moving_mean, moving_variance, epsilon,
                               is_training, updates, moving_average_updates)
    if is_training:
      mean, variance = tf.nn.moments(inputs, list(range(inputs.shape.rank - 1)))
      update_ops = moving_average_updates(mean, variance)
      if updates == 'forced':
        with tf.control_dependencies(update_ops):
          mean, variance = tf.identity(mean), tf.identity(variance)
    else:
      mean, variance = moving_mean, moving_variance
    return tf.nn.batch_normalization(inputs, mean, variance, beta, gamma, epsilon)


def _fused_batch_norm(inputs, gamma, beta, moving_mean, moving_variance, epsilon, is_training,
                      updates, moving_average_updates):
  """FusedBatchNormV3 needs 4-D input and explicit gamma/beta, so 2-D inputs go through
  `Reshape` [-1, 1, 1, C] and `Reshape_1` back, and missing gamma/beta become constants (contrib)."""
  channels = _channels(inputs)
  gamma = tf.constant(1.0, shape=[channels]) if gamma is None else gamma
  beta = tf.constant(0.0, shape=[channels]) if beta is None else beta
  rank = inputs.shape.rank
  if rank not in (2, 4):
    raise ValueError('fused batch norm needs a rank 2 or 4 input, got %s' % inputs.shape)
  x = tf.reshape(inputs, [-1, 1, 1, channels]) if rank == 2 else inputs
  if is_training:
    outputs, mean, variance = v1.nn.fused_batch_norm(x, gamma, beta, epsilon=epsilon,
                                                      is_training=True)
    update_ops = moving_average_updates(mean, variance)
    if updates == 'forced':
      with tf.control_dependencies(update_ops):
        outputs = tf.identity(outputs)
  else:
    outputs, _, _ = v1.nn.fused_batch_norm(x, gamma, beta, mean=moving_mean,
                                           variance=moving_variance, epsilon=epsilon,
                                           is_training=False)
  return tf.reshape(outputs, tf.shape(inputs)) if rank == 2 else outputs


def _input(shape, kind, name, seed):
  if kind == 'zeros':
    return tf.zeros(shape, name=name)
  if kind == 'placeholder':
    return v1.placeholder(tf.float32, shape, name=name)
  if kind == 'random':
    return v1.random_uniform(shape, seed=seed, name=name)
  raise ValueError("kind must be 'zeros', 'placeholder' or 'random', got %r" % kind)


def conv_input(batch=5, size=16, channels=3, kind='zeros', name='input', seed=1234):
  """An NHWC input. contrib used zeros of 5x128x128x3; 16x16 keeps tests fast. size=None with
  kind='placeholder' gives the unknown-spatial-shape input of testFoldConv2dUnknownShape."""
  return _input([batch, size, size, channels], kind, name, seed)


def fc_input(batch=5, depth=256, kind='zeros', name='input', seed=1234):
  """A 2-D input for fully_connected (contrib used 5x256 zeros)."""
  return _input([batch, depth], kind, name, seed)


def add_update_barrier(output):
  """The `update_barrier` NoOp and `control_dependency` Identity that contrib's tests end with
  (a leftover of slim's train_op wiring). Returns the Identity."""
  barrier = tf.no_op(name='update_barrier')
  with tf.control_dependencies([barrier]):
    return tf.identity(output, name='control_dependency')


def partitioned_scope(num_shards, scope='part'):
  """A variable scope whose variables are split by `fixed_size_partitioner(num_shards)`, as in
  testSinglePartitionedVariable / testMultiplePartitionedVariables. Layer weights then reach the layer
  through `<var>` = Identity(ConcatV2 of the parts' reads), or Identity(part read) for one shard."""
  return v1.variable_scope(scope, partitioner=v1.fixed_size_partitioner(num_shards))


def has_op(graph, name):
  """True if `graph` has an op called `name` (tests assert on names, as contrib's did)."""
  try:
    graph.get_operation_by_name(name)
    return True
  except KeyError:
    return False
