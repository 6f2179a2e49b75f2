"""contrib.quantize's fold_batch_norms_test.py scenarios: the ops a fold creates and their wiring.

Numeric equivalence of folded and unfolded graphs is tests/test_fold_batch_norm.py's job. Our fold
differs from contrib's on purpose, and the tests assert ours:

- It is in place. The layer op keeps its name and reads `<ctx>/mul_fold` (weights x
  gamma/sigma_moving) as its weights; contrib cloned it as `<op>_Fold` (`Conv2D_Fold`,
  `depthwise_Fold`, `BatchToSpaceND_Fold`) and left the original running for the batch statistics.
- Training: layer -> `<ctx>/post_conv_mul` -> `<ctx>/add_fold` (an AddV2; contrib had
  `correction_add` and an `Add`). The batch statistics come from the layer's own output, and the
  batch norm's moving-average updates are rerouted to them, so the original batch norm never runs.
  Eval, or a batch norm in inference mode: layer -> `<ctx>/add_fold`.
- The helper ops live under `<ctx>/BatchNorm_Fold/` for fused and unfused batch norm alike (contrib
  used the unfused batch norm's own `batchnorm_1/mul` and `batchnorm_1/sub`), and every layer kind
  gets a `BatchNorm_Fold/scale_reshape` of the multiplier (contrib: depthwise only).
- freeze_bn_delay: the moving-average updates read `<ctx>/BatchNorm_Fold/freeze_moving_mean` and
  `freeze_moving_var` (SelectV2 on `freeze_batch_norm/reached`), which pass the moving statistics
  themselves once frozen, so the averages stop moving. contrib instead switched the update's decay
  to 0 through a v1 cond (`freeze_moving_mean/Merge` as input 1 of `AssignMovingAvg/mul`).
"""
import pytest
import tensorflow as tf

import builders
from qat_rewrite.passes.fold_batch_norm import fold_batch_norms

RELUS = {'Relu6': tf.nn.relu6, 'Relu': tf.nn.relu}
# contrib's 16 tuples: (relu, with_bypass, has_scaling, fused, freeze_batch_norm_delay, identity)
CASES = [
    ('Relu6', False, False, False, 100, False),
    ('Relu', False, False, False, None, False),
    ('Relu6', True, False, False, 100, False),
    ('Relu', True, False, False, None, False),
    ('Relu6', False, True, False, 100, False),
    ('Relu', False, True, False, None, False),
    ('Relu6', True, True, False, 100, False),
    ('Relu', True, True, False, None, False),
    # Fused batch norm always has scaling (contrib's comment).
    ('Relu6', False, True, True, None, False),
    ('Relu', False, True, True, 100, False),
    ('Relu6', True, True, True, None, False),
    ('Relu', True, True, True, 100, False),
    ('Relu6', False, True, True, None, True),
    ('Relu', False, True, True, 100, True),
    ('Relu6', True, True, True, None, True),
    ('Relu', True, True, True, 100, True),
]
# layer kind -> (layer op name, default layer scope, identity name in contrib's test)
KINDS = {
    'conv2d': ('Conv2D', 'Conv', 'conv_out'),
    'fc': ('MatMul', 'fully_connected', 'fc_out'),
    'depthwise': ('depthwise', 'SeparableConv2d', 'sep_conv_out'),
    'atrous': ('depthwise', 'SeparableConv2d', 'sep_conv_out'),
}


def _case_id(case):
  relu, bypass, scaling, fused, freeze, identity = case
  return '-'.join([relu, 'bypass' if bypass else 'plain', 'scale' if scaling else 'noscale',
                   'fused' if fused else 'unfused', 'freeze%s' % freeze if freeze else 'nofreeze']
                  + (['identity'] if identity else []))


def _unique(cases):
  return sorted(set(cases), key=cases.index)


def _op(graph, name):
  return graph.get_operation_by_name(name)


def _variable_read(tensor):
  """The variable op that `tensor` reads, or None."""
  op = tensor.op
  if op.type in ('ReadVariableOp', 'Identity') and op.inputs:
    source = op.inputs[0].op
    if source.type in ('VarHandleOp', 'VariableV2'):
      return source.name
  return None


