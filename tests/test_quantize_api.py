"""contrib's quantize_graph_test.py scenarios on `qat_rewrite.quantize`, plus what our API adds.

The 17 contrib scenarios come first (the two that never ran in contrib, testDefaultGraph and
testActivationRewriteWithNonMatchingScope, now really check what they meant to). Then: argument
checks, the report, per-channel weights, and a training checkpoint restored into the eval graph.
"""
import functools

import numpy as np
import pytest
import tensorflow as tf

import builders
from qat_rewrite import quantize

v1 = tf.compat.v1

TRAIN = [quantize.create_training_graph, quantize.experimental_create_training_graph,
         functools.partial(quantize.experimental_create_training_graph, symmetric=True)]
EVAL = [quantize.create_eval_graph, quantize.experimental_create_eval_graph,
        functools.partial(quantize.experimental_create_eval_graph, symmetric=True)]
ALL = [quantize.create_training_graph, quantize.experimental_create_training_graph,
       quantize.create_eval_graph, quantize.experimental_create_eval_graph]
EXPERIMENTAL = [quantize.experimental_create_training_graph,
                quantize.experimental_create_eval_graph]


def _name(fn):
  if isinstance(fn, functools.partial):
    return fn.func.__name__ + '_' + '_'.join('%s=%s' % kv for kv in fn.keywords.items())
  return fn.__name__


def runners(fns):
  return pytest.mark.parametrize('rewrite_fn', fns, ids=[_name(f) for f in fns])


FAKE_QUANT = 'FakeQuantWithMinMaxVars'
TRAINING_OP_NAMES = ('AssignMinLast', 'AssignMinEma', 'AssignMaxLast', 'AssignMaxEma')


# contrib's test graphs (16x16 inputs instead of 128x128: the rewrite does not care, tests run faster).

def conv_layer(input_tensor=None, scope='test', pre_activation_bypass=False,
               post_activation_bypass=False):
  """contrib's _ConvLayer: `<scope>/Conv/{Conv2D,BiasAdd}`, [+ input], relu6, [+ input]."""
  if input_tensor is None:
    input_tensor = tf.zeros((5, 16, 16, 3))
  with tf.name_scope(scope):
    output = builders.conv2d(input_tensor, 3, 5, padding='SAME', activation=None)
    if pre_activation_bypass:
      output += input_tensor
    output = tf.nn.relu6(output)
    if post_activation_bypass:
      output += input_tensor
  return output


def layer_with_identity(scope='test', is_training=True):
  """contrib's _LayerWithIdentity: conv (no bias) -> Identity conv_out -> fused BN -> Identity bn_out."""
  input_tensor = tf.zeros((5, 16, 16, 3))
  with tf.name_scope(scope):
    output = builders.conv2d(input_tensor, 3, 5, activation=None, use_bias=False)
    output = tf.identity(output, name='conv_out')
    output = builders.batch_norm(output, fused=True, decay=1.0 - 0.003, is_training=is_training)
    output = tf.identity(output, name='bn_out')
  return output


def layer_with_activation_processing(scope='test'):
  """contrib's _LayerWithActivationProcessing: conv -> fused BN -> relu6 -> 2x and 3x -> sum."""
  input_tensor = tf.zeros((5, 16, 16, 3))
  with tf.name_scope(scope):
    output = builders.conv2d(input_tensor, 3, 5, activation=None, use_bias=False)
    output = builders.batch_norm(output, fused=True, decay=1.0 - 0.003)
    output = tf.nn.relu6(output)
    scaled_output1 = tf.multiply(2.0, output)
    scaled_output2 = tf.multiply(3.0, output)
    output = scaled_output1 + scaled_output2
  return output


def _op_names(graph):
  return [op.name for op in graph.get_operations()]


def _fake_quants(graph, type_=FAKE_QUANT):
  return [op for op in graph.get_operations() if op.type == type_]


def _assert_output_goes_to_ops(op, graph, names):
  for name in names:
    assert op.outputs[0] in list(graph.get_operation_by_name(name).inputs), (op.name, name)


