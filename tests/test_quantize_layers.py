"""contrib.quantize's layer scenarios, quantize_test.py and quantize_parameterized_test.py, ported.

Each test builds contrib's graph with the shared builders (5x16x16x3 inputs instead of 5x128x128x3),
rewrites it through the contrib-compatible API and checks which tensors got a FakeQuant, under which
name, and how the quantizer is wired. Where our graph deliberately differs from contrib's, a comment
says so:

- quant_delay is a `SelectV2` named `<scope>/delayed_quant` (contrib: a v1 cond, with
  `delayed_quant/Switch_1` and `Merge`), with an int64 threshold `<scope>/activate_quant/delay`.
- Batch norm is folded in place: the layer op keeps its name and reads the folded, quantized weights
  (contrib: a `Conv2D_Fold` clone).
- With resource variables a FakeQuant reads its ranges through
  `FakeQuantWithMinMaxVars/ReadVariableOp{,_1}`, which run after the range updates (as in contrib's
  resource-variable graphs); with ref variables it reads the assign ops (`AssignMinLast`,
  `AssignMinEma`, ...) directly, as contrib did.
- One weight variable read by two layers gets one `weights_quant` that both read (contrib: two).
"""
import numpy as np
import pytest
import tensorflow as tf

import builders
from qat_rewrite import quantize
from qat_rewrite.graph.view import is_weight_unscale

FQ = 'FakeQuantWithMinMaxVars'
TRAINING = pytest.mark.parametrize('training', [True, False], ids=['train', 'eval'])


def _rewrite(graph, training, **kwargs):
  if training:
    return quantize.create_training_graph(graph, **kwargs)
  return quantize.create_eval_graph(graph, **kwargs)


def _op(graph, name):
  return graph.get_operation_by_name(name)


def _fake_quants(graph):
  return [op for op in graph.get_operations() if op.type == FQ]


def _consumer_types(tensor):
  return [c.type for c in tensor.consumers()]


def _input_types(op):
  return [t.op.type for t in op.inputs]


def _serialized(graph):
  return graph.as_graph_def().SerializeToString(deterministic=True)


def _assert_quantizer(graph, scope, source, training, weights=False, resource=True):
  """`<scope>/FakeQuantWithMinMaxVars` quantizes `source` with the ranges `<scope>/min` and `max`.

  In training the ranges come out of their updates: `AssignMinLast`/`AssignMaxLast` for weights, the
  zero-debiased EMA `AssignMinEma`/`AssignMaxEma` for activations. With ref variables the FakeQuant
  reads the assign ops (as in contrib); with resource variables it reads
  `FakeQuantWithMinMaxVars/ReadVariableOp{,_1}`, which run after the assigns. In eval it reads the
  variables only. Returns the FakeQuant op.
  """
  fq = _op(graph, scope + '/' + FQ)
  assert fq.type == FQ
  assert fq.inputs[0].name == source + ':0'
  assert fq.get_attr('num_bits') == 8
  assert fq.get_attr('narrow_range') == weights
  tracker = 'Last' if weights else 'Ema'
  ranges = [scope + '/min', scope + '/max']
  if resource:
    reads = fq.inputs[1:]
    assert [t.name for t in reads] == [scope + '/%s/ReadVariableOp:0' % FQ,
                                       scope + '/%s/ReadVariableOp_1:0' % FQ]
    assert [t.op.inputs[0].op.name for t in reads] == ranges
    assert [t.op.inputs[0].op.type for t in reads] == ['VarHandleOp'] * 2
    updates = [[c.name for c in t.op.control_inputs] for t in reads]
    if training:
      assert updates == [[scope + '/AssignMin' + tracker], [scope + '/AssignMax' + tracker]]
    else:
      assert updates == [[], []]
  elif training:
    assert [t.name for t in fq.inputs[1:]] == [scope + '/AssignMin%s:0' % tracker,
                                               scope + '/AssignMax%s:0' % tracker]
    assert [t.op.inputs[0].op.name for t in fq.inputs[1:]] == ranges
  else:
    assert [t.name for t in fq.inputs[1:]] == [scope + '/min/read:0', scope + '/max/read:0']
  if not training:
    assert not [op.name for op in graph.get_operations()
                if op.name.startswith(scope + '/Assign')], 'eval ranges must not be updated'
  return fq


def _inputs(op):
  """The op's inputs, a training fold's weight unscale (q(w·s)·1/s, see
  fold_batch_norm.unscale_on_weights) seen through to the quantized weights it reads."""
  return [t.op.inputs[0] if is_weight_unscale(t.op) else t for t in op.inputs]


def _assert_feeds(graph, fq, scope, source, consumer, delay):
  """The quantized tensor reaches `consumer`: directly, or via `<scope>/delayed_quant` (delay)."""
  reader = _op(graph, consumer)
  assert source + ':0' not in [t.name for t in _inputs(reader)]
  if not delay:
    assert fq.outputs[0] in _inputs(reader)
    return
  # contrib: the FakeQuant output went to `<scope>/delayed_quant/Switch_1` of a v1 cond.
  select = _op(graph, scope + '/delayed_quant')
  assert select.type == 'SelectV2'
  assert [c.name for c in fq.outputs[0].consumers()] == [select.name]
  assert select.inputs[1] is fq.outputs[0]
  assert select.inputs[2].name == source + ':0'  # the float tensor until the delay is reached
  assert select.outputs[0] in _inputs(reader)
  threshold = _op(graph, scope + '/activate_quant/delay')
  assert threshold.type == 'Const' and threshold.outputs[0].dtype == tf.int64
  assert tf.make_ndarray(threshold.get_attr('value')) == delay
  assert threshold.outputs[0] in list(select.inputs[0].op.inputs)