def _layer(kind, inputs, with_bypass, **kwargs):
  if kind == 'conv2d':
    return builders.conv2d(inputs, 3 if with_bypass else 8, 5, stride=1 if with_bypass else 2,
                           **kwargs)
  if kind == 'fc':
    return builders.fully_connected(inputs, 16 if with_bypass else 8, **kwargs)
  if kind == 'depthwise':
    return builders.separable_conv2d(inputs, None, 5, stride=1 if with_bypass else 2, **kwargs)
  return builders.separable_conv2d(inputs, None, 3, rate=2, **kwargs)


class Built:
  """A test graph before folding: the names contrib's test used, and the edges the fold changes."""

  def __init__(self, graph, inputs, name, layer_scope, layer, bn_output, outputs):
    self.graph, self.inputs, self.name, self.ctx = graph, inputs, name, layer_scope
    self.layer = layer
    self.weights = layer.inputs[1]
    self.layer_input = layer.inputs[0]
    self.bn_output = bn_output          # what the activation or bypass read before folding
    self.outputs = outputs              # the ops that read it
    self.updates = []  # the moving-average updates' `sub` ops, if the BN has any
    if builders.has_op(graph, name + '/BatchNorm/AssignMovingAvg'):
      self.updates = [_op(graph, '%s/BatchNorm/AssignMovingAvg%s/sub' % (name, suffix))
                      for suffix in ('', '_1')]


def _build(kind, relu, with_bypass, has_scaling, fused, identity, unknown_shape=False,
           is_training=True):
  """contrib's graph: inputs -> layer + BN [-> bypass add] -> relu, under `test` or `test/test2`."""
  graph = tf.Graph()
  with graph.as_default():
    if kind == 'fc':
      inputs = builders.fc_input(depth=16)
    elif unknown_shape:
      inputs = builders.conv_input(size=None, kind='placeholder')
    else:
      inputs = builders.conv_input()
    relu_fn = RELUS[relu]
    activation = None if with_bypass else relu_fn
    name = 'test/test2' if with_bypass else 'test'
    layer_op, default_scope, identity_name = KINDS[kind]
    if identity:
      # The layer without bias or BN, an Identity, then the BN; the layer is `<name>/<default>`.
      with graph.name_scope(name):
        node = _layer(kind, inputs, with_bypass, activation=None, use_bias=False)
        node = tf.identity(node, name=identity_name)
        node = builders.batch_norm(node, fused=fused, scale=has_scaling, decay=1.0 - 0.003,
                                   is_training=is_training)
        if activation is not None:
          node = activation(node)
      layer_scope = name + '/' + default_scope
    else:
      node = _layer(kind, inputs, with_bypass, activation=activation,
                    normalizer='fused' if fused else 'unfused', bn_scale=has_scaling,
                    bn_decay=1.0 - 0.003, is_training=is_training, scope=name)
      layer_scope = name
    if with_bypass:
      node = tf.add(inputs, node, name='test/AddV2')
      relu_fn(node, name='test/' + relu)
    output = _op(graph, 'test/AddV2' if with_bypass else 'test/' + relu)
    bn_output = output.inputs[1] if with_bypass else output.inputs[0]
  layer = _op(graph, layer_scope + '/' + layer_op)
  return Built(graph, inputs, name, layer_scope, layer, bn_output,
               sorted(c.name for c in bn_output.consumers()))


def _fold(built, training=True, freeze=None):
  folded, unfoldable, _ = fold_batch_norms(built.graph, training, freeze)
  assert list(folded) == [built.layer.name], (folded, unfoldable)
  assert not unfoldable
  return folded