# ---------------------------------------------------------------- contrib's 17 scenarios

@runners(ALL)
def test_rewrite(rewrite_fn):
  """testRewrite: an explicitly passed graph gains the range variables; the default graph is untouched."""
  graph = tf.Graph()
  with graph.as_default():
    conv_layer()
  before = {v.name for v in graph.get_collection(v1.GraphKeys.GLOBAL_VARIABLES)}
  with tf.Graph().as_default() as other:
    rewrite_fn(graph)
    assert not other.get_operations()
  after = {v.name for v in graph.get_collection(v1.GraphKeys.GLOBAL_VARIABLES)}
  assert before < after
  assert {'test/Conv/weights_quant/min:0', 'test/Conv/weights_quant/max:0',
          'test/Conv/act_quant/min:0', 'test/Conv/act_quant/max:0'} <= after


@runners(ALL)
def test_default_graph(rewrite_fn):
  """testDefaultGraph (never ran in contrib): no argument rewrites the default graph."""
  with tf.Graph().as_default() as graph:
    conv_layer()
    before = len(v1.global_variables())
    rewrite_fn()
    assert len(v1.global_variables()) > before
    weights_quant = graph.get_operation_by_name('test/Conv/weights_quant/' + FAKE_QUANT)
    assert graph.get_operation_by_name('test/Conv/Conv2D').inputs[1].op is weights_quant
    assert graph.get_operation_by_name('test/Conv/act_quant/' + FAKE_QUANT)


@runners(ALL)
def test_with_post_activation_bypass(rewrite_fn):
  with tf.Graph().as_default() as graph:
    conv_layer(post_activation_bypass=True, scope='scope1')
    rewrite_fn()
  assert any('scope1/post_activation_bypass_quant/' in n for n in _op_names(graph))
  fq = graph.get_operation_by_name('scope1/post_activation_bypass_quant/' + FAKE_QUANT)
  assert fq.inputs[0].op is graph.get_operation_by_name('scope1/add')


@runners(TRAIN)
def test_quant_delay(rewrite_fn):
  with tf.Graph().as_default() as graph:
    conv_layer()
    rewrite_fn(quant_delay=100)
  delays = [op for op in graph.get_operations()
            if op.type == 'Const' and 'activate_quant' in op.name]
  assert delays
  for op in delays:
    assert op.get_attr('dtype') == tf.int64
    assert tf.make_ndarray(op.get_attr('value')) == 100
  # Every quantizer is gated: the conv reads its weights through the select, not the FakeQuant.
  select = graph.get_operation_by_name('test/Conv/weights_quant/delayed_quant')
  assert select.type == 'SelectV2'
  assert graph.get_operation_by_name('test/Conv/Conv2D').inputs[1].op is select


def test_quant_delay_keeps_the_graph_float_until_the_delay():
  """What a user sees: the first steps compute the float model, later ones the quantized model."""
  with tf.Graph().as_default() as graph:
    x = v1.placeholder(tf.float32, [2, 8, 8, 3])
    y = builders.conv2d(x, 4, 3, activation=tf.nn.relu6, scope='net')
    rewrite = quantize.experimental_create_training_graph(quant_delay=3)
    assert rewrite.quantizer_count >= 2
    feed = {x: np.random.RandomState(0).uniform(-1, 1, (2, 8, 8, 3))}
    variables = {v.op.name: v for v in v1.global_variables()}
    float_y = tf.nn.relu6(tf.nn.bias_add(
        tf.nn.conv2d(x, variables['net/weights'].read_value(), [1, 1, 1, 1], 'SAME'),
        variables['net/biases'].read_value()))
    with v1.Session() as sess:
      sess.run(v1.global_variables_initializer())
      for step in (1, 2, 3, 4):
        out, ref = sess.run([y, float_y], feed)
        if step <= 3:  # quant_delay=3: the first three runs are float
          np.testing.assert_allclose(out, ref, atol=1e-6)
        else:
          assert np.abs(out - ref).max() > 1e-4, step


