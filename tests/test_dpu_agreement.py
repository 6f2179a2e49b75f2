"""deploy_model.pb means what quantize_eval_model.pb means: the integer reference runner, fed the
same images, gives the eval model's integers on at least 99.9% of output elements and is never
more than 1 LSB away, on the test CNN and on MobileNetV2 (random weights, a few QAT steps)."""

import os

import numpy as np
import pytest
import tensorflow as tf
import tf_keras

import dpu_models
from qat_rewrite import decent_q
from qat_rewrite.targets.dpu import agreement

v1 = tf.compat.v1


def _qat_and_deploy(build, config, steps, tmp_path):
  """Trains the rewritten graph for a few steps, deploys; returns the deploy paths."""
  graph = tf.Graph()
  with graph.as_default():
    loss, feed = build(training=True)
    decent_q.CreateQuantizeTrainingGraph(config=config)
    with tf.control_dependencies(v1.get_collection(v1.GraphKeys.UPDATE_OPS)):
      train_op = v1.train.AdamOptimizer(1e-3).minimize(loss)
    with v1.Session() as sess:
      sess.run(v1.global_variables_initializer())
      for i in range(steps):
        sess.run(train_op, feed(i))
      v1.train.Saver().save(sess, str(tmp_path / "ckpt" / "model.ckpt"))
  with tf.Graph().as_default():
    build(training=False)
    decent_q.CreateQuantizeEvaluationGraph(config=config)
    return decent_q.CreateQuantizeDeployGraph(checkpoint=str(tmp_path / "ckpt"), config=config)


def test_runner_matches_the_eval_model_on_the_test_cnn(tmp_path):
  config = decent_q.QuantizeConfig(input_nodes=dpu_models.INPUT_NODES,
                                   output_nodes=dpu_models.OUTPUT_NODES,
                                   input_shapes=dpu_models.INPUT_SHAPES,
                                   output_dir=str(tmp_path / "out"))
  data = list(dpu_models.batches(20))

  def build(training):
    raw, labels, _, loss = dpu_models.build(is_training=training)
    return loss, lambda i: {raw: data[i][0], labels: data[i][1]}

  paths = _qat_and_deploy(build, config, 20, tmp_path)
  images = next(dpu_models.batches(1, batch=32, seed=5))[0] / 255.0
  for name, result in agreement.compare(paths, {"net_in": images}).items():
    assert result.equal_share >= 0.999 and result.max_lsb <= 1, (name, result)


@pytest.mark.skipif(os.environ.get("QAT_REWRITE_FAST_TESTS") == "1", reason="slow model")
def test_runner_matches_the_eval_model_on_mobilenet_v2(tmp_path):
  rng = np.random.RandomState(0)
  images = rng.uniform(-1, 1, (4, 64, 64, 3)).astype(np.float32)
  labels = rng.randint(0, 10, 4)
  output = {}

  def build(training):
    x = v1.placeholder(tf.float32, [None, 64, 64, 3], name="images")
    model = tf_keras.applications.MobileNetV2(weights=None, input_shape=(64, 64, 3), alpha=0.35,
                                              classes=10, classifier_activation=None)
    logits = model(x, training=training)
    output["name"] = logits.op.name
    loss = v1.losses.sparse_softmax_cross_entropy(labels, logits)
    return loss, lambda i: {x: images}

  tf_keras.backend.clear_session()
  with tf.Graph().as_default():
    build(training=False)
  config = decent_q.QuantizeConfig(input_nodes=["images"], output_nodes=[output["name"]],
                                   input_shapes=[[-1, 64, 64, 3]], output_dir=str(tmp_path / "out"))
  paths = _qat_and_deploy(build, config, 3, tmp_path)
  for name, result in agreement.compare(paths, {"images": images}).items():
    assert result.equal_share >= 0.999 and result.max_lsb <= 1, (name, result)


def test_compare_refuses_an_info_file_without_the_tensor_map(tmp_path):
  info = tmp_path / "quantize_info.txt"
  info.write_text("# name kind bit_width quantize_pos mode method\nnet_in/aquant input 8 7 1 0\n")
  files = {name: str(tmp_path / name) for name in ("quantize_eval_model.pb", "deploy_model.pb")}
  files["quantize_info.txt"] = str(info)
  with pytest.raises(ValueError, match="quantize_info.txt has no line"):
    agreement.compare(files, {"net_in": np.zeros((1, 4), np.float32)})