def _assert_folded_weights(built, kind):
  """`<ctx>/mul_fold` = weights x `BatchNorm_Fold/scale_reshape`, read in place by the layer."""
  g, c = built.graph, built.ctx
  mul_fold = _op(g, c + '/mul_fold')
  assert mul_fold.type == 'Mul'
  assert sorted(t.name for t in mul_fold.inputs) == sorted(
      [built.weights.name, c + '/BatchNorm_Fold/scale_reshape:0'])
  assert mul_fold.outputs[0].shape.as_list() == built.weights.shape.as_list()
  # In place: contrib fed mul_fold to a `<op>_Fold` clone.
  assert built.layer.inputs[1] is mul_fold.outputs[0]
  assert built.layer.inputs[0] is built.layer_input
  assert not [op.name for op in g.get_operations() if op.name.endswith('_Fold')]

  scale_reshape = _op(g, c + '/BatchNorm_Fold/scale_reshape')
  assert scale_reshape.type == 'Reshape'
  assert [t.name for t in scale_reshape.inputs] == [
      c + '/BatchNorm_Fold/mul:0', c + '/BatchNorm_Fold/scale_reshape/shape:0']
  assert [c.name for c in scale_reshape.outputs[0].consumers()] == [mul_fold.name]
  if kind in ('depthwise', 'atrous'):  # [in_channels, depth_multiplier]: the weights' last axes
    assert scale_reshape.outputs[0].shape.as_list() == built.weights.shape.as_list()[2:]
  multiplier = _op(g, c + '/BatchNorm_Fold/mul')
  gamma = built.name + '/BatchNorm/gamma'
  reads = {_variable_read(t) for t in multiplier.inputs}
  if builders.has_op(g, gamma):
    assert gamma in reads, 'the fold must scale by this layer\'s own gamma, not %s' % reads


def _layer_output(built, kind):
  """The layer's output as the fold sees it: after the existing BatchToSpaceND for atrous conv."""
  if kind != 'atrous':
    return built.layer.outputs[0]
  batch_to_space = _op(built.graph, built.ctx + '/depthwise/BatchToSpaceND')
  assert batch_to_space.inputs[0] is built.layer.outputs[0]
  assert built.layer.inputs[0].op.name == built.ctx + '/depthwise/SpaceToBatchND'
  return batch_to_space.outputs[0]


def _assert_rerouted(built, add_fold, op_type='AddV2'):
  """The fold output replaced the batch norm output for all its consumers; the batch norm dangles."""
  assert add_fold.type == op_type  # contrib: Add
  assert sorted(c.name for c in add_fold.outputs[0].consumers()) == built.outputs
  assert built.bn_output.consumers() == []
  assert not [op.name for op in built.graph.get_operations() if '//' in op.name]


def _from_fold(tensor, built):
  return tensor.op.name.startswith(built.ctx + '/BatchNorm_Fold/')


def _assert_training_fold(built, kind, freeze):
  """The moving averages follow the folded layer's statistics.

  Without freeze: layer -> post_conv_mul (÷ scale) -> BatchNorm_Fold/FusedBatchNorm, one fused
  batch norm with batch statistics. With freeze: layer -> post_conv_mul -> add_fold, whose
  scale and offset switch to the moving statistics.
  """
  g, c = built.graph, built.ctx
  _assert_folded_weights(built, kind)
  post = _op(g, c + '/post_conv_mul')
  assert post.type == 'Mul'
  assert post.inputs[0] is _layer_output(built, kind)
  assert _from_fold(post.inputs[1], built)
  mean, var = (op.inputs[1] for op in built.updates)
  if freeze is None:
    fold_out = _op(g, c + '/BatchNorm_Fold/FusedBatchNorm')
    bn = fold_out if fold_out.type == 'FusedBatchNormV3' else _op(g, c + '/BatchNorm_Fold/FusedBatchNorm_4d')
    assert bn.type == 'FusedBatchNormV3' and bn.get_attr('is_training')
    to_bn = bn.inputs[0].op
    assert to_bn is post or (to_bn.type == 'Reshape' and to_bn.inputs[0] is post.outputs[0])
    _assert_rerouted(built, fold_out, fold_out.type)
    assert _from_fold(mean, built) and _from_fold(var, built)
    assert not builders.has_op(g, 'freeze_batch_norm/reached')
    return
  add_fold = _op(g, c + '/add_fold')
  assert add_fold.inputs[0] is post.outputs[0]
  assert _from_fold(add_fold.inputs[1], built)
  _assert_rerouted(built, add_fold)
  # contrib: input 1 of `AssignMovingAvg/mul` (the decay) came from `freeze_moving_mean/Merge`.
  assert mean.name == c + '/BatchNorm_Fold/freeze_moving_mean:0'
  assert var.name == c + '/BatchNorm_Fold/freeze_moving_var:0'
  reached = g.get_tensor_by_name('freeze_batch_norm/reached:0')
  assert reached.dtype == tf.bool
  # Once frozen, the scale and offset switch to the moving statistics too.
  for switch in (mean.op, var.op, post.inputs[1].op, add_fold.inputs[1].op):
    assert switch.type == 'SelectV2' and switch.inputs[0] is reached
  delay = _op(g, 'freeze_batch_norm/delay')
  assert delay.outputs[0].dtype == tf.int64 and delay.outputs[0] in list(reached.op.inputs)
  assert tf.make_ndarray(delay.get_attr('value')) == freeze


