"""Folding batch norm must not change what the graph computes (before quantization).

Each case builds the same layer + batch norm twice, folds one copy, loads identical
variable values into both and compares the forward output, the gradient with
respect to the input, and the moving statistics after one update step.
"""

import numpy as np
import pytest
import tensorflow as tf

from qat_rewrite import quantize
from qat_rewrite.export import arguments
from qat_rewrite.passes.fold_batch_norm import fold_batch_norms, replaced_outputs

LAYERS = ["conv2d", "conv2d_bias", "depthwise", "atrous_depthwise", "conv2d_transpose", "dense"]


def _layer(kind, x):
  layers = tf.compat.v1.layers
  if kind == "conv2d":
    return layers.conv2d(x, 5, 3, padding="same", use_bias=False, name="layer")
  if kind == "conv2d_bias":
    return layers.conv2d(x, 5, 3, padding="same", use_bias=True, name="layer")
  if kind in ("depthwise", "atrous_depthwise"):
    with tf.compat.v1.variable_scope("layer"):
      w = tf.compat.v1.get_variable("depthwise_weights", [3, 3, 3, 2])
    rate = [2, 2] if kind == "atrous_depthwise" else None
    return tf.nn.depthwise_conv2d(x, w, [1, 1, 1, 1], "SAME", dilations=rate, name="layer/depthwise")
  if kind == "conv2d_transpose":
    return layers.conv2d_transpose(x, 4, 3, strides=2, padding="same", use_bias=False, name="layer")
  return layers.dense(tf.reshape(x, [-1, 8 * 8 * 3]), 6, name="layer")


def _build(kind, fused, training):
  x = tf.compat.v1.placeholder(tf.float32, [4, 8, 8, 3], name="x")
  y = _layer(kind, x)
  y = tf.compat.v1.layers.batch_normalization(y, training=training, fused=fused, momentum=0.9,
                                              name="bn")
  y = tf.nn.relu(y)
  grad = tf.gradients(tf.reduce_sum(y * y), x)[0]
  return x, y, grad


def _run(kind, fused, training, fold=None, values=None, freeze_bn_delay=None):
  graph = tf.Graph()
  with graph.as_default():
    x, y, _ = _build(kind, fused, training)
    if fold is not None:
      folded, unfoldable, _ = fold_batch_norms(graph, fold, freeze_bn_delay)
      assert list(folded) and not unfoldable, (folded, unfoldable)
    grad = tf.gradients(tf.reduce_sum(y * y), x)[0]
    updates = tf.compat.v1.get_collection(tf.compat.v1.GraphKeys.UPDATE_OPS)
    variables = {v.op.name: v for v in tf.compat.v1.global_variables()}
    with tf.compat.v1.Session() as sess:
      sess.run(tf.compat.v1.global_variables_initializer())
      if values is None:
        rng = np.random.RandomState(0)
        values = {name: sess.run(v) for name, v in variables.items()}
        values["bn/moving_mean"] = rng.uniform(-0.5, 0.5, values["bn/moving_mean"].shape)
        values["bn/moving_variance"] = rng.uniform(0.5, 2.0, values["bn/moving_variance"].shape)
        values["bn/gamma"] = rng.uniform(0.5, 1.5, values["bn/gamma"].shape)
        values["bn/beta"] = rng.uniform(-0.5, 0.5, values["bn/beta"].shape)
      for name, value in values.items():
        if name in variables:
          variables[name].load(value, sess)
      feed = {x: np.random.RandomState(1).normal(size=(4, 8, 8, 3))}
      out, g = sess.run([y, grad], feed)
      sess.run(updates, feed)
      moving = sess.run([variables["bn/moving_mean"], variables["bn/moving_variance"]])
  return values, out, g, moving