# --- quantize_test.py -----------------------------------------------------------------------------
# testInsertQuantOpFailsWhenOpsNotConnected is not ported: its body is `pass` in contrib, and the
# private `_InsertQuantOp` it was meant to call has no counterpart in our API.


def _add_relu6_tail(node, other, barrier=True):
  node = tf.add(node, other, name='test/add')
  node = tf.nn.relu6(node, name='test/relu6')
  if barrier:
    builders.add_update_barrier(node)
  return node


def _assert_relu6_not_fed_by_fake_quant(graph):
  """No quantizer between the residual add and the ReLU6 that TFLite fuses into it."""
  for fq in _fake_quants(graph):
    assert 'test/relu6' not in [c.name for c in fq.outputs[0].consumers()]
  assert _op(graph, 'test/relu6').inputs[0].op.name == 'test/add'


@TRAINING
def test_add_after_conv2d_quantizes_the_conv_output_and_the_relu6(training):
  """testInsertQuantOpForAddAfterConv2d."""
  with tf.Graph().as_default() as g:
    conv = builders.conv2d(builders.conv_input(), 8, 5, stride=2, activation=None,
                           scope='test/test')
    _add_relu6_tail(conv, tf.zeros((5, 8, 8, 8)))
    _rewrite(g, training)
  _assert_quantizer(g, 'test/test/conv_quant', 'test/test/BiasAdd', training)
  assert _op(g, 'test/add').inputs[0].op.name == 'test/test/conv_quant/' + FQ
  _assert_relu6_not_fed_by_fake_quant(g)
  # The add's output is covered after the fused ReLU6 (the add context is `test`), not by add_quant.
  _assert_quantizer(g, 'test/act_quant', 'test/relu6', training)
  assert not builders.has_op(g, 'test/add_quant/' + FQ)


@TRAINING
def test_add_after_depthwise_conv2d_quantizes_the_conv_output(training):
  """testInsertQuantOpForAddAfterSeparableConv2d (depthwise only)."""
  with tf.Graph().as_default() as g:
    conv = builders.separable_conv2d(builders.conv_input(), None, 5, stride=2, activation=None,
                                     scope='test/test')
    _add_relu6_tail(conv, tf.zeros((5, 8, 8, 3)))
    _rewrite(g, training)
  _assert_quantizer(g, 'test/test/weights_quant', 'test/test/depthwise/ReadVariableOp', training,
                    weights=True)
  _assert_quantizer(g, 'test/test/conv_quant', 'test/test/BiasAdd', training)
  _assert_relu6_not_fed_by_fake_quant(g)
  _assert_quantizer(g, 'test/act_quant', 'test/relu6', training)


@TRAINING
def test_separable_conv2d_quantizes_both_weights_and_the_depthwise_output(training):
  """testInsertQuantOpInSeparableConv2d: depthwise -> pointwise -> add -> relu6."""
  with tf.Graph().as_default() as g:
    conv = builders.separable_conv2d(builders.conv_input(), 3, 5, stride=2, activation=None,
                                     scope='test/test')
    _add_relu6_tail(conv, tf.zeros((5, 8, 8, 3)))
    pointwise_read = _op(g, 'test/test/separable_conv2d').inputs[1].op.name
    depthwise_read = _op(g, 'test/test/separable_conv2d/depthwise').inputs[1].op.name
    _rewrite(g, training)
  _assert_quantizer(g, 'test/test/conv_quant', 'test/test/BiasAdd', training)
  pointwise = _assert_quantizer(g, 'test/test/weights_quant', pointwise_read, training,
                                weights=True)
  depthwise = _assert_quantizer(g, 'test/test/separable_conv2d/weights_quant', depthwise_read,
                                training, weights=True)
  assert _op(g, 'test/test/separable_conv2d').inputs[1] is pointwise.outputs[0]
  assert _op(g, 'test/test/separable_conv2d/depthwise').inputs[1] is depthwise.outputs[0]
  between = _assert_quantizer(g, 'test/test/separable_conv2d/act_quant',
                              'test/test/separable_conv2d/depthwise', training)
  assert _op(g, 'test/test/separable_conv2d').inputs[0] is between.outputs[0]
  _assert_relu6_not_fed_by_fake_quant(g)


@TRAINING
def test_conv_relu6_without_bias_quantizes_weights_and_activation(training):
  """testLayerActivationQuantized."""
  with tf.Graph().as_default() as g:
    builders.conv2d(builders.conv_input(), 8, 5, stride=2, use_bias=False, scope='test')
    _rewrite(g, training)
    assert 'test/weights_quant/%s:0' % FQ in [t.name for t in _op(g, 'test/Conv2D').inputs]
    assert FQ in _consumer_types(_op(g, 'test/Relu6').outputs[0])
  _assert_quantizer(g, 'test/act_quant', 'test/Relu6', training)