@runners(ALL)
def test_training_ops_check(rewrite_fn):
  with tf.Graph().as_default():
    output = conv_layer()
    loss = tf.reduce_mean(output)
    v1.train.GradientDescentOptimizer(0.0001).minimize(loss)
    with pytest.raises(ValueError, match='Training op found in graph'):
      rewrite_fn()


@runners(EXPERIMENTAL)
def test_weight_bits(rewrite_fn):
  with tf.Graph().as_default() as graph:
    conv_layer(pre_activation_bypass=True)
    rewrite_fn(weight_bits=4)
  weights = [op for op in _fake_quants(graph) if 'weights_quant' in op.name]
  assert weights
  assert all(op.get_attr('num_bits') == 4 for op in weights)
  others = [op for op in _fake_quants(graph) if 'weights_quant' not in op.name]
  assert others and all(op.get_attr('num_bits') == 8 for op in others)


@runners(EXPERIMENTAL)
def test_activation_bits(rewrite_fn):
  with tf.Graph().as_default() as graph:
    conv_layer(pre_activation_bypass=True)
    rewrite_fn(activation_bits=4)
  acts = [op for op in _fake_quants(graph)
          if any(s in op.name for s in ('act_quant', 'conv_quant', 'add_quant'))]
  assert {op.name.split('/')[-2] for op in acts} >= {'act_quant', 'conv_quant'}
  assert all(op.get_attr('num_bits') == 4 for op in acts)
  weights = [op for op in _fake_quants(graph) if 'weights_quant' in op.name]
  assert weights and all(op.get_attr('num_bits') == 8 for op in weights)


@runners(TRAIN)
def test_training_quantization(rewrite_fn):
  with tf.Graph().as_default() as graph:
    conv_layer()
    rewrite_fn()
  names = _op_names(graph)
  assert _fake_quants(graph)
  for s in TRAINING_OP_NAMES:
    assert any(s in n for n in names), s


@runners(EVAL)
def test_eval_quantization(rewrite_fn):
  with tf.Graph().as_default() as graph:
    conv_layer()
    rewrite_fn()
  names = _op_names(graph)
  assert _fake_quants(graph)
  for s in TRAINING_OP_NAMES:
    assert not any(s in n for n in names), s
  initializers = {v.initializer for v in graph.get_collection(v1.GraphKeys.GLOBAL_VARIABLES)}
  assigns = [op for op in graph.get_operations()
             if '_quant/' in op.name and 'Assign' in op.type and op not in initializers]
  assert not assigns


IDEMPOTENT_GRAPHS = {
    'conv': conv_layer,  # contrib's
    'bypass': lambda: conv_layer(pre_activation_bypass=True, post_activation_bypass=True),
    'bn_training_mode': layer_with_activation_processing,
    'bn_inference_mode': lambda: layer_with_identity(is_training=False),
}


@pytest.mark.parametrize('model', list(IDEMPOTENT_GRAPHS))
@runners(ALL)
def test_idempotent(rewrite_fn, model):
  with tf.Graph().as_default() as graph:
    IDEMPOTENT_GRAPHS[model]()
    rewrite_fn()
    once = graph.as_graph_def()
    rewrite_fn()
    twice = graph.as_graph_def()
  assert _fake_quants(graph)
  assert once.SerializeToString(deterministic=True) == twice.SerializeToString(deterministic=True)


def test_two_layers_in_one_name_scope_get_uniquified_quantizers():
  """contrib: a second quantizer in the same scope is named `act_quant_1` (TF uniquifies the scope)."""
  with tf.Graph().as_default() as graph:
    x = tf.zeros([1, 8, 8, 3])
    with tf.name_scope('net'):
      w1 = v1.get_variable('w1', [3, 3, 3, 3])
      w2 = v1.get_variable('w2', [3, 3, 3, 3])
      y = tf.nn.relu(tf.nn.conv2d(x, w1, 1, 'SAME'))
      tf.nn.relu(tf.nn.conv2d(y, w2, 1, 'SAME'))
    report = quantize.create_training_graph()
  assert sorted(report.quantized_weights) == ['net/Conv2D', 'net/Conv2D_1']
  names = set(_op_names(graph))
  for scope in ('net/weights_quant', 'net/weights_quant_1', 'net/act_quant', 'net/act_quant_1'):
    assert scope + '/' + FAKE_QUANT in names, scope