def _assert_idempotent(built, freeze):
  before = built.graph.as_graph_def().SerializeToString(deterministic=True)
  folded, unfoldable, _ = fold_batch_norms(built.graph, True, freeze)
  assert not folded and not unfoldable
  assert built.graph.as_graph_def().SerializeToString(deterministic=True) == before


def _run_training_case(kind, case, unknown_shape=False):
  relu, with_bypass, has_scaling, fused, freeze, identity = case
  built = _build(kind, relu, with_bypass, has_scaling, fused, identity, unknown_shape)
  assert len(built.updates) == 2
  _fold(built, True, freeze)
  _assert_training_fold(built, kind, freeze)
  _assert_idempotent(built, freeze)


@pytest.mark.parametrize('case', CASES, ids=_case_id)
def test_fold_conv2d(case):
  """testFoldConv2d."""
  _run_training_case('conv2d', case)


@pytest.mark.parametrize('case', _unique([c[:5] + (False,) for c in CASES]), ids=_case_id)
def test_fold_conv2d_unknown_spatial_shape(case):
  """testFoldConv2dUnknownShape: input (5, None, None, 3), never an identity."""
  _run_training_case('conv2d', case, unknown_shape=True)


@pytest.mark.parametrize('case', _unique([c[:5] + (c[3],) for c in CASES]), ids=_case_id)
def test_fold_fully_connected(case):
  """testFoldFullyConnectedLayer: contrib inserts the identity exactly when the BN is fused.

  A fused BN on the 2-D MatMul output runs as Reshape [-1, 1, 1, C] -> FusedBatchNormV3 -> Reshape
  back; the fold replaces the output of the reshape back.
  """
  _run_training_case('fc', case)


@pytest.mark.parametrize('case', CASES, ids=_case_id)
def test_fold_depthwise_conv2d(case):
  """testFoldDepthwiseConv2d."""
  _run_training_case('depthwise', case)


@pytest.mark.parametrize('case', CASES, ids=_case_id)
def test_fold_atrous_conv2d(case):
  """testFoldAtrousConv2d: SpaceToBatchND -> depthwise -> BatchToSpaceND, folded after the latter.

  contrib cloned the depthwise and the BatchToSpaceND (`depthwise_Fold`, `BatchToSpaceND_Fold`).
  """
  _run_training_case('atrous', case)


