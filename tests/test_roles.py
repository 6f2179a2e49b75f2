"""The rewrite recognises its own ops by their role attribute (graph/roles.py), not by names a
user's op can share, and the role survives freezing."""

import tensorflow as tf

from qat_rewrite import quantize
from qat_rewrite.export import frozen
from qat_rewrite.graph import roles
from qat_rewrite.quant import pool_rounding

v1 = tf.compat.v1


def _pooled_eval_graph():
  """An eval graph whose AvgPool the rewrite nudges (`ties_away_from_zero`), beside a user's
  own Add that happens to have the same name in another scope."""
  graph = tf.Graph()
  with graph.as_default():
    x = v1.placeholder(tf.float32, [1, 4, 4, 3], name="x")
    y = tf.nn.relu(v1.layers.conv2d(x, 4, 3, padding="same", name="conv"))
    pooled = tf.nn.avg_pool2d(y, 2, 2, "VALID", name="pool")
    with tf.name_scope("user"):
      shifted = tf.add(pooled, 1.0, name="ties_away_from_zero")
    tf.identity(shifted, name="out")
    quantize.create_eval_graph(graph)
  return graph


def test_a_users_op_named_like_a_nudge_is_kept_and_the_nudge_is_dropped_from_a_frozen_graph():
  graph = _pooled_eval_graph()
  with graph.as_default(), v1.Session() as sess:
    sess.run(v1.global_variables_initializer())
    graph_def = v1.graph_util.convert_variables_to_constants(sess, graph.as_graph_def(), ["out"])
  nudges = [n.name for n in graph_def.node if pool_rounding.is_ties_nudge(n)]
  assert len(nudges) == 1 and not nudges[0].startswith("user/")
  converter_input = frozen.without_ties_nudges(graph_def, ["out"])
  names = {n.name for n in converter_input.node}
  assert "user/ties_away_from_zero" in names and nudges[0] not in names


def test_names_alone_make_no_role():
  with tf.Graph().as_default():
    x = v1.placeholder(tf.float32, [2], name="x")
    own = [tf.where(x > 0, x, -x, name="delayed_quant"),
           tf.reshape(x, [2], name="per_channel_restore"),
           tf.multiply(x, 2.0, name="unscale_weights"),
           tf.add(x, 1.0, name="requantize_xnnpack")]
    assert [roles.of(t.op) for t in own] == [None] * 4
    marked = roles.mark(tf.add(x, 1.0, name="anything"), "requantize/xnnpack")
    assert roles.of(marked.op) == "requantize/xnnpack"
    assert roles.parameter(marked.op, "requantize") == "xnnpack"
    assert roles.parameter(marked.op, "ties") is None
    node = next(n for n in tf.compat.v1.get_default_graph().as_graph_def().node
                if n.name == "anything")
    assert roles.of(node) == "requantize/xnnpack"
