"""contrib's graph_matcher_test.py scenarios on our pattern language and matcher, plus the rules
contrib's matcher lacked: Optional, roles that must bind one op, unordered inputs that backtrack
cleanly, and largest-first non-overlapping selection."""
import pytest
import tensorflow as tf

import builders
from qat_rewrite.graph.matcher import find_matches, match_op
from qat_rewrite.graph.pattern import Any, OneOf, Op, Optional

v1 = tf.compat.v1
ADD = ('Add', 'AddV2')


def _all_matches(pattern, graph):
  return [m for op in graph.get_operations() for m in match_op(pattern, op)]


# ---------------------------------------------------------------- contrib's 5 scenarios

def test_conv_layer():
  """Really runs now (contrib's test returned before its assertions)."""
  with tf.Graph().as_default() as graph:
    inputs = v1.placeholder(tf.float32, [8, 5, 5, 3], name='inputs')
    output = builders.conv2d(inputs, 16, 3, padding='VALID', activation=tf.nn.relu,
                             normalizer='fused', is_training=True)
  pattern = Op('Relu', [Op('FusedBatchNormV3', [Op('Conv2D', [Any(role='inputs'), Any()]),
                                                Any(), Any(), Any(), Any()])], role='relu')
  matches = _all_matches(pattern, graph)
  assert len(matches) == 1
  m = matches[0]
  assert m.tensor('relu') is output
  assert m.tensor('inputs') is inputs
  assert m.op('inputs') is inputs.op
  assert m.root is output.op


def test_multiple_outputs():
  with tf.Graph().as_default() as graph:
    x = v1.placeholder(tf.float32, [4], name='x')
    y = v1.placeholder(tf.float32, [8], name='y')
    z = v1.placeholder(tf.float32, [4], name='z')
    y0, y1 = tf.split(y, 2)
    tf.add(x, y0)
    tf.subtract(y1, z)
  matches = _all_matches(Op('Sub', [Any(role='y1'), Any()]), graph)
  assert len(matches) == 1
  assert matches[0].op('y1') is y0.op  # the Split op
  assert matches[0].tensor('y1') is y1
  assert matches[0].tensor('y1') is not y0


def test_oneof_type_pattern():
  with tf.Graph().as_default() as graph:
    x = v1.placeholder(tf.float32, [], name='x')
    y = v1.placeholder(tf.float32, [], name='y')
    z = v1.placeholder(tf.float32, [], name='z')
    plus = x + y
    minus = y - z
  pattern = Op(('AddV2', 'Add', 'Sub'), [Any(), Any()], role='op')
  assert [m.op('op') for m in _all_matches(pattern, graph)] == [plus.op, minus.op]
  assert [m.op('op') for m in find_matches(pattern, graph.get_operations(), 'op')] == [
      plus.op, minus.op]


def _transpose_pattern():
  reshape = Op('Reshape', role='reshape')
  return OneOf(
      Op('Transpose', [Op('Slice', [reshape, Any(), Any()], role='slice'), Any()],
         role='transpose'),
      Op('Transpose', [reshape, Any()], role='transpose'))


def test_oneof_pattern_without_slice():
  with tf.Graph().as_default() as graph:
    x = v1.placeholder(tf.float32, [4, 4], name='x')
    reshape = tf.reshape(x, [2, 8])
    transpose = tf.transpose(reshape)
  matches = _all_matches(_transpose_pattern(), graph)
  assert len(matches) == 1
  m = matches[0]
  assert m.tensor('reshape') is reshape
  assert m.tensor('slice') is None and not m.has('slice')
  assert m.op('transpose') is transpose.op


def test_oneof_pattern_with_slice():
  with tf.Graph().as_default() as graph:
    x = v1.placeholder(tf.float32, [4, 4], name='x')
    reshape = tf.reshape(x, [2, 8])
    sliced = tf.slice(reshape, [0, 0], [-1, 4])
    transpose = tf.transpose(sliced)
  matches = _all_matches(_transpose_pattern(), graph)
  assert len(matches) == 1
  m = matches[0]
  assert m.tensor('reshape') is reshape
  assert m.tensor('slice') is sliced
  assert m.op('transpose') is transpose.op


def test_ordered_pattern():
  with tf.Graph().as_default() as graph:
    x = v1.placeholder(tf.float32, [], name='x')
    plus = x + tf.constant(1.0)
  def matched(inputs, ordered):
    pattern = Op(ADD, [Op(t) for t in inputs], role='add', ordered=ordered)
    return [m.op('add') for m in _all_matches(pattern, graph)]
  assert matched(['Const', 'Placeholder'], ordered=False) == [plus.op]
  assert matched(['Placeholder', 'Const'], ordered=False) == [plus.op]
  assert matched(['Placeholder', 'Const'], ordered=True) == [plus.op]
  assert matched(['Const', 'Placeholder'], ordered=True) == []


# ---------------------------------------------------------------- beyond contrib

