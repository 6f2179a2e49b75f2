"""The builders must emit the graphs contrib.layers emitted: the rewrite and the ported contrib tests
depend on these op names, types and edges, and BN must really update its moving statistics."""
import numpy as np
import pytest
import tensorflow as tf

import builders

v1 = tf.compat.v1
RESOURCE = pytest.mark.parametrize('use_resource', [False, True], ids=['ref', 'resource'])


def _op(graph, name):
  return graph.get_operation_by_name(name)


def _inputs(graph, name):
  return [t.name for t in _op(graph, name).inputs]


def _weight_read(scope, layer_op, var, use_resource):
  """Where a layer reads its weights: `<var>/read` (ref) or `<layer op>/ReadVariableOp` (resource)."""
  if use_resource:
    return '%s/%s/ReadVariableOp:0' % (scope, layer_op)
  return '%s/%s/read:0' % (scope, var)


def _assert_weight_read(graph, tensor_name, use_resource):
  read = graph.get_tensor_by_name(tensor_name).op
  assert read.type == ('ReadVariableOp' if use_resource else 'Identity')
  assert read.inputs[0].op.type == ('VarHandleOp' if use_resource else 'VariableV2')


@RESOURCE
def test_conv2d_ops_are_named_like_contrib(use_resource):
  with tf.Graph().as_default() as g:
    out = builders.conv2d(builders.conv_input(), 8, 3, stride=2, scope='test',
                          use_resource=use_resource)
    read = _weight_read('test', 'Conv2D', 'weights', use_resource)
    assert _op(g, 'test/Conv2D').type == 'Conv2D'
    assert _inputs(g, 'test/Conv2D') == ['input:0', read]
    _assert_weight_read(g, read, use_resource)
    assert _inputs(g, 'test/BiasAdd')[0] == 'test/Conv2D:0'
    assert out.name == 'test/Relu6:0' and out.shape.as_list() == [5, 8, 8, 8]
    assert [v.name for v in v1.global_variables()] == ['test/weights:0', 'test/biases:0']
    assert v1.global_variables()[0].shape.as_list() == [3, 3, 3, 8]


@RESOURCE
def test_fully_connected_ops_are_named_like_contrib(use_resource):
  with tf.Graph().as_default() as g:
    out = builders.fully_connected(builders.fc_input(depth=8), 4, activation=tf.nn.relu,
                                   use_resource=use_resource)
    read = _weight_read('fully_connected', 'MatMul', 'weights', use_resource)
    assert _inputs(g, 'fully_connected/MatMul') == ['input:0', read]
    _assert_weight_read(g, read, use_resource)
    assert _inputs(g, 'fully_connected/BiasAdd')[0] == 'fully_connected/MatMul:0'
    assert out.name == 'fully_connected/Relu:0' and out.shape.as_list() == [5, 4]


@RESOURCE
def test_depthwise_and_separable_ops_are_named_like_contrib(use_resource):
  with tf.Graph().as_default() as g:
    x = builders.conv_input()
    builders.separable_conv2d(x, None, 3, depth_multiplier=2, scope='dw', use_resource=use_resource)
    builders.separable_conv2d(x, 5, 3, scope='sep', use_resource=use_resource)
    read = _weight_read('dw', 'depthwise', 'depthwise_weights', use_resource)
    assert _op(g, 'dw/depthwise').type == 'DepthwiseConv2dNative'
    assert _inputs(g, 'dw/depthwise') == ['input:0', read]
    _assert_weight_read(g, read, use_resource)
    assert _op(g, 'dw/Relu6').outputs[0].shape.as_list() == [5, 16, 16, 6]
    # contrib's separable layer: depthwise op inside the pointwise op's scope.
    assert _op(g, 'sep/separable_conv2d/depthwise').type == 'DepthwiseConv2dNative'
    assert _op(g, 'sep/separable_conv2d').type == 'Conv2D'
    assert _inputs(g, 'sep/separable_conv2d')[0] == 'sep/separable_conv2d/depthwise:0'
    assert _inputs(g, 'sep/BiasAdd')[0] == 'sep/separable_conv2d:0'
    shapes = {v.op.name: v.shape.as_list() for v in v1.global_variables()}
    assert shapes['dw/depthwise_weights'] == [3, 3, 3, 2]
    assert shapes['sep/pointwise_weights'] == [1, 1, 3, 5]


