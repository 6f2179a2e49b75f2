"""ULQ and ARQ against the formulas of research §A, on crafted tensors."""

import numpy as np
import pytest
import tensorflow as tf

from qat_rewrite.targets.ascend import numerics

v1 = tf.compat.v1


def _run(fn, *arrays):
  with tf.Graph().as_default():
    tensors = [tf.constant(a, tf.float32) for a in arrays]
    outputs = fn(*tensors)
    with v1.Session() as sess:
      return sess.run(outputs)


def _reference_ulq(x, g, clip_min, clip_max, fixed_min):
  """Forward value and gradients written from the formulas, in float64."""
  lo = 0.0 if fixed_min else min(clip_min, 0.0)
  s = (max(clip_max, 255 * 1.2e-7) - lo) / 255
  offset_u = np.round(lo / s)
  low, high = offset_u * s, (offset_u + 255) * s
  below, above = x < low, x > high
  inside = ~below & ~above
  y = np.clip(np.round(x / s), offset_u, offset_u + 255) * s
  error = np.where(inside, (np.round(x / s) - x / s) / 255, (offset_u - lo / s) / 255)
  d_max = np.sum(g * (above + error))
  d_min = 0.0 if fixed_min else np.sum(g * (below - error))
  return y, g * inside, d_min, d_max


@pytest.mark.parametrize("clip_min, clip_max, fixed_min", [
    (-0.93, 2.31, False), (0.4, 2.31, False), (-0.93, 2.31, True), (-3.0, -1.0, False)])
def test_ulq_forward_and_gradients_match_the_formulas(clip_min, clip_max, fixed_min):
  rng = np.random.RandomState(0)
  x = rng.uniform(-2.0, 3.5, (4, 5, 6)).astype(np.float32)
  g = rng.normal(size=x.shape).astype(np.float32)

  def graph(x, g, cmin, cmax):
    y = numerics.ulq(x, cmin, cmax, fixed_min)
    return [y] + tf.gradients(y, [x, cmin, cmax], grad_ys=g)

  y, dx, d_min, d_max = _run(graph, x, g, np.float32(clip_min), np.float32(clip_max))
  ry, rdx, rmin, rmax = _reference_ulq(x.astype(np.float64), g, clip_min, clip_max, fixed_min)
  np.testing.assert_allclose(y, ry, atol=1e-5)
  np.testing.assert_array_equal(dx, rdx.astype(np.float32))
  np.testing.assert_allclose([d_min, d_max], [rmin, rmax], rtol=1e-4, atol=1e-4)
  assert np.any(rdx == 0) and np.any(rdx != 0)  # the crafted tensor crosses the clip bounds


def test_fixed_min_maps_negatives_to_zero_and_holds_zero_exactly():
  x = np.array([-1.0, -0.01, 0.0, 0.5, 1.0], np.float32)
  y, = _run(lambda x, a, b: [numerics.ulq(x, a, b, True)], x, np.float32(-0.5), np.float32(1.0))
  assert y[0] == y[1] == y[2] == 0.0
  scale, offset = numerics.data_scale_offset_np(-0.5, 1.0, fixed_min=True)
  assert offset == -128 and np.isclose(scale, 1.0 / 255)


def test_data_grid_has_int8_offset_and_contains_zero():
  scale, offset = numerics.data_scale_offset_np(0.0, 6.0)
  assert (np.float32(scale), offset) == (np.float32(6.0 / 255), -128)  # AMCT's ReLU6 sample
  scale, offset = numerics.data_scale_offset_np(-1.0, 3.0)
  assert offset == -64 and np.isclose(scale, 4.0 / 255)  # -128 - round(-1 / scale)
  q = numerics.quantize_data_np(np.array([0.0, -1.0, 3.0, 5.0]), scale, offset)
  assert list(q) == [offset, -128, 127, 127]  # 0 is exactly the offset


def test_arq_per_channel_symmetric_int8():
  w = np.zeros((1, 1, 2, 3), np.float32)
  w[..., 0] = [0.5, -0.25]    # positive extreme: scale 0.5/127
  w[..., 1] = [0.1, -0.4]     # negative extreme: scale 0.4/128, -0.4 -> -128
  w[..., 2] = [0.0, 0.0]      # all zero: scale 1

  def graph(w):
    scale = numerics.weight_scale(w, (0, 1, 2))
    return [scale, numerics.arq(w, scale), tf.gradients(numerics.arq(w, scale) * 3.0, w)[0]]

  scale, wq, grad = _run(graph, w)
  np.testing.assert_allclose(scale.reshape(-1), [0.5 / 127, 0.4 / 128, 1.0], rtol=1e-6)
  q = np.round(wq / scale)
  assert q[0, 0, 1, 1] == -128 and q[0, 0, 0, 0] == 127
  assert np.all(grad == 3.0)  # straight through
  np.testing.assert_array_equal(numerics.quantize_weights_np(w, scale), q.astype(np.int8))


def test_arq_per_tensor_uses_one_scale():
  w = np.array([[0.2, -0.1], [0.05, 1.27]], np.float32)
  scale, = _run(lambda w: [numerics.weight_scale(w, None)], w)
  assert scale.shape == () and np.isclose(scale, 0.01)
