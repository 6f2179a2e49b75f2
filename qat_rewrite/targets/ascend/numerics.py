"""Ascend INT8 numerics: ULQ for data, ARQ for weights, in TensorFlow and in numpy.

Data (asymmetric): with clip bounds lo = min(clip_min, 0) (0 with fixed_min) and
hi = max(clip_max, 255·eps), scale_d = (hi - lo)/255 and offset_d = -128 - round(lo/scale_d),
so that int8 = clip(round(x/scale_d) + offset_d, -128, 127) and x ≈ (int8 - offset_d)·scale_d.
Weights (symmetric, offset_w = 0): scale_w = max(w)/127, or |min(w)|/128 when the most negative
value has the largest magnitude, per output channel or per tensor.
Every quantizer multiplies by 1/scale_d and divides by scale_w exactly as the deploy model and
its stock-TF twin do, so the three agree bit for bit on the integers. Rounding is half to even
(AscendQuant's rint).
"""

import numpy as np
import tensorflow as tf

LEVELS = 255
QMIN, QMAX = -128, 127
EPS = float(np.finfo(np.float32).eps)


def data_scale_offset(clip_min, clip_max, fixed_min):
  """(scale_d, offset_d as float, lo): the data grid of clip bounds (scalar tensors)."""
  lo = tf.zeros_like(clip_min) if fixed_min else tf.minimum(clip_min, 0.0)
  hi = tf.maximum(clip_max, LEVELS * EPS)
  scale = (hi - lo) / LEVELS
  offset = QMIN - tf.round(lo / scale)
  return scale, offset, lo


def ulq(x, clip_min, clip_max, fixed_min, name="ulq"):
  """x fake-quantized on the data grid of the trainable clip bounds (Ascend ULQ).

  Gradients (AMCT's ActsULQ kernels): x passes straight through inside the grid and gets 0
  outside; with e = (round(x/s) - x/s)/255 inside (and (round(lo/s) - lo/s)/255 outside),
  d clip_max = Σ g·(above + e) and d clip_min = Σ g·(below - e), where above/below mark x
  beyond the grid. With fixed_min the lower bound is 0 and gets no gradient. They come from a
  surrogate s whose derivatives are those (s - stop_gradient(s) adds 0 to the value), not
  from tf.custom_gradient, which in graph mode keeps its tensors, and so the whole graph, in
  TensorFlow's process-wide gradient registry for good.
  """
  with tf.name_scope(name):
    scale, offset, lo = data_scale_offset(clip_min, clip_max, fixed_min)
    raw = x * (1.0 / scale)
    low, high = QMIN - offset, QMAX - offset
    below, above = raw < low, raw > high
    rounded = tf.round(raw)
    y = tf.clip_by_value(rounded, low, high) * scale
    inside = tf.logical_not(tf.logical_or(below, above))
    error_lo = (tf.round(lo / scale) - lo / scale) / LEVELS
    error = tf.stop_gradient(tf.where(inside, (rounded - raw) / LEVELS, error_lo))
    min_weight = tf.zeros_like(error) if fixed_min else tf.cast(below, x.dtype) - error
    surrogate = (tf.where(tf.stop_gradient(inside), x, tf.zeros_like(x))
                 + clip_max * tf.stop_gradient(tf.cast(above, x.dtype) + error)
                 + clip_min * tf.stop_gradient(min_weight))
    return tf.stop_gradient(y) + (surrogate - tf.stop_gradient(surrogate))


def weight_scale(w, axes):
  """ARQ's symmetric scale of `w`, reduced over `axes` (None: the whole tensor), keepdims."""
  top = tf.maximum(tf.reduce_max(w, axis=axes, keepdims=axes is not None), 0.0)
  bottom = tf.maximum(-tf.reduce_min(w, axis=axes, keepdims=axes is not None), 0.0)
  scale = tf.where(bottom > top, bottom / -QMIN, top / QMAX)
  return tf.where(scale > 0.0, scale, tf.ones_like(scale), name="scale_w")


def arq(w, scale):
  """w fake-quantized with `scale` (int8, symmetric); straight-through gradient for w."""
  quantized = tf.clip_by_value(tf.round(w / scale), QMIN, QMAX) * scale
  return w + tf.stop_gradient(quantized - w)


# numpy twins, for calibration records and deploy weights.

def data_scale_offset_np(data_min, data_max, fixed_min=False):
  """(scale_d, offset_d) of a data range, as `data_scale_offset` computes them in float32."""
  f32 = np.float32
  lo = f32(0.0) if fixed_min else np.minimum(f32(data_min), f32(0.0))
  hi = np.maximum(f32(data_max), f32(LEVELS * EPS))
  scale = f32((hi - lo) / f32(LEVELS))
  return scale, int(QMIN - np.round(lo / scale))


def symmetric_scale_np(values):
  """ARQ's rule for one range, also used for symmetric data (activation_offset=False)."""
  top = max(float(np.max(values)), 0.0)
  bottom = max(-float(np.min(values)), 0.0)
  scale = np.float32(bottom / -QMIN if bottom > top else top / QMAX)
  return scale if scale > 0 else np.float32(1.0)


def quantize_weights_np(w, scale_w):
  """int8 weights from float weights and their (broadcastable) scale_w."""
  w = np.asarray(w, np.float32)
  return np.clip(np.round(w / np.asarray(scale_w, np.float32)), QMIN, QMAX).astype(np.int8)


def quantize_data_np(x, scale_d, offset_d):
  """int8 data as AscendQuant computes it."""
  inverse = np.float32(1.0) / np.float32(scale_d)
  raw = np.asarray(x, np.float32) * inverse
  return np.clip(np.round(raw) + offset_d, QMIN, QMAX).astype(np.int32)