@pytest.mark.parametrize('freeze', [None, 100], ids=['nofreeze', 'freeze'])
@pytest.mark.parametrize('fused', [False, True], ids=['unfused', 'fused'])
def test_fold_multiple_layers_uses_each_layers_own_batch_norm(fused, freeze):
  """testMultipleLayerConv2d: batch norms in scopes other than their layers' (contrib found them by
  name, scoring scope overlap), under `variable_scope('topnet/testnet')`.

  layer1 = conv `testnet/layer1` (bias, no BN) -> BN `layer1` -> relu;
  layer2 = conv `testnet/layer2` with its own BN and relu -> BN `layer2` -> relu.
  Both convs fold; the BN after layer2's relu has no layer to fold into.
  """
  g = tf.Graph()
  with g.as_default():
    inputs = builders.conv_input()
    with tf.compat.v1.variable_scope('topnet/testnet', values=[inputs]):
      layer1 = builders.conv2d(inputs, 3, 5, activation=None, scope='testnet/layer1')
      layer1 = builders.batch_norm(layer1, fused=fused, scope='layer1')
      layer1 = tf.nn.relu(layer1)
      layer2 = builders.conv2d(layer1, 6, 5, activation=tf.nn.relu,
                               normalizer='fused' if fused else 'unfused', scope='testnet/layer2')
      layer2 = builders.batch_norm(layer2, fused=fused, scope='layer2')
      tf.nn.relu(layer2)
  scope = 'topnet/testnet/testnet/layer2'
  conv = _op(g, scope + '/Conv2D')
  relu = _op(g, scope + '/Relu')
  built = Built(g, inputs, scope, scope, conv, relu.inputs[0], [relu.name])
  folded, unfoldable, _ = fold_batch_norms(g, True, freeze)
  bn_op = 'FusedBatchNormV3' if fused else 'batchnorm'
  assert folded == {'topnet/testnet/testnet/layer1/Conv2D': 'topnet/testnet/layer1/' + bn_op,
                    scope + '/Conv2D': scope + '/BatchNorm/' + bn_op}
  assert not unfoldable
  assert conv.inputs[0] is layer1  # layer1's relu output
  _assert_training_fold(built, 'conv2d', freeze)

  # layer1's fold output (add_fold, or the fused batch norm without freeze) now feeds the relu.
  layer1_ctx = 'topnet/testnet/testnet/layer1'
  fold_out = layer1_ctx + ('/add_fold' if freeze else '/BatchNorm_Fold/FusedBatchNorm')
  assert _op(g, fold_out).outputs[0] is layer1.op.inputs[0]
  reads = {_variable_read(t) for t in _op(g, layer1_ctx + '/BatchNorm_Fold/mul').inputs}
  assert 'topnet/testnet/layer1/gamma' in reads
  updates = _op(g, 'topnet/testnet/layer1/AssignMovingAvg/sub').inputs[1]
  assert updates.op.name.startswith(layer1_ctx + '/BatchNorm_Fold/')
  # The last BN (after layer2's relu) still normalizes with its own statistics.
  last = _op(g, 'topnet/testnet/layer2/AssignMovingAvg/sub').inputs[1]
  assert last.op.name.startswith('topnet/testnet/layer2/') and not _from_fold(last, built)


@pytest.mark.parametrize('fused', [False, True], ids=['unfused', 'fused'])
@pytest.mark.parametrize('kind', list(KINDS))
@pytest.mark.parametrize('mode', ['eval_rewrite', 'inference_bn'])
def test_fold_with_moving_statistics_is_layer_then_add_fold(mode, kind, fused):
  """Not in contrib's test: an eval fold, or a training fold of a BN built in inference mode, uses
  the moving statistics only: layer -> add_fold (bias = BatchNorm_Fold/bias), no correction and no
  freeze switch. An eval fold of a BN built in training mode turns its moving-average updates into
  no-ops (they read the moving statistics themselves): evaluating must not change the model."""
  training = mode == 'inference_bn'
  built = _build(kind, 'Relu', False, True, fused, False, is_training=mode == 'eval_rewrite')
  _fold(built, training, freeze=100 if training else None)
  _assert_folded_weights(built, kind)
  g, c = built.graph, built.ctx
  add_fold = _op(g, c + '/add_fold')
  assert [t.name for t in add_fold.inputs] == [_layer_output(built, kind).name,
                                               c + '/BatchNorm_Fold/bias:0']
  _assert_rerouted(built, add_fold)
  assert not builders.has_op(g, c + '/post_conv_mul')
  assert not builders.has_op(g, 'freeze_batch_norm/reached')
  if training:
    assert built.updates == []  # an inference-mode BN has none
  else:
    assert len(built.updates) == 2
    for sub in built.updates:  # moving -= (moving - moving) * decay
      assert _variable_read(sub.inputs[1]) == _variable_read(sub.inputs[0]) is not None