@runners(ALL)
def test_identity_node(rewrite_fn):
  with tf.Graph().as_default() as graph:
    layer_with_identity()
    rewrite_fn()
  names = _op_names(graph)
  assert any('test/Conv/weights_quant' in n for n in names)
  assert any('test/Conv/act_quant' in n for n in names)
  bn_out = graph.get_operation_by_name('test/bn_out')
  fold_out = 'test/Conv/add_fold:0' if rewrite_fn in EVAL else 'test/Conv/BatchNorm_Fold/FusedBatchNorm:0'
  assert [t.name for t in bn_out.inputs] == [fold_out]
  _assert_output_goes_to_ops(graph.get_operation_by_name('test/conv_out'), graph,
                             ['test/BatchNorm/FusedBatchNormV3'])
  # The identity into the (now unused) batch norm is not mistaken for the layer's activation.
  assert not any(n.startswith('test/conv_out/') or 'conv_out_quant' in n for n in names)


@runners(ALL)
def test_activation_quantization(rewrite_fn):
  with tf.Graph().as_default() as graph:
    layer_with_activation_processing()
    rewrite_fn()
  for op_name, quant in (('test/Mul', 'test/Mul/activation_Mul_quant/'),
                         ('test/Mul_1', 'test/Mul_1/activation_Mul_quant/'),
                         ('test/add', 'test/add/activation_AddV2_quant/')):
    _assert_output_goes_to_ops(graph.get_operation_by_name(op_name), graph, [quant + FAKE_QUANT])


@runners(EXPERIMENTAL)
def test_rewrite_with_scope(rewrite_fn):
  with tf.Graph().as_default() as graph:
    output = conv_layer(scope='scope1')
    conv_layer(input_tensor=output, scope='scope2')
    rewrite_fn(scope='scope1')
  names = _op_names(graph)
  assert any('scope1/Conv/act_quant' in n for n in names)
  assert any('scope1/Conv/weights_quant' in n for n in names)
  assert not any('scope2/Conv/act_quant' in n for n in names)
  assert not any('scope2/Conv/weights_quant' in n for n in names)
  assert graph.get_operation_by_name('scope2/Conv/Conv2D').inputs[1].op.type == 'ReadVariableOp'
  assert not any(n.startswith('scope2/') and '_quant' in n for n in names)


@runners(EXPERIMENTAL)
def test_rewrite_with_non_matching_scope(rewrite_fn):
  with tf.Graph().as_default() as graph:
    conv_layer()
    before = set(_op_names(graph))
    rewrite_fn(scope='NonExistingScope')
  assert set(_op_names(graph)) == before


@runners(EXPERIMENTAL)
def test_activation_rewrite_with_scope(rewrite_fn):
  with tf.Graph().as_default() as graph:
    output = layer_with_identity(scope='scope1')
    with tf.name_scope('scope2'):
      output = tf.nn.relu6(output)
      scaled_output1 = tf.multiply(2.0, output)
      scaled_output2 = tf.multiply(3.0, output)
      output = scaled_output1 + scaled_output2
    rewrite_fn(scope='scope1')
  names = _op_names(graph)
  assert any('scope1/Conv/act_quant' in n for n in names)
  assert any('scope1/Conv/weights_quant' in n for n in names)
  for name in names:
    if name.startswith('scope2'):
      assert 'FakeQuant' not in name and '_quant' not in name, name