def _conv_chain(bias, activation):
  graph = tf.Graph()
  with graph.as_default():
    x = v1.placeholder(tf.float32, [1, 4, 4, 3], name='x')
    w = tf.ones([1, 1, 3, 2])
    y = tf.nn.conv2d(x, w, 1, 'SAME', name='conv')
    if bias:
      y = tf.nn.bias_add(y, tf.ones([2]), name='bias')
    if activation:
      y = activation(y, name='act')
  return graph


def _relu_after_optional_bias():
  conv = Op('Conv2D', role='conv')
  return Op('Relu', [Optional(Op('BiasAdd', [conv, Any(role='bias_value')], role='bias'))],
            role='act')


def test_optional_present():
  graph = _conv_chain(bias=True, activation=tf.nn.relu)
  matches = match_op(_relu_after_optional_bias(), graph.get_operation_by_name('act'))
  assert len(matches) == 1
  m = matches[0]
  assert m.has('bias') and m.op('bias').name == 'bias'
  assert m.op('conv').name == 'conv'
  assert m.ops == {graph.get_operation_by_name(n) for n in ('act', 'bias', 'conv')}


def test_optional_skipped():
  graph = _conv_chain(bias=False, activation=tf.nn.relu)
  matches = match_op(_relu_after_optional_bias(), graph.get_operation_by_name('act'))
  assert len(matches) == 1
  assert not matches[0].has('bias') and not matches[0].has('bias_value')
  assert matches[0].op('conv').name == 'conv'


def test_optional_does_not_skip_to_anything_else():
  graph = _conv_chain(bias=False, activation=None)
  with graph.as_default():
    tf.nn.relu(tf.identity(graph.get_tensor_by_name('conv:0')), name='act')
  assert match_op(_relu_after_optional_bias(), graph.get_operation_by_name('act')) == []


def test_optional_with_explicit_skip():
  graph = _conv_chain(bias=False, activation=tf.nn.relu)
  pattern = Op('Relu', [Optional(Op('BiasAdd', [Any(), Any()], role='bias'),
                                 skip=Op(('Conv2D', 'DepthwiseConv2dNative'), role='layer'))])
  matches = match_op(pattern, graph.get_operation_by_name('act'))
  assert len(matches) == 1 and matches[0].op('layer').name == 'conv'
  with_bias = _conv_chain(bias=True, activation=tf.nn.relu)
  matches = match_op(pattern, with_bias.get_operation_by_name('act'))
  assert len(matches) == 1 and matches[0].has('bias') and not matches[0].has('layer')


def test_role_used_twice_must_bind_the_same_op():
  with tf.Graph().as_default() as graph:
    x = v1.placeholder(tf.float32, [3], name='x')
    y = v1.placeholder(tf.float32, [3], name='y')
    square = tf.multiply(x, x, name='square')
    product = tf.multiply(x, y, name='product')
  pattern = Op('Mul', [Any(role='v'), Any(role='v')], role='mul')
  matches = _all_matches(pattern, graph)
  assert [m.op('mul') for m in matches] == [square.op]
  assert matches[0].tensor('v') is x
  assert match_op(pattern, product.op) == []


def test_role_consistency_across_depth():
  """A tree pattern describes a DAG: x - mean(x) only when both branches see the same x."""
  with tf.Graph().as_default() as graph:
    x = v1.placeholder(tf.float32, [3], name='x')
    y = v1.placeholder(tf.float32, [3], name='y')
    centred = tf.subtract(x, tf.reduce_mean(x), name='centred')
    other = tf.subtract(x, tf.reduce_mean(y), name='other')
  pattern = Op('Sub', [Op('Placeholder', role='x'), Op('Mean', [Op('Placeholder', role='x'), Any()])],
               role='sub')
  assert [m.op('sub') for m in _all_matches(pattern, graph)] == [centred.op]
  assert match_op(pattern, other.op) == []


def test_unordered_inputs_bind_roles_by_what_matched():
  with tf.Graph().as_default():
    x = v1.placeholder(tf.float32, [], name='x')
    c = tf.constant(2.0, name='c')
    left = tf.subtract(c, x, name='left')
    right = tf.subtract(x, c, name='right')
  pattern = Op('Sub', [Op('Const', role='const'), Op('Placeholder', role='input')], ordered=False)
  for op in (left.op, right.op):
    matches = match_op(pattern, op)
    assert len(matches) == 1
    assert matches[0].op('const') is c.op and matches[0].op('input') is x.op
  ordered = Op('Sub', [Op('Const'), Op('Placeholder')])
  assert len(match_op(ordered, left.op)) == 1 and match_op(ordered, right.op) == []


def test_unordered_inputs_do_not_leak_bindings_of_a_failed_order():
  """contrib's matcher kept bindings from a permutation that failed half-way."""
  with tf.Graph().as_default():
    x = v1.placeholder(tf.float32, [], name='x')
    y = v1.placeholder(tf.float32, [], name='y')
    total = tf.add(y, x, name='total')
  pattern = Op(ADD, [Op('Placeholder', role='p'),
                     Op('Placeholder', role='q', where=lambda op: op.name == 'y')],
               ordered=False)
  # Inputs are (y, x): the first order binds p=y, then fails on q=x; only p=x, q=y matches.
  matches = match_op(pattern, total.op)
  assert len(matches) == 1
  assert matches[0].op('p') is x.op and matches[0].op('q') is y.op


