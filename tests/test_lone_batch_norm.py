"""Batch norms that follow no weight layer (ResNet v2's pre-activation and post-norm, or one
whose layer output also feeds a shortcut): each folds into a unit 1x1 depthwise layer, so the
TFLite model runs it in int8 and the training and eval graphs quantize it alike."""

import os

import numpy as np
import pytest
import tensorflow as tf

from qat_rewrite import decent_q, quantize
from qat_rewrite.export import compare_tflite, to_tflite
from qat_rewrite.graph import frozen
from qat_rewrite.targets.dpu import agreement as dpu_agreement

v1 = tf.compat.v1
OPTIONS = dict(symmetric=True, per_channel_weights=True, quantize_inputs=True)
IMAGES = np.random.RandomState(0).uniform(0, 1, (16, 8, 8, 3)).astype(np.float32)


def preact_resnet(training):
  """conv1 → 2 pre-activation units (BN → ReLU → conv, identity shortcut) → post-norm → pool."""
  images = v1.placeholder(tf.float32, [None, 8, 8, 3], name="images")
  y = v1.layers.conv2d(images, 8, 3, padding="same", name="conv1")
  for i in range(2):
    bn = v1.layers.batch_normalization(y, training=training, fused=True, name="preact%d" % i)
    y = y + v1.layers.conv2d(tf.nn.relu(bn), 8, 3, padding="same", name="res%d" % i)
  y = tf.nn.relu(v1.layers.batch_normalization(y, training=training, fused=True,
                                               name="postnorm"))
  logits = v1.layers.dense(tf.reduce_mean(y, [1, 2]), 3, name="logits")
  return images, tf.identity(logits, name="net_out")


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
  directory = str(tmp_path_factory.mktemp("preact"))
  report, checkpoint, training_quantizers = train_preact_resnet(
      lambda: quantize.experimental_create_training_graph(**OPTIONS), 20,
      os.path.join(directory, "model.ckpt"))
  evaluation, eval_report = eval_graph("float")
  return dict(report=report, eval_report=eval_report, graph=evaluation, checkpoint=checkpoint,
              directory=directory, training_quantizers=training_quantizers)


def eval_graph(requantize):
  with tf.Graph().as_default() as evaluation:
    preact_resnet(training=False)
    report = quantize.experimental_create_eval_graph(requantize=requantize, **OPTIONS)
  return evaluation, report


def train_preact_resnet(rewrite, steps, path):
  """(the rewrite's report, the checkpoint, the quantizer names) after `steps` Adam steps."""
  with tf.Graph().as_default() as graph:
    # Seeded: unseeded, the initial weights changed every run and so did the agreement (it
    # fell to 94% of 48 logits, 1 LSB, in one full-suite run; see issue 13 on why).
    v1.set_random_seed(0)
    _, out = preact_resnet(training=True)
    report = rewrite()
    with tf.control_dependencies(v1.get_collection(v1.GraphKeys.UPDATE_OPS)):
      train_op = v1.train.AdamOptimizer(1e-3).minimize(tf.reduce_mean(tf.square(out)))
    with v1.Session() as sess:
      sess.run(v1.global_variables_initializer())
      for _ in range(steps):
        sess.run(train_op, {"images:0": IMAGES})
      checkpoint = v1.train.Saver().save(sess, path)
    return report, checkpoint, _quantizers(graph)


def _quantizers(graph):
  return sorted(v.op.name for v in graph.get_collection(v1.GraphKeys.GLOBAL_VARIABLES)
                if v.op.name.endswith("/max"))


def test_every_batch_norm_folds_and_nothing_stays_float(trained):
  for report in (trained["report"], trained["eval_report"]):
    folded = {layer.layer: layer.folded_batch_norm for layer in report.layers}
    assert folded["preact0/depthwise"] == "preact0/FusedBatchNormV3"
    assert folded["preact1/depthwise"] == "preact1/FusedBatchNormV3"
    assert folded["postnorm/depthwise"] == "postnorm/FusedBatchNormV3"
    assert folded["conv1/Conv2D"] is None  # its output also feeds the first shortcut
    assert not report.float_ops
    assert any("3 batch norm(s) that follow no weight layer" in n for n in report.notes)
  assert trained["training_quantizers"] == _quantizers(trained["graph"])
  assert "preact0/weights_quant/max" in trained["training_quantizers"]