@TRAINING
def test_final_layer_without_activation_quantizes_the_bias_add(training):
  """testFinalLayerQuantized."""
  with tf.Graph().as_default() as g:
    builders.conv2d(builders.conv_input(), 8, 5, stride=2, activation=None, scope='test')
    report = _rewrite(g, training)
    assert FQ in _consumer_types(_op(g, 'test/BiasAdd').outputs[0])
  _assert_quantizer(g, 'test/act_quant', 'test/BiasAdd', training)
  assert report.quantized_weights == ['test/Conv2D']


@TRAINING
def test_post_activation_bypass_is_quantized_before_and_after(training):
  """testPostActivationBypassQuantized: conv -> relu6 -> add -> conv."""
  with tf.Graph().as_default() as g:
    conv = builders.conv2d(builders.conv_input(), 8, 5, stride=2, scope='test/test')
    bypass = tf.add(conv, tf.zeros((5, 8, 8, 8)), name='test/add')
    builders.conv2d(bypass, 8, 5, stride=2, scope='test/unused')
    _rewrite(g, training)
    assert FQ in _consumer_types(bypass)
    assert FQ in _input_types(bypass.op)
  _assert_quantizer(g, 'test/test/act_quant', 'test/test/Relu6', training)
  after = _assert_quantizer(g, 'test/post_activation_bypass_quant', 'test/add', training)
  assert _op(g, 'test/unused/Conv2D').inputs[0] is after.outputs[0]


@TRAINING
def test_overlapping_post_activation_bypass_is_quantized_once(training):
  """testOverlappingPostActivationBypassQuantized: relu6(conv1) + conv2 -> relu6."""
  with tf.Graph().as_default() as g:
    x = builders.conv_input()
    conv1 = builders.conv2d(x, 8, 5, stride=2, scope='test/test1')
    conv2 = builders.conv2d(x, 8, 5, stride=2, activation=None, scope='test/test2')
    bypass = tf.add(conv1, conv2, name='test/add')
    tf.nn.relu6(bypass, name='test/output')
    _rewrite(g, training)
    assert FQ not in _consumer_types(bypass)
    assert _input_types(bypass.op) == [FQ, FQ]  # both operands of the add are quantized
  for scope in ('test/test1', 'test/test2'):
    _assert_quantizer(g, scope + '/weights_quant', scope + '/Conv2D/ReadVariableOp', training,
                      weights=True)
  _assert_quantizer(g, 'test/test1/act_quant', 'test/test1/Relu6', training)
  # The add + ReLU6 is the second layer's residual add and activation, named as contrib named them
  # (contrib-era checkpoints carry these names): conv_quant on the second conv's output and
  # act_quant in the add's context after the ReLU6. The first layer's post-activation bypass
  # quantizer is not used, since a ReLU follows the add.
  _assert_quantizer(g, 'test/test2/conv_quant', 'test/test2/BiasAdd', training)
  _assert_quantizer(g, 'test/act_quant', 'test/output', training)
  assert not builders.has_op(g, 'test/post_activation_bypass_quant/' + FQ)
  assert len(_fake_quants(g)) == 5
  assert _op(g, 'test/test1/act_quant/' + FQ).inputs[0].op.type == 'Relu6'
  assert _op(g, 'test/act_quant/' + FQ).inputs[0].op.type == 'Relu6'


@TRAINING
def test_rewrite_inside_a_name_scope_does_not_nest_it(training):
  """testWithNameScope."""
  with tf.Graph().as_default() as g:
    with g.name_scope('name_scope'):
      builders.conv2d(builders.conv_input(), 8, 5, stride=2, activation=None, scope='test')
      _rewrite(g, training)
  broken = [op.name for op in g.get_operations() if op.name.startswith('name_scope/name_scope/')]
  assert not broken
  # Ranges live next to their FakeQuant: `name_scope/test/weights_quant/min` (checked below).
  # contrib named the variable `test/weights_quant/min`, as variable scopes ignore name scopes.
  _assert_quantizer(g, 'name_scope/test/weights_quant', 'name_scope/test/Conv2D/ReadVariableOp',
                    training, weights=True)
  _assert_quantizer(g, 'name_scope/test/act_quant', 'name_scope/test/BiasAdd', training)


@TRAINING
def test_rewrite_inside_a_null_name_scope(training):
  """testWithNullNameScope (contrib only checked that it does not crash)."""
  with tf.Graph().as_default() as g:
    with g.name_scope(None):
      builders.conv2d(builders.conv_input(channels=32), 32, 5, activation=None, scope='test')
      _rewrite(g, training)
  _assert_quantizer(g, 'test/weights_quant', 'test/Conv2D/ReadVariableOp', training, weights=True)
  _assert_quantizer(g, 'test/act_quant', 'test/BiasAdd', training)


@TRAINING
def test_scope_that_matches_nothing_changes_nothing(training):
  """testWithNonMatchingNameScope."""
  with tf.Graph().as_default() as g:
    with g.name_scope('name_scope'):
      builders.conv2d(builders.conv_input(), 8, 5, stride=2, activation=None, scope='test')
  names, before = {op.name for op in g.get_operations()}, _serialized(g)
  rewrite = (quantize.experimental_create_training_graph if training
             else quantize.experimental_create_eval_graph)
  report = rewrite(g, scope='NonExisting/')
  assert {op.name for op in g.get_operations()} == names
  assert _serialized(g) == before
  assert report.layers == [] and report.quantized_weights == []