@RESOURCE
def test_atrous_depthwise_goes_through_space_to_batch(use_resource):
  with tf.Graph().as_default() as g:
    out = builders.separable_conv2d(builders.conv_input(), None, 3, rate=2, activation=None,
                                    scope='test', use_resource=use_resource)
    assert _op(g, 'test/depthwise/SpaceToBatchND').type == 'SpaceToBatchND'
    assert _inputs(g, 'test/depthwise')[0] == 'test/depthwise/SpaceToBatchND:0'
    assert _op(g, 'test/depthwise/BatchToSpaceND').type == 'BatchToSpaceND'
    assert _inputs(g, 'test/depthwise/BatchToSpaceND')[0] == 'test/depthwise:0'
    assert _inputs(g, 'test/BiasAdd')[0] == 'test/depthwise/BatchToSpaceND:0'
    assert out.shape.as_list() == [5, 16, 16, 3]


@RESOURCE
@pytest.mark.parametrize('normalizer', ['fused', 'unfused'])
def test_batch_norm_replaces_bias_and_builds_moving_average_updates(normalizer, use_resource):
  with tf.Graph().as_default() as g:
    out = builders.conv2d(builders.conv_input(), 4, 3, normalizer=normalizer, scope='test',
                          use_resource=use_resource)
    names = {op.name for op in g.get_operations()}
    assert 'test/BiasAdd' not in names and 'test/biases' not in names
    if normalizer == 'fused':
      bn = 'test/BatchNorm/FusedBatchNormV3'
      assert _inputs(g, bn)[0] == 'test/Conv2D:0'
      stats = [bn + ':1', bn + ':2']
      assert _inputs(g, 'test/Relu6') == [bn + ':0']
    else:
      stats = ['test/BatchNorm/moments/Squeeze:0', 'test/BatchNorm/moments/Squeeze_1:0']
      assert _inputs(g, 'test/Relu6') == ['test/BatchNorm/batchnorm/add_1:0']
      assert _op(g, 'test/BatchNorm/batchnorm/mul').inputs[0].op.name == 'test/BatchNorm/batchnorm/Rsqrt'
    assign_type = 'AssignSubVariableOp' if use_resource else 'AssignSub'
    for scope, stat, var in zip(['AssignMovingAvg', 'AssignMovingAvg_1'], stats,
                                ['moving_mean', 'moving_variance']):
      prefix = 'test/BatchNorm/' + scope
      assert _op(g, prefix).type == assign_type
      assert _op(g, prefix).inputs[0].op.name == 'test/BatchNorm/' + var
      # Mul(Sub(moving, batch statistic), decay): the shape the BN fold searches for.
      assert _inputs(g, prefix + '/mul') == [prefix + '/sub:0', prefix + '/decay:0']
      assert _inputs(g, prefix + '/sub')[1] == stat
      assert np.isclose(_op(g, prefix + '/decay').get_attr('value').float_val[0], 0.003)
    updates = v1.get_collection(v1.GraphKeys.UPDATE_OPS)
    assert [op.name for op in updates] == ['test/BatchNorm/AssignMovingAvg',
                                           'test/BatchNorm/AssignMovingAvg_1']
    assert out.name == 'test/Relu6:0'


@pytest.mark.parametrize('normalizer', ['fused', 'unfused'])
def test_forced_updates_hang_off_identities_like_contrib(normalizer):
  with tf.Graph().as_default() as g:
    builders.conv2d(builders.conv_input(), 4, 3, normalizer=normalizer, bn_updates='forced',
                    scope='test')
    assert not v1.get_collection(v1.GraphKeys.UPDATE_OPS)
    assigns = ['test/BatchNorm/AssignMovingAvg', 'test/BatchNorm/AssignMovingAvg_1']
    identities = (['test/BatchNorm/Identity'] if normalizer == 'fused'
                  else ['test/BatchNorm/Identity', 'test/BatchNorm/Identity_1'])
    for name in identities:
      assert sorted(op.name for op in _op(g, name).control_inputs) == assigns
    if normalizer == 'fused':
      assert _inputs(g, 'test/Relu6') == ['test/BatchNorm/Identity:0']


