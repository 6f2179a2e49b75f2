"""Per-layer figures for the report: the output error on random input and the FLOP reduction.

The output error is measured, not derived: the original conv and the three-conv chain run on
the same white-noise input (NHWC, the layer's stride, SAME padding) in a throwaway graph. On
white input its expected value equals the relative kernel error the rank rule bounds.
"""

import numpy as np


def output_error(kernel, tucker, stride, size=None, seed=0):
  """||conv(x, W) - chain(x)|| / ||conv(x, W)|| for one random x.

  TensorFlow is imported here only, so that the FLOP counts and the numpy math load without
  it (the benchmark's peak memory is the decomposition's, not TF's runtime)."""
  import tensorflow as tf  # pylint: disable=import-outside-toplevel
  v1 = tf.compat.v1
  kh, kw, c_in, _ = kernel.shape
  size = size or max(kh, kw) + 5
  x = np.random.RandomState(seed).standard_normal((1, size, size, c_in)).astype(np.float32)
  strides = [1, stride, stride, 1]
  with tf.Graph().as_default():
    # Kernels are fed, not embedded: a 400 MB constant would be copied through the GraphDef.
    inp, w, first, core, last = (v1.placeholder(tf.float32, a.shape) for a in (
        x, kernel, tucker.first, tucker.core, tucker.last))
    ref = tf.nn.conv2d(inp, w, strides, "SAME")
    y = tf.nn.conv2d(inp, first, [1, 1, 1, 1], "VALID")
    y = tf.nn.conv2d(y, core, strides, "SAME")
    y = tf.nn.conv2d(y, last, [1, 1, 1, 1], "VALID")
    diff = tf.norm(ref - y) / tf.maximum(tf.norm(ref), 1e-30)
    with v1.Session() as sess:
      return float(sess.run(diff, {inp: x, w: kernel, first: tucker.first, core: tucker.core,
                                   last: tucker.last}))


def flops(kernel_shape, ranks, out_hw, stride):
  """(original, decomposed) multiply-adds per image; per output pixel if out_hw is unknown.

  The first 1x1 of the chain runs at the input resolution, stride**2 times the output's."""
  kh, kw, c_in, c_out = kernel_shape
  pixels = out_hw[0] * out_hw[1] if out_hw else 1
  r_in, r_out = ranks
  before = kh * kw * c_in * c_out * pixels
  after = (c_in * r_in * stride * stride + kh * kw * r_in * r_out + r_out * c_out) * pixels
  return before, after


def params(kernel_shape, ranks):
  kh, kw, c_in, c_out = kernel_shape
  r_in, r_out = ranks
  return kh * kw * c_in * c_out, c_in * r_in + kh * kw * r_in * r_out + r_out * c_out