@TRAINING
@pytest.mark.parametrize('shards', [1, 2])
def test_partitioned_weights_are_quantized(training, shards):
  """testSinglePartitionedVariable / testMultiplePartitionedVariables."""
  with tf.Graph().as_default() as g:
    with builders.partitioned_scope(shards):
      conv = builders.conv2d(builders.conv_input(), 8, 5, stride=2, activation=None,
                             scope='test/test')
      _add_relu6_tail(conv, tf.zeros((5, 8, 8, 8)), barrier=False)
    weights = _op(g, 'part/test/test/Conv2D').inputs[1]
    _rewrite(g, training)
  fq = _assert_quantizer(g, 'part/test/test/weights_quant', weights.op.name, training, weights=True)
  assert _op(g, 'part/test/test/Conv2D').inputs[1] is fq.outputs[0]
  # The range variables are scalars, never split by the enclosing partitioner.
  ranges = {v.op.name: v.shape.as_list() for v in g.get_collection('variables')
            if v.op.name.startswith('part/test/test/weights_quant/')}
  assert ranges == {'part/test/test/weights_quant/min': [], 'part/test/test/weights_quant/max': []}


def _conv_reshape(user_fake_quant):
  with tf.Graph().as_default() as g:
    conv = builders.conv2d(builders.conv_input(), 8, 5, stride=2, scope='test/test')
    reshape = tf.reshape(conv, (10, 8, 8, 4))
    if user_fake_quant:
      tf.quantization.fake_quant_with_min_max_vars(reshape, -1, 1)
  return g, reshape


@TRAINING
def test_fake_quant_after_a_reshape_is_respected(training):
  """testSkipReshapeQuantization (a): the user's FakeQuant after the reshape covers the relu6."""
  g, reshape = _conv_reshape(user_fake_quant=True)
  _rewrite(g, training)
  assert FQ not in _input_types(reshape.op)
  assert not builders.has_op(g, 'test/test/act_quant/' + FQ)
  assert _op(g, 'test/test/Conv2D').inputs[1].op.name == 'test/test/weights_quant/' + FQ


@TRAINING
def test_activation_before_a_reshape_is_quantized(training):
  """testSkipReshapeQuantization (b): without the user's FakeQuant, one goes before the reshape."""
  g, reshape = _conv_reshape(user_fake_quant=False)
  _rewrite(g, training)
  assert FQ in _input_types(reshape.op)
  assert reshape.op.inputs[0].op is _assert_quantizer(g, 'test/test/act_quant', 'test/test/Relu6',
                                                      training)


def test_shared_resource_weights_get_one_quantizer():
  """testSeparableConvWithResourceVar: one depthwise weight read by two depthwise convs.

  Deliberate differences from contrib: both layers read ONE `depthwise_conv_1/weights_quant`
  (contrib quantized each read separately, so `depthwise_conv_2/weights_quant` existed too). And the
  add of the second conv's output with the input is a residual add (contrib took it for a bias add
  and put `depthwise_conv_2/act_quant` after it): its input is quantized by `conv_quant`, its output
  by `add_quant`.
  """
  with tf.Graph().as_default() as g:
    x = builders.conv_input()
    with tf.compat.v1.variable_scope('', use_resource=True):
      weights = tf.compat.v1.get_variable('depthwise_weights', [3, 3, 3, 1])
      with tf.compat.v1.variable_scope('depthwise_conv_1'):
        conv1 = tf.nn.depthwise_conv2d(x, weights, [1, 1, 1, 1], 'SAME')
      with tf.compat.v1.variable_scope('depthwise_conv_2'):
        conv2 = tf.nn.depthwise_conv2d(conv1, weights, [1, 1, 1, 1], 'SAME')
        tf.add(conv2, x, name='add')
    report = quantize.create_training_graph(g)
  shared = _assert_quantizer(g, 'depthwise_conv_1/weights_quant',
                             'depthwise_conv_1/depthwise/ReadVariableOp', True, weights=True)
  assert _op(g, 'depthwise_conv_1/depthwise').inputs[1] is shared.outputs[0]
  assert _op(g, 'depthwise_conv_2/depthwise').inputs[1] is shared.outputs[0]
  assert not builders.has_op(g, 'depthwise_conv_2/weights_quant/' + FQ)
  between = _assert_quantizer(g, 'depthwise_conv_1/act_quant', 'depthwise_conv_1/depthwise', True)
  assert _op(g, 'depthwise_conv_2/depthwise').inputs[0] is between.outputs[0]
  conv_out = _assert_quantizer(g, 'depthwise_conv_2/conv_quant', 'depthwise_conv_2/depthwise', True)
  assert _op(g, 'depthwise_conv_2/add').inputs[0] is conv_out.outputs[0]
  _assert_quantizer(g, 'depthwise_conv_2/add_quant', 'depthwise_conv_2/add', True)
  assert sorted(report.quantized_weights) == ['depthwise_conv_1/depthwise',
                                              'depthwise_conv_2/depthwise']
  assert len(_fake_quants(g)) == 4


# --- beyond contrib: every reader of a quantized tensor, pooling --------------------------------