@pytest.mark.parametrize("fused", [True, False], ids=["fused", "unfused"])
@pytest.mark.parametrize("kind", LAYERS)
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
def test_fold_computes_what_the_original_computes(kind, fused, training):
  values, out, grad, moving = _run(kind, fused, training)
  _, out_f, grad_f, moving_f = _run(kind, fused, training, fold=training, values=values)
  np.testing.assert_allclose(out_f, out, atol=1e-3)
  np.testing.assert_allclose(grad_f, grad, atol=1e-3, rtol=1e-3)
  np.testing.assert_allclose(moving_f[0], moving[0], atol=1e-4)
  np.testing.assert_allclose(moving_f[1], moving[1], atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("fused", [True, False], ids=["fused", "unfused"])
@pytest.mark.parametrize("kind", ["conv2d", "depthwise", "dense"])
def test_freeze_delay_not_reached_uses_batch_statistics(kind, fused):
  values, out, grad, moving = _run(kind, fused, True)
  _, out_f, grad_f, moving_f = _run(kind, fused, True, fold=True, values=values,
                                    freeze_bn_delay=100)
  np.testing.assert_allclose(out_f, out, atol=1e-3)
  np.testing.assert_allclose(grad_f, grad, atol=1e-3, rtol=1e-3)
  np.testing.assert_allclose(moving_f[1], moving[1], atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("fused", [True, False], ids=["fused", "unfused"])
@pytest.mark.parametrize("kind", ["conv2d", "depthwise", "dense"])
def test_freeze_delay_reached_uses_and_freezes_moving_statistics(kind, fused):
  values, out, grad, _ = _run(kind, fused, False)  # inference-mode batch norm
  _, out_f, grad_f, moving_f = _run(kind, fused, True, fold=True, values=values,
                                    freeze_bn_delay=0)
  np.testing.assert_allclose(out_f, out, atol=1e-3)
  np.testing.assert_allclose(grad_f, grad, atol=1e-3, rtol=1e-3)
  np.testing.assert_allclose(moving_f[0], values["bn/moving_mean"], atol=1e-6)
  np.testing.assert_allclose(moving_f[1], values["bn/moving_variance"], atol=1e-6)


@pytest.mark.parametrize("fused", [True, False], ids=["fused", "unfused"])
def test_a_batch_norm_that_ends_the_graph_is_folded_once(fused):
  """An eval graph ending in conv + batch norm: its batch norm is read by nothing, as a folded
  one is; it was taken for folded and the model stayed float. A second fold changes nothing."""
  with tf.Graph().as_default() as graph:
    x = tf.compat.v1.placeholder(tf.float32, [4, 8, 8, 3], name="x")
    y = _layer("conv2d", x)
    out = tf.compat.v1.layers.batch_normalization(y, training=False, fused=fused, name="bn")
    assert not out.consumers()
    folded, unfoldable, _ = fold_batch_norms(graph, False)
    assert list(folded) == ["layer/Conv2D"] and not unfoldable
    assert replaced_outputs(graph)[out.op.name].op.name == "layer/add_fold"
    assert fold_batch_norms(graph, False)[0] == {}


def test_an_output_batch_norm_means_its_fold_in_a_frozen_graph_too(tmp_path):
  """Which batch norm a fold replaced is a node attribute, so an export from a frozen .pb maps
  an output named after the batch norm to the fold, as one from the tf.Graph does (the .pb
  once exported the unfolded batch norm, float)."""
  with tf.Graph().as_default() as graph:
    x = tf.compat.v1.placeholder(tf.float32, [4, 8, 8, 3], name="x")
    out = tf.compat.v1.layers.batch_normalization(_layer("conv2d", x), training=False, name="bn")
    quantize.create_eval_graph(graph)
    with tf.compat.v1.Session() as sess:
      sess.run(tf.compat.v1.global_variables_initializer())
      frozen = tf.compat.v1.graph_util.convert_variables_to_constants(
          sess, graph.as_graph_def(), ["layer/act_quant/FakeQuantWithMinMaxVars", out.op.name])
  path = tmp_path / "frozen.pb"
  path.write_bytes(frozen.SerializeToString())
  _, _, outputs, _ = arguments.prepare(str(path), ["x"], [out.op.name], None, {"x": (-1.0, 1.0)})
  assert outputs == ["layer/act_quant/FakeQuantWithMinMaxVars"]