@runners(EXPERIMENTAL)
def test_activation_rewrite_with_non_matching_scope(rewrite_fn):
  """Vacuous in contrib (it intersected op types with a string); here it checks for real."""
  with tf.Graph().as_default() as graph:
    layer_with_activation_processing()
    rewrite_fn(scope='NonExistingScope')
  assert not [op.name for op in graph.get_operations() if 'FakeQuant' in op.type]
  assert not [n for n in _op_names(graph) if '_quant' in n]


def _shared_weights_graph(rewrite_fn, **kwargs):
  graph = tf.Graph()
  with graph.as_default():
    conv = v1.make_template('shared_weights_conv', conv_layer)
    conv()
    conv()
    rewrite_fn(**kwargs)
  convs = [op for op in graph.get_operations() if op.type == 'Conv2D']
  assert len(convs) == 2
  return graph, convs


@runners(ALL)
def test_with_shared_weights(rewrite_fn):
  graph, convs = _shared_weights_graph(rewrite_fn)
  weights = [op for op in _fake_quants(graph) if 'weights_quant' in op.name]
  assert len(weights) == 1
  for conv in convs:
    assert conv.inputs[1].op is weights[0]


@runners(TRAIN)
def test_with_shared_weights_and_quant_delay(rewrite_fn):
  graph, convs = _shared_weights_graph(rewrite_fn, quant_delay=1)
  weights = [op for op in _fake_quants(graph) if 'weights_quant' in op.name]
  assert len(weights) == 1
  selects = [op for op in graph.get_operations()
             if op.type == 'SelectV2' and 'weights_quant' in op.name]
  assert len(selects) == 1 and selects[0].name.endswith('/delayed_quant')
  for conv in convs:
    assert conv.inputs[1].op is selects[0]


# ---------------------------------------------------------------- arguments

@pytest.mark.parametrize('argument', ['weight_bits', 'activation_bits'])
@runners(EXPERIMENTAL)
def test_bits_out_of_range_or_not_an_integer(rewrite_fn, argument):
  """The error names the argument to fix, and the graph is left as it was."""
  for value in (1, 17, 8.0, '8', True):
    with tf.Graph().as_default() as graph:
      conv_layer()
      before = set(_op_names(graph))
      with pytest.raises(ValueError, match=argument):
        rewrite_fn(**{argument: value})
      assert set(_op_names(graph)) == before, value


@pytest.mark.parametrize('bits', [2, 16])
def test_bits_at_the_limits_are_accepted(bits):
  with tf.Graph().as_default() as graph:
    conv_layer()
    quantize.experimental_create_training_graph(weight_bits=bits, activation_bits=bits)
  assert {op.get_attr('num_bits') for op in _fake_quants(graph)} == {bits}


@pytest.mark.parametrize('rewrite_fn', [quantize.create_training_graph,
                                        quantize.experimental_create_training_graph,
                                        quantize.experimental_create_eval_graph],
                         ids=_name)
def test_negative_quant_delay(rewrite_fn):
  with tf.Graph().as_default() as graph:
    conv_layer()
    before = set(_op_names(graph))
    with pytest.raises(ValueError, match='quant_delay'):
      rewrite_fn(quant_delay=-1)
    assert set(_op_names(graph)) == before


# ---------------------------------------------------------------- the report

def test_report_lists_each_quantized_layer():
  with tf.Graph().as_default():
    x = conv_layer(scope='first')
    x = builders.conv2d(x, 4, 3, normalizer='fused', scope='second')
    x = tf.reshape(x, [5, -1])
    builders.fully_connected(x, 10, scope='logits')
    report = quantize.create_training_graph()
  text = str(report)
  for layer in ('first/Conv/Conv2D', 'second/Conv2D', 'logits/MatMul'):
    assert layer in text
  assert sorted(report.quantized_weights) == ['first/Conv/Conv2D', 'logits/MatMul',
                                              'second/Conv2D']
  assert report.folded_batch_norms == ['second/BatchNorm/FusedBatchNormV3']
  assert not report.float_ops