def _assert_every_reader_is_quantized(graph):
  """No op outside a quantizer reads a tensor that an activation quantizer quantizes."""
  for fq in _fake_quants(graph):
    scope = fq.name.rpartition('/')[0]
    if scope.endswith('weights_quant'):
      continue
    readers = [c.name for c in fq.inputs[0].consumers() if not c.name.startswith(scope + '/')]
    assert not readers, '%s reads %s unquantized' % (readers, fq.inputs[0].name)


@TRAINING
def test_layer_output_read_by_a_residual_add_and_the_next_layer_is_quantized_for_both(training):
  """MobileNetV2's project conv: its output feeds the residual add and the next block's conv.

  contrib rerouted `conv_quant` to the add alone, so the next conv read the float tensor and
  TFLite had no range for it; every reader now gets the quantized tensor.
  """
  with tf.Graph().as_default() as g:
    project = builders.conv2d(builders.conv_input(), 8, 1, activation=None, scope='test/project')
    expand = builders.conv2d(project, 8, 1, scope='test/expand')
    project2 = builders.conv2d(expand, 8, 1, activation=None, scope='test/project2')
    tf.add(project, project2, name='test/add')
    _rewrite(g, training)
  conv_out = _assert_quantizer(g, 'test/project/conv_quant', 'test/project/BiasAdd', training)
  assert _op(g, 'test/add').inputs[0] is conv_out.outputs[0]
  assert _op(g, 'test/expand/Conv2D').inputs[0] is conv_out.outputs[0]
  other = _assert_quantizer(g, 'test/project2/act_quant', 'test/project2/BiasAdd', training)
  assert _op(g, 'test/add').inputs[1] is other.outputs[0]
  _assert_quantizer(g, 'test/add_quant', 'test/add', training)
  _assert_every_reader_is_quantized(g)


@TRAINING
@pytest.mark.parametrize('between', [None, 'MaxPool'])
def test_avg_pool_output_is_rounded_on_its_input_quantizer_grid(training, between):
  """TFLite keeps AvgPool on its input's scale but rounds the average: the output FakeQuant
  reads the input quantizer's own range tensors (through grid-keeping ops such as MaxPool),
  so no variable is added and old checkpoints still restore."""
  with tf.Graph().as_default() as g:
    x = builders.conv2d(builders.conv_input(), 8, 3, scope='test/test')
    if between:
      x = tf.nn.max_pool2d(x, 2, 1, 'SAME', name='test/max')
    pooled = tf.nn.avg_pool2d(x, 2, 2, 'VALID', name='test/pool')
    builders.conv2d(pooled, 8, 1, scope='test/next')
    variables = set(v.op.name for v in g.get_collection('variables'))
    report = _rewrite(g, training)
  act = _assert_quantizer(g, 'test/test/act_quant', 'test/test/Relu6', training)
  fq = _op(g, 'test/pool/activation_AvgPool_quant/' + FQ)
  nudge = fq.inputs[0].op  # ties rounded away from zero, as TFLite's int8 kernel does
  assert nudge.name == 'test/pool/activation_AvgPool_quant/ties_away_from_zero'
  assert nudge.inputs[0] is pooled
  assert fq.inputs[1] is act.inputs[1] and fq.inputs[2] is act.inputs[2]
  assert fq.get_attr('num_bits') == 8 and not fq.get_attr('narrow_range')
  assert _op(g, 'test/next/Conv2D').inputs[0] is fq.outputs[0]
  assert all(c.name.startswith('test/pool/activation_AvgPool_quant/') for c in pooled.consumers())
  new = set(v.op.name for v in g.get_collection('variables')) - variables
  assert not [v for v in new if v.startswith('test/pool/')]
  assert 'test/pool/activation_AvgPool_quant' in report.other_quantizers
  _assert_every_reader_is_quantized(g)
  assert _rewrite(g, training).quantizer_count == 0  # a second rewrite adds nothing


def test_avg_pool_quantizer_waits_for_its_input_quantizer_delay():
  with tf.Graph().as_default() as g:
    x = builders.conv2d(builders.conv_input(), 8, 3, scope='test/test')
    pooled = tf.nn.avg_pool2d(x, 2, 2, 'VALID', name='test/pool')
    builders.conv2d(pooled, 8, 1, scope='test/next')
    quantize.create_training_graph(g, quant_delay=5)
  select = _op(g, 'test/pool/activation_AvgPool_quant/delayed_quant')
  assert select.type == 'SelectV2'
  assert select.inputs[0] is _op(g, 'test/test/act_quant/delayed_quant').inputs[0]
  assert select.inputs[1].op.name == 'test/pool/activation_AvgPool_quant/' + FQ
  assert select.inputs[2] is pooled
  assert _op(g, 'test/next/Conv2D').inputs[0] is select.outputs[0]


@TRAINING
def test_global_average_pool_mean_gets_a_range_of_its_own(training):
  """TFLite's MEAN requantizes to its own scale: a moving-average quantizer named as other
  ops' quantizers are (`<op>/activation_<Type>_quant`). A Mean over the batch axis (a loss,
  a batch statistic) is not pooling and stays float."""
  with tf.Graph().as_default() as g:
    x = builders.conv2d(builders.conv_input(), 8, 3, scope='test/test')
    pooled = tf.reduce_mean(x, [1, 2], name='test/gap')
    builders.fully_connected(pooled, 4, activation=None, scope='test/logits')
    tf.reduce_mean(x, name='test/loss')
    report = _rewrite(g, training)
  fq = _assert_quantizer(g, 'test/gap/activation_Mean_quant', 'test/gap', training)
  assert _op(g, 'test/logits/MatMul').inputs[0] is fq.outputs[0]
  ranges = sorted(v.op.name for v in g.get_collection('variables')
                  if v.op.name.startswith('test/gap/'))
  want = ['test/gap/activation_Mean_quant/max', 'test/gap/activation_Mean_quant/min']
  assert ranges == sorted(want + (['test/gap/activation_Mean_quant/local_step'] if training else []))
  assert report.other_quantizers == ['test/gap/activation_Mean_quant']
  assert FQ not in _consumer_types(_op(g, 'test/loss').outputs[0])
  _assert_every_reader_is_quantized(g)


