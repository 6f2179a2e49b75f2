"""add_range_summaries: every quantizer's range reaches TensorBoard through the user's own
merge_all and FileWriter, read back here with summary_iterator, for each front end."""

import glob

import numpy as np
import pytest
import tensorflow as tf

import ascend_models
import dpu_models
from qat_rewrite import amct, decent_q, quantize
from qat_rewrite.range_summaries import add_range_summaries

v1 = tf.compat.v1
STEPS = 3


def _train_and_read(logdir, loss, feeds, update_ops=()):
  """STEPS steps, the merged summaries written after each; returns ({tag: [value per step]},
  {variable name: final value})."""
  with tf.control_dependencies(list(update_ops) + v1.get_collection(v1.GraphKeys.UPDATE_OPS)):
    train_op = v1.train.AdamOptimizer(1e-2).minimize(loss)
  merged = v1.summary.merge_all()
  with v1.Session() as sess, v1.summary.FileWriter(str(logdir)) as writer:
    sess.run(v1.global_variables_initializer())
    for step in range(STEPS):
      sess.run(train_op, feeds(step))
      writer.add_summary(sess.run(merged, feeds(step)), step)
    final = {v.op.name: sess.run(v) for v in v1.global_variables()}
  values = {}
  for path in glob.glob(str(logdir / "events.*")):
    for event in v1.train.summary_iterator(path):
      for value in event.summary.value:
        values.setdefault(value.tag, []).append(value.simple_value)
  return values, final


def test_contrib_ranges_are_written_and_follow_the_moving_average(tmp_path):
  rng = np.random.RandomState(0)
  with tf.Graph().as_default():
    images = v1.placeholder(tf.float32, [4, 8, 8, 3])
    net = v1.layers.conv2d(images, 4, 3, use_bias=False, name="conv")
    net = tf.nn.relu(v1.layers.batch_normalization(net, training=True, name="bn"))
    out = tf.identity(v1.layers.dense(tf.reshape(net, [4, -1]), 2, name="fc"), name="out")
    quantize.create_training_graph(quant_delay=0)
    tags = add_range_summaries()
    values, final = _train_and_read(
        tmp_path, tf.reduce_mean(tf.square(out)),
        lambda step: {images: rng.uniform(-1, 1, (4, 8, 8, 3))})
  assert set(tags) >= {"quant_ranges/conv/act_quant/max", "quant_ranges/conv/weights_quant/min"}
  assert set(values) == set(tags)
  moving = values["quant_ranges/conv/act_quant/max"]
  assert len(moving) == STEPS and moving[0] != moving[-1]  # a range still moving
  assert moving[-1] == pytest.approx(float(final["conv/act_quant/max"]))


def test_dpu_positions_are_the_most_frequent_so_far(tmp_path):
  config = decent_q.QuantizeConfig(input_nodes=dpu_models.INPUT_NODES,
                                   output_nodes=dpu_models.OUTPUT_NODES,
                                   input_shapes=dpu_models.INPUT_SHAPES,
                                   output_dir=str(tmp_path / "quantize_results"))
  batches = list(dpu_models.batches(STEPS))
  with tf.Graph().as_default():
    raw, labels, _, loss = dpu_models.build(is_training=True)
    decent_q.CreateQuantizeTrainingGraph(config=config)
    tags = add_range_summaries()
    values, final = _train_and_read(tmp_path / "logs", loss,
                                    lambda step: dict(zip((raw, labels), batches[step])))
  positions = [t for t in tags if t.endswith("/position")]
  assert "quant_ranges/net_in/aquant/position" in positions
  for tag in positions:
    histogram = final[tag[len("quant_ranges/"):-len("position")] + "pos_histogram"]
    assert values[tag][-1] == np.argmax(histogram) - 64  # the most frequent, as eval uses


def test_ascend_clips_are_written(tmp_path):
  config = str(tmp_path / "config.json")
  with tf.Graph().as_default() as graph:
    images, _, loss, labels = ascend_models.build(is_training=True)
    amct.create_quant_retrain_config(config, graph)
    amct.create_quant_retrain_model(graph, config, str(tmp_path / "record.txt"))
    tags = add_range_summaries()
    values, final = _train_and_read(tmp_path / "logs", loss, lambda step: dict(
        zip((images, labels), ascend_models.batch(step))))
  clip = "quant_ranges/conv1/Conv2D/ULQ/clip_max"
  assert clip in tags and values[clip][-1] == pytest.approx(float(
      final["conv1/Conv2D/ULQ/clip_max"]))


def test_a_graph_without_quantizers_is_refused():
  with tf.Graph().as_default():
    v1.layers.dense(v1.placeholder(tf.float32, [1, 2]), 2)
    with pytest.raises(ValueError, match="no quantizer variables.*after the training rewrite"):
      add_range_summaries()