def test_report_names_an_nchw_conv_left_in_float():
  with tf.Graph().as_default() as graph:
    x = v1.placeholder(tf.float32, [1, 3, 8, 8])
    w = v1.get_variable('nchw/weights', [3, 3, 3, 4])
    with tf.name_scope('nchw'):
      tf.nn.relu6(tf.nn.conv2d(x, w, [1, 1, 1, 1], 'SAME', data_format='NCHW', name='Conv2D'))
    conv_layer(scope='nhwc')
    report = quantize.create_training_graph()
  conv = graph.get_operation_by_name('nchw/Conv2D')
  assert conv.inputs[1].op.type == 'ReadVariableOp'  # weights stay float
  assert 'nhwc/Conv/Conv2D' in report.quantized_weights
  assert 'nchw/Conv2D' not in report.quantized_weights
  float_ops = {f.op: f for f in report.float_ops}
  assert 'nchw/Conv2D' in float_ops, str(report)
  assert 'NCHW' in float_ops['nchw/Conv2D'].reason
  assert 'nchw/Conv2D' in str(report)


def test_report_names_a_layer_outside_the_scope():
  with tf.Graph().as_default():
    output = conv_layer(scope='scope1')
    conv_layer(input_tensor=output, scope='scope2')
    report = quantize.experimental_create_training_graph(scope='scope1')
  assert report.quantized_weights == ['scope1/Conv/Conv2D']
  float_ops = {f.op: f for f in report.float_ops}
  assert list(float_ops) == ['scope2/Conv/Conv2D']
  assert 'scope' in float_ops['scope2/Conv/Conv2D'].reason
  assert 'scope2/Conv/Conv2D' in str(report)


# ---------------------------------------------------------------- per-channel weights

PER_CHANNEL = 'FakeQuantWithMinMaxVarsPerChannel'


def _per_channel_graph(kind):
  graph = tf.Graph()
  with graph.as_default():
    x = tf.random.uniform([2, 8, 8, 3], seed=1)
    if kind == 'conv2d':
      builders.conv2d(x, 5, 3, scope='layer')
      layer, var, channels = 'layer/Conv2D', 'layer/weights', 5
    else:
      builders.separable_conv2d(x, None, 3, depth_multiplier=2, scope='layer')
      layer, var, channels = 'layer/depthwise', 'layer/depthwise_weights', 3 * 2
    report = quantize.experimental_create_training_graph(per_channel_weights=True)
  return graph, report, layer, var, channels


@pytest.mark.parametrize('kind', ['conv2d', 'depthwise'])
def test_per_channel_weights(kind):
  graph, report, layer, var, channels = _per_channel_graph(kind)
  assert layer in report.quantized_weights
  fq = graph.get_operation_by_name('layer/weights_quant/' + PER_CHANNEL)
  assert not [op for op in _fake_quants(graph) if 'weights_quant' in op.name]
  variables = {v.op.name: v for v in graph.get_collection(v1.GraphKeys.GLOBAL_VARIABLES)}
  wmin, wmax = variables['layer/weights_quant/min'], variables['layer/weights_quant/max']
  assert wmin.shape.as_list() == [channels] and wmax.shape.as_list() == [channels]
  # The layer computes with the per-channel quantized weights, with its original shape.
  weight_input = graph.get_operation_by_name(layer).inputs[1]
  assert weight_input.shape == variables[var].shape
  with graph.as_default(), v1.Session() as sess:
    sess.run(v1.global_variables_initializer())
    q, w = sess.run([weight_input, variables[var]])
    lo, hi = sess.run([wmin, wmax])
  per_channel = w.reshape(-1, channels)  # [k*k*cin, cout] or [k*k, cin*mult]
  np.testing.assert_allclose(lo, np.minimum(per_channel.min(axis=0), 0), rtol=1e-6)
  np.testing.assert_allclose(hi, np.maximum(per_channel.max(axis=0), 0), rtol=1e-6)
  # Each channel sits on its own grid (narrow range: 254 steps), not on one shared one.
  step = (hi - lo) / 254.0
  qc = q.reshape(per_channel.shape)
  assert np.all(np.abs(qc - per_channel) <= step / 2 + 1e-6)
  for c in range(channels):
    levels = qc[:, c] / step[c]
    np.testing.assert_allclose(levels, np.round(levels), atol=1e-3)
  assert fq.get_attr('narrow_range')