@TRAINING
def test_an_add_fused_with_its_relu6_gets_one_quantizer_and_it_is_read(training):
  """Hard-swish, x·relu6(x + 3)/6 (MobileNetV3): the add's quantizer goes after its ReLU6,
  which gets no second one. The rewrite once added a second that nothing read (38 on
  MobileNetV3Small): a range trained for nothing and a dead FakeQuant in the eval graph."""
  with tf.Graph().as_default() as g:
    x = builders.conv2d(builders.conv_input(), 8, 3, activation=None, scope='test/test')
    gate = tf.nn.relu6(tf.add(x, 3.0, name='test/add'), name='test/gate')
    swish = tf.multiply(x, tf.multiply(gate, 1.0 / 6.0, name='test/scale'), name='test/swish')
    builders.conv2d(swish, 4, 1, scope='test/next')
    report = _rewrite(g, training)
  assert report.other_quantizers == ['test/add/activation_AddV2_quant',
                                     'test/scale/activation_Mul_quant',
                                     'test/swish/activation_Mul_quant']
  fq = _op(g, 'test/add/activation_AddV2_quant/' + FQ)
  assert fq.inputs[0].op.name == 'test/gate'
  assert _op(g, 'test/scale').inputs[0] is fq.outputs[0]
  for fq in _fake_quants(g):  # each is read, but the model output's
    scope = fq.name.rpartition('/')[0]
    readers = [c for c in fq.outputs[0].consumers() if not c.name.startswith(scope + '/')]
    assert readers or scope == 'test/next/act_quant', fq.name
  _assert_every_reader_is_quantized(g)


@TRAINING
def test_pool_of_a_float_tensor_stays_float(training):
  with tf.Graph().as_default() as g:
    x = builders.conv_input()
    pooled = tf.nn.avg_pool2d(x, 2, 2, 'VALID', name='test/pool')
    tf.reduce_mean(pooled, [1, 2], name='test/gap')
    report = _rewrite(g, training)
  assert not _fake_quants(g) and report.other_quantizers == []


# --- quantize_parameterized_test.py ---------------------------------------------------------------
# contrib ran every (activation, bypass, delay) tuple for use_resource in {F, T} x scope in {None,
# 'test'}: 48 graphs per layer type, 96 with batch norm. Here each layer type x normalizer runs 6
# graphs whose columns cover every pair of values of (activation, bypass, delay, resource, scope).

ACTIVATIONS = {'Relu6': tf.nn.relu6, 'Relu': tf.nn.relu, 'Identity': tf.identity}
# (activation, with_bypass, delay, use_resource, scope)
MATRIX = [
    ('Relu6', False, None, False, None),
    ('Relu', False, None, True, 'test'),
    ('Identity', False, 5000, False, 'test'),
    ('Relu6', True, 5000, True, 'test'),
    ('Relu', True, 5000, False, None),
    ('Identity', True, None, True, None),
]
# layer kind -> (layer op, weight variable)
KINDS = {
    'conv2d': ('Conv2D', 'weights'),
    'fc': ('MatMul', 'weights'),
    'depthwise': ('depthwise', 'depthwise_weights'),
    'atrous': ('depthwise', 'depthwise_weights'),
}


def _matrix_id(case):
  act, bypass, delay, resource, scope = case
  return '-'.join([act, 'bypass' if bypass else 'plain', 'delay' if delay else 'nodelay',
                   'resource' if resource else 'ref', scope or 'root'])


def _build_layer(kind, inputs, conv_scope, with_bypass, activation, normalizer, use_resource):
  common = dict(activation=activation, normalizer=normalizer, bn_decay=1.0 - 0.003,
                scope=conv_scope, use_resource=use_resource)
  if kind == 'conv2d':
    return builders.conv2d(inputs, 3 if with_bypass else 8, 5, stride=1 if with_bypass else 2,
                           **common)
  if kind == 'fc':
    return builders.fully_connected(inputs, 16 if with_bypass else 8, **common)
  if kind == 'depthwise':
    return builders.separable_conv2d(inputs, None, 5, stride=1 if with_bypass else 2, **common)
  return builders.separable_conv2d(inputs, None, 3, rate=2, **common)


