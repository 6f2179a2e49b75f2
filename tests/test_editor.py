"""contrib's testRerouteTensor (common_test.py) and input_to_ops_test.py on our editor and GraphView."""
import tensorflow as tf

from qat_rewrite.graph.editor import reroute
from qat_rewrite.graph.view import GraphView

v1 = tf.compat.v1


def _input_names(op):
  return sorted(t.name for t in op.inputs)


def test_reroute_tensor():
  with tf.Graph().as_default():
    a, b, c, d = (tf.constant(1.0, name=n) for n in 'abcd')
    add_ac = tf.add(a, c, name='add_ac')
    add_ad = tf.add(a, d, name='add_ad')
    assert reroute(a, b, [add_ac.op]) == 1
    assert _input_names(add_ac.op) == ['b:0', 'c:0']
    assert _input_names(add_ad.op) == ['a:0', 'd:0']
    with v1.Session() as sess:
      assert sess.run([add_ac, add_ad]) == [2.0, 2.0]


def test_reroute_changes_every_edge_of_a_consumer():
  with tf.Graph().as_default():
    a, b = tf.constant(1.0, name='a'), tf.constant(5.0, name='b')
    square = tf.multiply(a, a, name='square')
    assert reroute(a, b, [square.op]) == 2
    assert [t.name for t in square.op.inputs] == ['b:0', 'b:0']


def test_reroute_only_moves_the_given_output():
  with tf.Graph().as_default():
    y0, y1 = tf.split(tf.constant([1.0, 2.0]), 2)
    z = tf.constant([7.0], name='z')
    both = tf.add(y0, y1, name='both')
    assert reroute(y1, z, [both.op]) == 1
    assert both.op.inputs[0] is y0 and both.op.inputs[1] is z


def test_reroute_leaves_non_consumers_alone():
  with tf.Graph().as_default():
    a, b, c = (tf.constant(1.0, name=n) for n in 'abc')
    other = tf.add(b, c, name='other')
    assert reroute(a, b, [other.op]) == 0
    assert _input_names(other.op) == ['b:0', 'c:0']


def test_no_consumers():
  with tf.Graph().as_default() as graph:
    x = tf.zeros([1, 4, 4, 3])
    assert GraphView(graph).consumers(x) == []
    assert GraphView(graph).is_dangling(x.op)


def test_one_consumer():
  with tf.Graph().as_default() as graph:
    x = tf.zeros([1, 4, 4, 3])
    y = tf.nn.relu6(x)
    view = GraphView(graph)
    assert view.consumers(x) == [y.op]
    assert not view.is_dangling(x.op)


def test_several_consumers():
  with tf.Graph().as_default() as graph:
    x = tf.zeros([1, 4, 4, 3])
    y = tf.nn.relu6(x)
    z = tf.add(x, y)
    w = tf.multiply(x, 2.0)
    view = GraphView(graph)
    assert set(view.consumers(x)) == {y.op, z.op, w.op}
    assert set(view.consumers(y)) == {z.op}
    assert set(view.op_consumers(x.op)) == {y.op, z.op, w.op}


def test_consumers_of_each_output():
  with tf.Graph().as_default() as graph:
    y0, y1 = tf.split(tf.zeros([4]), 2)
    neg = tf.negative(y1)
    view = GraphView(graph)
    assert view.consumers(y0) == []
    assert view.consumers(y1) == [neg.op]
    assert view.op_consumers(y0.op) == [neg.op]
