"""Training-only ops (dropout, stochastic depth) between layers: the training and eval rewrites
place the same quantizers, so the eval graph restores the training checkpoint and quantizes
what training learned (contrib, decent_q)."""

import numpy as np
import pytest
import tensorflow as tf
import tf_keras

from qat_rewrite import decent_q, quantize
from qat_rewrite.compat import install_tf_slim_shim

v1 = tf.compat.v1


def _tf1_dropout(x, keep_prob):
  """TF 1.x's tf.nn.dropout: x / keep_prob * floor(keep_prob + uniform)."""
  mask = tf.floor(keep_prob + tf.random.uniform(tf.shape(x)))
  return tf.math.divide(x, keep_prob) * mask


def _slim_dropout(x, is_training):
  install_tf_slim_shim()
  import tf_slim  # pylint: disable=import-outside-toplevel
  return tf_slim.dropout(x, 0.5, is_training=is_training, scope="drop")


DROPOUTS = {
    "tf.nn.dropout": lambda x, t: tf.nn.dropout(x, rate=0.5) if t else x,
    "tf1_floor_mask": lambda x, t: _tf1_dropout(x, 0.5) if t else x,
    "keras": lambda x, t: tf_keras.layers.Dropout(0.5)(x, training=t),
    "keras_stochastic_depth": lambda x, t: tf_keras.layers.Dropout(
        0.2, noise_shape=(None, 1, 1, 1))(x, training=t),
    "slim": _slim_dropout,
}


def _model(dropout, is_training):
  images = v1.placeholder(tf.float32, [None, 8, 8, 3], name="net_in")
  x = v1.layers.conv2d(images, 4, 3, padding="same", activation=tf.nn.relu, name="conv1")
  x = DROPOUTS[dropout](x, is_training)
  x = v1.layers.conv2d(x, 4, 3, padding="same", activation=tf.nn.relu, name="conv2")
  x = DROPOUTS[dropout](tf.reshape(x, [-1, 8 * 8 * 4]), is_training) if dropout != (
      "keras_stochastic_depth") else tf.reshape(x, [-1, 8 * 8 * 4])
  tf.identity(v1.layers.dense(x, 3, name="logits"), name="net_out")


def _quantizers(rewrite, dropout, is_training):
  with tf.Graph().as_default() as graph:
    _model(dropout, is_training)
    rewrite(graph, is_training)
    return sorted(v.op.name for v in v1.global_variables()
                  if v.op.name.endswith(("/max", "/pos_histogram")))


def _contrib(graph, is_training):
  options = dict(symmetric=True, per_channel_weights=True, quantize_inputs=True)
  (quantize.experimental_create_training_graph if is_training
   else quantize.experimental_create_eval_graph)(graph, **options)


def _decent_q(graph, is_training):
  config = decent_q.QuantizeConfig(input_nodes=["net_in"], output_nodes=["net_out"],
                                   input_shapes=[[-1, 8, 8, 3]])
  (decent_q.CreateQuantizeTrainingGraph if is_training
   else decent_q.CreateQuantizeEvaluationGraph)(graph, config)


@pytest.mark.parametrize("rewrite", [_contrib, _decent_q], ids=["contrib", "decent_q"])
@pytest.mark.parametrize("dropout", sorted(DROPOUTS))
def test_training_and_eval_place_the_same_quantizers_around_dropout(rewrite, dropout):
  training = _quantizers(rewrite, dropout, True)
  assert training == _quantizers(rewrite, dropout, False)
  assert not [name for name in training if "drop" in name.lower()]
  assert len(training) >= 5


def test_a_layer_after_dropout_reads_its_input_quantizer_s_grid():
  """conv2 reads conv1's act_quant through the dropout: no input_quant of its own, and its bias
  is rounded on the grid of conv1's act_quant as in eval."""
  with tf.Graph().as_default() as graph:
    _model("tf.nn.dropout", True)
    _contrib(graph, True)
    names = {op.name for op in graph.get_operations()}
  assert "conv2/input_quant/FakeQuantWithMinMaxVars" not in names
  bias_scale = graph.get_operation_by_name("conv2/bias_quant/input_scale")
  assert "conv1/act_quant/" in bias_scale.inputs[0].op.name + bias_scale.inputs[0].op.inputs[0].name
  with v1.Session(graph=graph) as sess:
    sess.run(v1.global_variables_initializer())
    out = sess.run("net_out:0", {"net_in:0": np.ones((2, 8, 8, 3), np.float32)})
  assert out.shape == (2, 3)
