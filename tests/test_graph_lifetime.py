"""A process that rewrites many graphs (a sweep, a notebook, a service) must not keep them:
after `del` and `gc.collect()` no rewritten graph, and no rehearsal copy, stays alive."""

import gc

import tensorflow as tf

import ascend_models
import dpu_models
from qat_rewrite import amct, decent_q, quantize

v1 = tf.compat.v1


def _graphs_alive():
  gc.collect()
  return sum(isinstance(o, tf.Graph) for o in gc.get_objects())


def _contrib(training, _):
  with tf.Graph().as_default():
    images = v1.placeholder(tf.float32, [2, 8, 8, 3])
    net = v1.layers.conv2d(images, 4, 3, use_bias=False, name="conv")
    tf.nn.relu(v1.layers.batch_normalization(net, training=training, name="bn"))
    (quantize.create_training_graph if training else quantize.create_eval_graph)()


def _decent_q(training, tmp_path):
  config = decent_q.QuantizeConfig(input_nodes=dpu_models.INPUT_NODES,
                                   output_nodes=dpu_models.OUTPUT_NODES,
                                   input_shapes=dpu_models.INPUT_SHAPES,
                                   output_dir=str(tmp_path / "quantize_results"))
  with tf.Graph().as_default():
    dpu_models.build(is_training=training)
    (decent_q.CreateQuantizeTrainingGraph if training
     else decent_q.CreateQuantizeEvaluationGraph)(config=config)


def _amct(training, tmp_path):
  config = str(tmp_path / "config.json")
  with tf.Graph().as_default() as graph:
    _, _, loss, _ = ascend_models.build(is_training=training)
    amct.create_quant_retrain_config(config, graph)
    amct.create_quant_retrain_model(graph, config, str(tmp_path / "record.txt"))
    v1.train.GradientDescentOptimizer(0.1).minimize(loss)  # builds the clips' backward pass


def test_twenty_rewrites_leave_no_graph_alive(tmp_path):
  before = _graphs_alive()
  for rewrite, count in ((_contrib, 8), (_decent_q, 6), (_amct, 6)):
    for i in range(count):
      rewrite(i % 2 == 0, tmp_path)
  assert _graphs_alive() == before