def _build_and_rewrite(kind, normalizer, act_name, with_bypass, delay, use_resource, scope):
  """contrib's graph: inputs -> layer [-> BN] [-> bypass add] -> activation -> control_dependency.

  Returns the graph, the rewrite's report and the layer's scope.
  """
  graph = tf.Graph()
  with graph.as_default():
    inputs = builders.fc_input(depth=16) if kind == 'fc' else builders.conv_input()
    s = scope + '/' if scope else ''
    conv_scope = s + 'test2' if with_bypass else (scope or '')
    activation = ACTIVATIONS[act_name]
    # Without batch norm and bypass the layer carries the activation (named `<scope>/<Act>`);
    # otherwise contrib added it by hand, with the same name.
    in_layer = normalizer == 'none' and not with_bypass
    node = _build_layer(kind, inputs, conv_scope, with_bypass, activation if in_layer else None,
                        normalizer, use_resource)
    if with_bypass:
      node = tf.add(inputs, node, name=s + 'AddV2')
    if not in_layer:
      node = activation(node, name=s + act_name)
    builders.add_update_barrier(node)
    report = quantize.create_training_graph(graph, quant_delay=delay or 0)
  return graph, report, conv_scope


def _assert_quantized_layer(graph, report, kind, normalizer, act_name, with_bypass, delay,
                            use_resource, scope, conv_scope):
  """contrib's _AssertCorrectQuantizedGraph{Without,With}BatchNorm and _AssertIdempotent."""
  p = conv_scope + '/' if conv_scope else ''
  s = scope + '/' if scope else ''
  layer_op, weight_var = KINDS[kind]
  layer = _op(graph, p + layer_op)
  if normalizer != 'none':
    # Folded in place: contrib quantized `mul_fold` for a `<layer>_Fold` clone.
    weights = p + 'mul_fold'
    assert _inputs(layer)[1].op.name.startswith(p + 'weights_quant/')
    layer_out = p + 'BatchNorm_Fold/FusedBatchNorm'  # the training fold's batch norm (see README)
  else:
    weights = p + layer_op + '/ReadVariableOp' if use_resource else p + weight_var + '/read'
    layer_out = p + 'BiasAdd'
  wq = _assert_quantizer(graph, p + 'weights_quant', weights, True, weights=True,
                         resource=use_resource)
  _assert_feeds(graph, wq, p + 'weights_quant', weights, layer.name, delay)

  expected = 2
  if with_bypass:
    cq = _assert_quantizer(graph, p + 'conv_quant', layer_out, True, resource=use_resource)
    _assert_feeds(graph, cq, p + 'conv_quant', layer_out, s + 'AddV2', delay)
    expected += 1
  aq = _assert_quantizer(graph, s + 'act_quant', s + act_name, True, resource=use_resource)
  _assert_feeds(graph, aq, s + 'act_quant', s + act_name, 'control_dependency', delay)
  assert len(_fake_quants(graph)) == expected, [op.name for op in _fake_quants(graph)]

  assert report.quantized_weights == [layer.name]
  assert len(report.folded_batch_norms) == (0 if normalizer == 'none' else 1)

  # _AssertIdempotent: a second rewrite leaves the graph as it is.
  before = _serialized(graph)
  quantize.create_training_graph(graph)
  assert _serialized(graph) == before, 'a second rewrite changed the graph'


@pytest.mark.parametrize('case', MATRIX, ids=_matrix_id)
@pytest.mark.parametrize('normalizer', ['none', 'fused', 'unfused'])
@pytest.mark.parametrize('kind', list(KINDS))
def test_quantize_layer(kind, normalizer, case):
  """testQuantize_{Conv2d,FC,DepthwiseConv2d,AtrousConv}{Without,With}BatchNorm."""
  graph, report, conv_scope = _build_and_rewrite(kind, normalizer, *case)
  _assert_quantized_layer(graph, report, kind, normalizer, *case, conv_scope=conv_scope)


@pytest.mark.parametrize('use_resource', [False, True], ids=['ref', 'resource'])
@pytest.mark.parametrize('fused', [False, True], ids=['unfused', 'fused'])
@pytest.mark.parametrize('act_name', list(ACTIVATIONS))
def test_batch_norm_forced_updates_keep_the_post_activation_bypass_quantized(act_name, fused,
                                                                             use_resource):
  """testBatchNormForcedUpdates: BN updates forced through an Identity (`updates_collections=None`).

  conv+BN+act (`test/test`) -> add -> conv+BN+act (`test/unused`): the add is quantized on its way
  in (the first layer's act_quant) and on its way out.
  """
  activation = ACTIVATIONS[act_name]
  normalizer = 'fused' if fused else 'unfused'
  with tf.Graph().as_default() as g:
    conv = builders.conv2d(builders.conv_input(), 8, 5, stride=2, activation=activation,
                           normalizer=normalizer, bn_updates='forced', bn_decay=1.0 - 0.003,
                           scope='test/test', use_resource=use_resource)
    bypass = tf.add(conv, tf.zeros((5, 8, 8, 8)), name='test/add')
    builders.conv2d(bypass, 8, 5, stride=2, activation=activation, normalizer=normalizer,
                    bn_updates='forced', bn_decay=1.0 - 0.003, scope='test/unused',
                    use_resource=use_resource)
    report = quantize.create_training_graph(g)
    assert FQ in _consumer_types(bypass)
    assert FQ in _input_types(bypass.op)
  assert len(report.folded_batch_norms) == 2
  assert sorted(report.quantized_weights) == ['test/test/Conv2D', 'test/unused/Conv2D']
  # The BN's Identity belongs to the layer, not its activation: act_quant follows the activation.
  act_in = _assert_quantizer(g, 'test/test/act_quant', 'test/test/' + act_name, True,
                             resource=use_resource)
  assert bypass.op.inputs[0] is act_in.outputs[0]
  act_out = _assert_quantizer(g, 'test/post_activation_bypass_quant', 'test/add', True,
                              resource=use_resource)
  assert _op(g, 'test/unused/Conv2D').inputs[0] is act_out.outputs[0]