# ---------------------------------------------------------------- checkpoint: train -> eval

def _model(images, is_training):
  """The same model code for both graphs; only the batch norms' mode differs."""
  x = builders.conv2d(images, 6, 3, stride=2, normalizer='fused', is_training=is_training,
                      scope='conv1')
  x = builders.separable_conv2d(x, None, 3, normalizer='unfused', is_training=is_training,
                                scope='dw')
  shortcut = x
  x = builders.conv2d(x, 6, 1, activation=None, scope='conv2')
  x = tf.nn.relu6(x + shortcut)
  x = tf.nn.avg_pool2d(x, 2, 2, 'VALID', name='pool')  # on its input's range: no new variables
  x = tf.reduce_mean(x, [1, 2], keepdims=True, name='gap')  # a range of its own
  x = tf.reshape(x, [-1, 6])
  return builders.fully_connected(x, 4, activation=None, scope='logits')


def test_training_checkpoint_restores_into_the_eval_graph(tmp_path):
  rng = np.random.RandomState(0)
  images_value = rng.uniform(0, 1, (4, 8, 8, 3)).astype(np.float32)
  labels_value = np.eye(4)[[0, 1, 2, 3]].astype(np.float32)
  path = str(tmp_path / 'model.ckpt')

  with tf.Graph().as_default() as train_graph:
    images = v1.placeholder(tf.float32, [4, 8, 8, 3])
    labels = v1.placeholder(tf.float32, [4, 4])
    logits = _model(images, is_training=True)
    train_report = quantize.create_training_graph()
    loss = tf.reduce_mean(tf.nn.softmax_cross_entropy_with_logits(labels=labels, logits=logits))
    with tf.control_dependencies(v1.get_collection(v1.GraphKeys.UPDATE_OPS)):
      train_op = v1.train.GradientDescentOptimizer(0.1).minimize(loss)
    quant_vars = [v for v in v1.global_variables()
                  if '_quant/' in v.op.name and v.op.name.endswith(('/min', '/max'))]
    with v1.Session() as sess:
      sess.run(v1.global_variables_initializer())
      sess.run(train_op, {images: images_value, labels: labels_value})
      saved = {v.op.name: sess.run(v) for v in quant_vars}
      v1.train.Saver(v1.global_variables()).save(sess, path)

  with tf.Graph().as_default() as eval_graph:
    images = v1.placeholder(tf.float32, [4, 8, 8, 3])
    logits = _model(images, is_training=False)
    eval_report = quantize.create_eval_graph()
    restored_vars = [v for v in v1.global_variables()
                     if '_quant/' in v.op.name and v.op.name.endswith(('/min', '/max'))]
    with v1.Session() as sess:
      v1.train.Saver(v1.global_variables()).restore(sess, path)
      out = sess.run(logits, {images: images_value})
      restored = {v.op.name: sess.run(v) for v in restored_vars}

  assert sorted(eval_report.quantized_weights) == sorted(train_report.quantized_weights)
  assert len(train_report.quantized_weights) == 4
  assert np.all(np.isfinite(out))
  assert sorted(restored) == sorted(saved)
  assert {'gap/activation_Mean_quant/min', 'gap/activation_Mean_quant/max'} <= set(saved)
  assert not [name for name in saved if name.startswith('pool/')]
  assert train_report.other_quantizers == eval_report.other_quantizers == [
      'pool/activation_AvgPool_quant', 'gap/activation_Mean_quant']
  for name, value in saved.items():
    np.testing.assert_array_equal(restored[name], value, err_msg=name)
  # A step really ran: the ranges are no longer their initial values.
  assert any(not np.allclose(np.abs(v), 6.0) for v in saved.values())
