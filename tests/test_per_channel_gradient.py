"""The training graph's per-channel FakeQuant gradient: TF's numbers, without TF's slow kernel."""

import contextlib

import numpy as np
import pytest
import tensorflow as tf

from qat_rewrite import quantize
from qat_rewrite.passes import build_quantizers
from qat_rewrite.quant import per_channel_gradient

v1 = tf.compat.v1
TF_GRADIENT = "FakeQuantWithMinMaxVarsPerChannelGradient"


def _ranges(channels, rng):
  """Per-channel (min, max) with the kernel's edge cases among them: a channel whose min and
  max are both 0, one that is all positive, one all negative, one whose zero point is a tie."""
  low = -rng.uniform(0.1, 3.0, channels).astype(np.float32)
  high = rng.uniform(0.1, 3.0, channels).astype(np.float32)
  low[0], high[0] = 0.0, 0.0
  low[1], high[1] = 0.5, 2.0
  low[2], high[2] = -2.0, -0.5
  low[3], high[3] = -127.5 / 255.0 * 2.0, 127.5 / 255.0 * 2.0
  return low, high


def _inputs(shape, low, high, rng, bits, narrow_range):
  """Values across and beyond each range, and on the nudged ends exactly."""
  x = rng.uniform(-4.0, 4.0, shape).astype(np.float32)
  with tf.Graph().as_default(), v1.Session() as sess:
    nudged_min, nudged_max = sess.run(per_channel_gradient.nudged_range(
        tf.constant(low), tf.constant(high), bits, narrow_range))
  flat = x.reshape(-1, shape[-1])
  flat[0], flat[-1] = nudged_min, nudged_max
  return flat.reshape(shape)


@pytest.mark.parametrize("shape", [(6,), (50, 6), (3, 3, 4, 6)])
@pytest.mark.parametrize("bits, narrow_range", [(8, True), (8, False), (4, False)])
def test_the_gradient_is_tfs_own(shape, bits, narrow_range):
  rng = np.random.RandomState(sum(shape) + bits)
  low, high = _ranges(shape[-1], rng)
  x_value = _inputs(shape, low, high, rng, bits, narrow_range)
  grad_value = rng.randn(*shape).astype(np.float32)
  with tf.Graph().as_default() as graph:
    x, grad = v1.placeholder(tf.float32, shape), v1.placeholder(tf.float32, shape)
    low_t, high_t = tf.constant(low), tf.constant(high)
    with per_channel_gradient.overridden(graph):
      ours = tf.quantization.fake_quant_with_min_max_vars_per_channel(
          x, low_t, high_t, num_bits=bits, narrow_range=narrow_range)
    theirs = tf.quantization.fake_quant_with_min_max_vars_per_channel(
        x, low_t, high_t, num_bits=bits, narrow_range=narrow_range)
    ours_grads = tf.gradients(ours, [x, low_t, high_t], grad)
    theirs_grads = tf.gradients(theirs, [x, low_t, high_t], grad)
    assert [op.type for op in graph.get_operations()].count(TF_GRADIENT) == 1  # theirs only
    with v1.Session() as sess:
      (dx, dmin, dmax), (want_dx, want_dmin, want_dmax) = sess.run(
          [ours_grads, theirs_grads], {x: x_value, grad: grad_value})
  np.testing.assert_array_equal(dx, want_dx)
  np.testing.assert_allclose(dmin, want_dmin, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(dmax, want_dmax, rtol=1e-5, atol=1e-5)
  assert dx[..., 0].tolist() == grad_value[..., 0].tolist()  # min = max = 0: straight through
  if len(shape) > 1:  # every branch was taken
    assert np.any(dmin != 0) and np.any(dmax != 0) and np.any(dx == 0)


def _fixed(rng, shape):
  return tf.constant_initializer(rng.normal(0, 0.3, shape).astype(np.float32))


def _train(steps):
  """(losses, op types) of a per-channel conv + dense training graph, trained `steps` steps."""
  rng = np.random.RandomState(0)
  images_value = rng.uniform(0, 1, (4, 8, 8, 3)).astype(np.float32)
  with tf.Graph().as_default() as graph:
    images = v1.placeholder(tf.float32, [None, 8, 8, 3], name="images")
    net = v1.layers.conv2d(images, 8, 3, padding="same", activation=tf.nn.relu, name="conv",
                           kernel_initializer=_fixed(rng, (3, 3, 3, 8)))
    logits = v1.layers.dense(tf.reduce_mean(net, [1, 2]), 2, name="logits",
                             kernel_initializer=_fixed(rng, (8, 2)))
    quantize.experimental_create_training_graph(per_channel_weights=True, symmetric=True)
    loss = tf.reduce_mean(tf.square(logits - 1.0))
    weights = [v for v in v1.trainable_variables() if "kernel" in v.op.name]
    gradients = tf.gradients(loss, weights)
    with tf.control_dependencies(gradients):  # the first step's gradients before its update
      train_op = v1.train.GradientDescentOptimizer(0.05).minimize(loss)
    with v1.Session() as sess:
      sess.run(v1.global_variables_initializer())
      first = sess.run(gradients, {images: images_value})
      losses = [sess.run([loss, train_op], {images: images_value})[0] for _ in range(steps)]
  return losses, first, graph


def test_a_per_channel_training_graph_trains_as_with_tfs_gradient_kernel(monkeypatch):
  """The rewritten weight quantizer keeps its op type (eval, export and the grids read it);
  the user's train op takes the elementwise gradient, and the weights get TF's gradients."""
  losses, gradients, graph = _train(10)
  quantizer = graph.get_operation_by_name("conv/weights_quant/FakeQuantWithMinMaxVarsPerChannel")
  assert quantizer.get_attr("_gradient_op_type") == per_channel_gradient.GRADIENT_NAME.encode()
  types = [op.type for op in graph.get_operations()]
  assert TF_GRADIENT not in types
  assert types.count("FakeQuantWithMinMaxVarsPerChannel") == 2  # conv and dense weights
  assert losses[-1] < losses[0] / 2, losses
  monkeypatch.setattr(per_channel_gradient, "overridden", lambda graph: contextlib.nullcontext())
  build_quantizers.clear_templates()  # they were built with the override
  _, tfs_gradients, tfs_graph = _train(0)
  build_quantizers.clear_templates()
  assert TF_GRADIENT in [op.type for op in tfs_graph.get_operations()]
  for ours, theirs in zip(gradients, tfs_gradients):
    # The range's gradient reaches the weights through their min/max, summed in another order.
    np.testing.assert_allclose(ours, theirs, rtol=1e-5, atol=1e-7)