def test_where_predicates_on_ops_and_tensors():
  with tf.Graph().as_default():
    x = v1.placeholder(tf.float32, [2, 3], name='x')
    b = tf.constant([1.0, 2.0, 3.0], name='b')
    total = tf.add(x, b, name='total')
  vector = Any(role='vector', where=lambda t: t.shape.rank == 1)
  assert len(match_op(Op(ADD, [Any(), vector]), total.op)) == 1
  assert match_op(Op(ADD, [vector, Any()]), total.op) == []
  assert match_op(Op(ADD, where=lambda op: op.name == 'other'), total.op) == []
  assert match_op(Op(ADD, where=lambda op: op.name == 'total'), total.op)[0].root is total.op


def test_input_count_must_match():
  with tf.Graph().as_default():
    x = v1.placeholder(tf.float32, [2], name='x')
    total = tf.add(x, x)
  assert match_op(Op(ADD, [Any()]), total.op) == []
  assert match_op(Op(ADD, [Any(), Any(), Any()]), total.op) == []
  assert len(match_op(Op(ADD), total.op)) == 1  # inputs=None accepts any inputs


def test_match_through_a_chosen_output():
  with tf.Graph().as_default():
    y = v1.placeholder(tf.float32, [8], name='y')
    y0, y1 = tf.split(y, 2)
  pattern = Op('Split', role='split')
  assert match_op(pattern, y0.op)[0].tensor('split') is y0
  assert match_op(pattern, y0.op, output_index=1)[0].tensor('split') is y1


def test_largest_match_wins_whatever_the_op_order():
  """conv -> bias -> relu matches as conv, conv+bias and conv+bias+relu; the largest is kept."""
  graph = _conv_chain(bias=True, activation=tf.nn.relu)
  layer = Op('Conv2D', role='layer')
  with_bias = Optional(Op('BiasAdd', [layer, Any()], role='bias'))
  pattern = OneOf(Op('Relu', [with_bias], role='act'), with_bias)
  ops = graph.get_operations()
  assert len([m for op in ops for m in match_op(pattern, op)]) == 3
  for order in (ops, list(reversed(ops))):
    matches = find_matches(pattern, order, 'layer')
    assert len(matches) == 1
    assert matches[0].op('act').name == 'act' and matches[0].op('bias').name == 'bias'


def test_matches_do_not_overlap():
  """a = x + y; b = a + z. `Add(Optional(Add), *)` matches {b, a}, {b} and {a}: only {b, a} survives."""
  with tf.Graph().as_default() as graph:
    x, y, z = (v1.placeholder(tf.float32, [], name=n) for n in 'xyz')
    a = tf.add(x, y, name='a')
    b = tf.add(a, z, name='b')
  pattern = Op(ADD, [Optional(Op(ADD, [Any(), Any()], role='inner'), skip=Any()), Any()],
               role='outer')
  matches = find_matches(pattern, graph.get_operations(), 'outer')
  assert len(matches) == 1
  assert matches[0].op('outer') is b.op and matches[0].op('inner') is a.op


def test_matches_come_back_in_the_order_of_the_ops_given():
  with tf.Graph().as_default() as graph:
    x = v1.placeholder(tf.float32, [1, 4, 4, 3], name='x')
    first = tf.nn.relu(tf.nn.conv2d(x, tf.ones([1, 1, 3, 3]), 1, 'SAME', name='first'))
    second = tf.nn.conv2d(first, tf.ones([1, 1, 3, 3]), 1, 'SAME', name='second')
  layer = Op('Conv2D', role='layer')
  pattern = OneOf(Op('Relu', [layer], role='act'), layer)
  first_conv = graph.get_operation_by_name('first')
  matches = find_matches(pattern, graph.get_operations(), 'layer')
  assert [m.op('layer') for m in matches] == [first_conv, second.op]
  assert matches[0].has('act') and not matches[1].has('act')
  matches = find_matches(pattern, list(reversed(graph.get_operations())), 'layer')
  assert [m.op('layer') for m in matches] == [second.op, first_conv]
  assert matches[1].has('act')


def test_wildcard_inputs_are_not_part_of_the_match():
  graph = _conv_chain(bias=True, activation=None)
  m = match_op(Op('BiasAdd', [Op('Conv2D'), Any(role='b')], role='bias'),
               graph.get_operation_by_name('bias'))[0]
  assert graph.get_operation_by_name('x') not in m.ops
  assert m.op('b') is not None and m.op('b') not in m.ops


@pytest.mark.parametrize('types', ['Conv2D', ('Conv2D',), ['Conv2D', 'MatMul']])
def test_types_accept_a_string_or_a_sequence(types):
  graph = _conv_chain(bias=False, activation=None)
  assert len(match_op(Op(types), graph.get_operation_by_name('conv'))) == 1