def _bias_grid_graph(training, per_channel, normalizer):
  """conv `a` (float input) -> ReLU6 -> conv `b` (bias or folded batch norm) -> ReLU6, rewritten."""
  with tf.Graph().as_default() as g:
    x = builders.conv2d(builders.conv_input(kind='random'), 8, 3, scope='a')
    builders.conv2d(x, 8, 3, normalizer=normalizer, is_training=training, scope='b')
    rewrite = (quantize.experimental_create_training_graph if training
               else quantize.experimental_create_eval_graph)
    report = rewrite(g, symmetric=per_channel, per_channel_weights=per_channel)
  return g, report


def _randomize(sess, graph, rng):
  """Random biases, batch-norm parameters and symmetric weight ranges (one per channel if
  per-channel), as a symmetric training rewrite leaves them."""
  for var in graph.get_collection(tf.compat.v1.GraphKeys.GLOBAL_VARIABLES):
    name, shape = var.op.name, var.shape.as_list()
    if name.endswith('weights_quant/max'):
      var.load(np.linspace(0.2, 1.0, 8)[:shape[0]] if shape else 0.7, sess)
    elif name.endswith('weights_quant/min'):
      var.load(-np.linspace(0.2, 1.0, 8)[:shape[0]] if shape else -0.7, sess)
    elif name.endswith(('biases', 'beta', 'moving_mean')):
      var.load(rng.normal(0, 1, shape), sess)
    elif name.endswith(('gamma', 'moving_variance')):
      var.load(rng.uniform(0.5, 2.0, shape), sess)


@pytest.mark.parametrize('normalizer', ['none', 'fused'])
@pytest.mark.parametrize('per_channel', [False, True], ids=['per_tensor', 'per_channel'])
def test_eval_bias_is_on_the_input_times_weight_scale_grid(per_channel, normalizer):
  """TFLite adds the (folded) bias in int32 on the grid s_in·s_w (per output channel for
  per-channel weights); the eval graph adds that same bias, so rounding ties fall alike."""
  g, report = _bias_grid_graph(False, per_channel, normalizer)
  assert [l.bias_quantized for l in report.layers] == [False, True]
  quantized = _op(g, 'b/bias_quant/quantized')
  bias_op = _op(g, 'b/BiasAdd' if normalizer == 'none' else 'b/add_fold')
  assert quantized.outputs[0] in list(bias_op.inputs)
  assert not any(v.op.name.startswith('b/bias_quant') for v in g.get_collection(
      tf.compat.v1.GraphKeys.GLOBAL_VARIABLES))  # no new variables: checkpoints still restore
  weights_fq = _op(g, 'b/weights_quant/' + FQ + ('PerChannel' if per_channel else ''))
  input_fq = _op(g, 'a/act_quant/' + FQ)
  with tf.compat.v1.Session(graph=g) as sess:
    sess.run(tf.compat.v1.global_variables_initializer())
    _randomize(sess, g, np.random.RandomState(0))
    bias, bias_q, in_min, in_max, w_min, w_max = sess.run(
        [quantized.inputs[0], quantized.outputs[0], input_fq.inputs[1], input_fq.inputs[2],
         weights_fq.inputs[1], weights_fq.inputs[2]])
  step = (in_max - in_min) / 255.0 * (w_max - w_min) / 254.0
  if per_channel:
    assert step.shape == (8,) and np.ptp(step) > 0
    np.testing.assert_allclose(step, 12.0 / 255.0 * w_max / 127.0, rtol=1e-5)  # max|w|/127
  ticks = bias_q / step
  np.testing.assert_allclose(ticks, np.round(ticks), atol=1e-3)
  np.testing.assert_array_less(np.abs(bias_q - bias), step / 2 + 1e-7)
  assert np.any(bias_q != bias)


@pytest.mark.parametrize('per_channel', [False, True], ids=['per_tensor', 'per_channel'])
def test_bias_without_a_quantized_input_stays_float(per_channel):
  """The first conv reads the float model input: no known s_in, so its bias is left as it was."""
  g, _ = _bias_grid_graph(False, per_channel, 'none')
  assert not [op.name for op in g.get_operations() if op.name.startswith('a/bias_quant')]
  assert _op(g, 'a/BiasAdd').inputs[1].op.name == 'a/BiasAdd/ReadVariableOp'


def test_training_bias_rounding_has_a_straight_through_gradient():
  g, report = _bias_grid_graph(True, False, 'none')
  assert [l.bias_quantized for l in report.layers] == [False, True]
  with g.as_default():
    quantized = _op(g, 'b/bias_quant/quantized').outputs[0]
    (grad,) = tf.gradients(tf.reduce_sum(quantized * tf.range(8.0)), quantized.op.inputs[0])
    with tf.compat.v1.Session() as sess:
      sess.run(tf.compat.v1.global_variables_initializer())
      np.testing.assert_array_equal(sess.run(grad), np.arange(8.0))
    # A second rewrite leaves the rounded bias alone.
    before = _serialized(g)
    quantize.experimental_create_training_graph(g)
    assert _serialized(g) == before