def test_the_tflite_model_is_fully_integer_and_matches_the_eval_graph(trained, tmp_path):
  """Each runtime against the eval graph that emulates its integer requantization, on 768
  logits: the float eval graph's sums part from the integer ones near rounding ties, and how
  often depends on the CPU's float kernels (CI's machine: 2 of 48 logits 1 LSB off where this
  one had none), so the float graph cannot be held to the issue's 99%."""
  result = to_tflite(trained["graph"], str(tmp_path / "preact.tflite"), ["images"],
                     ["net_out"], checkpoint=trained["checkpoint"])
  images = np.random.RandomState(5).uniform(0, 1, (256, 8, 8, 3)).astype(np.float32)
  for delegates, mode in ((True, "xnnpack"), (False, "tflite_builtin")):
    (agreement,) = compare_tflite(result, {"images": images}, delegates=delegates,
                                  reference=eval_graph(mode)[0],
                                  checkpoint=trained["checkpoint"]).values()
    assert agreement.elements == 768, agreement
    assert agreement.equal_share >= 0.99 and agreement.max_lsb <= 1, (mode, agreement)


def test_a_shortcut_still_reads_the_unnormalized_layer_output():
  """conv1's output feeds preact0 and the shortcut add: preact0 folds into a unit layer of its
  own, not into conv1 (which then ran twice, once in float for the shortcut). With 16 bits the
  rewritten eval graph still computes the float model's function."""
  rng = np.random.RandomState(1)
  with tf.Graph().as_default() as graph:
    images, out = preact_resnet(training=False)
    moving = [v for v in v1.global_variables() if "moving" in v.op.name]
    with v1.Session() as sess:
      sess.run(v1.global_variables_initializer())
      for v in moving:  # statistics far from (0, 1), so a wrong fold shows
        sess.run(v.assign(rng.uniform(0.5, 2.0, v.shape.as_list()).astype(np.float32)))
      before = sess.run(out, {images: IMAGES})
      quantize.experimental_create_eval_graph(graph, weight_bits=16, activation_bits=16)
      sess.run(v1.variables_initializer([v for v in v1.global_variables()
                                         if "_quant" in v.op.name]))
      for v in v1.global_variables():  # ranges wide enough for every tensor
        if v.op.name.endswith("_quant/min"):
          sess.run(v.assign(tf.fill(tf.shape(v), -64.0)))
        elif v.op.name.endswith("_quant/max"):
          sess.run(v.assign(tf.fill(tf.shape(v), 64.0)))
      after = sess.run(out, {images: IMAGES})
  np.testing.assert_allclose(after, before, atol=0.02)


def test_the_dpu_deploy_model_runs_them_as_depthwise_layers(tmp_path):
  """decent_q on the same net: the deploy model holds no batch norm, and the integer reference
  runner agrees with the eval model (it cannot run a FusedBatchNorm, so this failed before)."""
  config = decent_q.QuantizeConfig(input_nodes=["images"], output_nodes=["net_out"],
                                   input_shapes=[[-1, 8, 8, 3]],
                                   output_dir=str(tmp_path / "quantize_results"))
  _, checkpoint, _ = train_preact_resnet(lambda: decent_q.CreateQuantizeTrainingGraph(
      config=config), 5, str(tmp_path / "model.ckpt"))
  with tf.Graph().as_default():
    preact_resnet(training=False)
    report = decent_q.CreateQuantizeEvaluationGraph(config=config)
    paths = decent_q.CreateQuantizeDeployGraph(checkpoint=checkpoint, config=config)
  assert report.float_ops == [], report.float_ops
  deploy_types = {n.op for n in frozen.load_graph_def(paths["deploy_model.pb"]).node}
  assert not deploy_types & {"FusedBatchNorm", "FusedBatchNormV3"}, deploy_types
  assert "DepthwiseConv2dNative" in deploy_types
  results = dpu_agreement.compare(paths, {"images": IMAGES[:4]})
  assert "net_out/aquant" in results
  assert all(r.equal_share == 1.0 and r.max_lsb == 0 for r in results.values()), results