def test_fused_batch_norm_on_fully_connected_reshapes_to_4d_and_back():
  with tf.Graph().as_default() as g:
    out = builders.fully_connected(builders.fc_input(depth=8), 4, normalizer='fused')
    prefix = 'fully_connected/BatchNorm/'
    assert _inputs(g, prefix + 'Reshape')[0] == 'fully_connected/MatMul:0'
    assert _inputs(g, prefix + 'FusedBatchNormV3')[0] == prefix + 'Reshape:0'
    assert _inputs(g, prefix + 'Reshape_1')[0] == prefix + 'FusedBatchNormV3:0'
    assert out.shape.as_list() == [5, 4]


@RESOURCE
@pytest.mark.parametrize('updates', ['collection', 'forced'])
@pytest.mark.parametrize('fused', [True, False], ids=['fused', 'unfused'])
def test_training_batch_norm_updates_moving_statistics(fused, updates, use_resource):
  x = (np.random.RandomState(0).normal(size=(4, 3, 3, 2)) * [1.0, 3.0] + [2.0, -1.0]).astype(np.float32)
  with tf.Graph().as_default():
    out = builders.batch_norm(tf.constant(x), fused=fused, decay=0.9, updates=updates,
                              use_resource=use_resource)
    moving_mean, moving_variance = [v for v in v1.global_variables() if 'moving' in v.op.name]
    with v1.Session() as sess:
      sess.run(v1.global_variables_initializer())
      y = sess.run(out)
      if updates == 'collection':
        np.testing.assert_allclose(sess.run(moving_mean), 0.0)  # the output alone updates nothing
        sess.run(v1.get_collection(v1.GraphKeys.UPDATE_OPS))
      mean, variance = sess.run([moving_mean, moving_variance])
  batch_var = x.var(axis=(0, 1, 2), ddof=1 if fused else 0)  # FusedBatchNorm reports Bessel's.
  np.testing.assert_allclose(mean, 0.1 * x.mean(axis=(0, 1, 2)), rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(variance, 1.0 - 0.1 * (1.0 - batch_var), rtol=1e-5)
  expected = (x - x.mean(axis=(0, 1, 2))) / np.sqrt(x.var(axis=(0, 1, 2)) + 0.001)
  np.testing.assert_allclose(y, expected, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize('fused', [True, False], ids=['fused', 'unfused'])
def test_inference_batch_norm_uses_moving_statistics(fused):
  x = np.random.RandomState(1).normal(size=(2, 3, 3, 2)).astype(np.float32)
  with tf.Graph().as_default() as g:
    out = builders.batch_norm(tf.constant(x), fused=fused, is_training=False)
    assert not [op for op in g.get_operations() if 'AssignMovingAvg' in op.name]
    with v1.Session() as sess:
      sess.run(v1.global_variables_initializer())
      np.testing.assert_allclose(sess.run(out), x / np.sqrt(1.001), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize('num_shards', [1, 2])
def test_partitioned_weights_reach_the_conv_through_identity(num_shards):
  with tf.Graph().as_default() as g:
    with builders.partitioned_scope(num_shards):
      builders.conv2d(builders.conv_input(), 4, 3, scope='test/test', use_resource=False)
      builders.batch_norm(tf.zeros([2, 4, 4, 4]), scope='bn', use_resource=False)
    weights = _op(g, 'part/test/test/Conv2D').inputs[1].op
    assert weights.name == 'part/test/test/weights' and weights.type == 'Identity'
    if num_shards == 1:
      assert weights.inputs[0].name == 'part/test/test/weights/part_0/read:0'
    else:
      concat = weights.inputs[0].op
      assert concat.type == 'ConcatV2'
      assert [t.name for t in concat.inputs[:2]] == ['part/test/test/weights/part_%d/read:0' % i
                                                     for i in range(2)]
    # As in contrib, BN's moving statistics are never partitioned (gamma and beta are).
    assert _op(g, 'part/bn/moving_mean').type == 'VariableV2'
    assert _op(g, 'part/bn/gamma/part_0').type == 'VariableV2'


def test_root_scope_and_update_barrier():
  with tf.Graph().as_default() as g:
    out = builders.add_update_barrier(
        builders.conv2d(builders.conv_input(), 4, 3, normalizer='unfused', scope=''))
    assert _op(g, 'Conv2D').type == 'Conv2D'
    assert _op(g, 'BatchNorm/batchnorm/add_1').type == 'AddV2'
    assert out.name == 'control_dependency:0'
    assert _inputs(g, 'control_dependency') == ['Relu6:0']
    assert [op.name for op in out.op.control_inputs] == ['update_barrier']
    assert _op(g, 'update_barrier').type == 'NoOp'
