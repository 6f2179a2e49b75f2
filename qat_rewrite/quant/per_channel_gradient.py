"""The gradient of a per-channel FakeQuant, from elementwise ops instead of TF's own kernel.

TF's FakeQuantWithMinMaxVarsPerChannelGradient loops over the channels and works on each one
as a strided slice, a few elements at a time: on vgg_16's fc6 weight (7x7x512x4096) it takes
about 3x the forward op's time, and most of a QAT step (`benchmarks/bench_per_channel_gradient.py`).
The same gradient from broadcast compares, selects and two reductions runs over the whole tensor
at once. It is TF's gradient, not an approximation:
  d input = d output where nudged min <= input <= nudged max, else 0 (straight through);
  d min   = sum of d output over the inputs below the nudged min, per channel;
  d max   = sum of d output over the inputs above the nudged max, per channel;
  a channel whose min and max are both 0 passes d output through and gives d min = d max = 0.
The input gradient is bit-exact with TF's; the two sums add in another order (float32 rounding).
The nudge is TF's (`Nudge` in fake_quant_ops_functor.h): scale = (max - min) / (qmax - qmin),
zero point = qmin - min / scale rounded half away from zero and clamped to [qmin, qmax].

The training rewrite builds its per-channel quantizers under `overridden(graph)`; the op keeps
its type and forward kernel, and carries `_gradient_op_type` so that tf.gradients, in this
process, takes the function registered here once qat_rewrite is imported.
"""

import contextlib

import tensorflow as tf

GRADIENT_NAME = "QatRewriteFakeQuantPerChannelGradient"
_OP_TYPE = "FakeQuantWithMinMaxVarsPerChannel"


@contextlib.contextmanager
def overridden(graph):
  """Per-channel FakeQuant ops built inside get the elementwise gradient."""
  with graph.gradient_override_map({_OP_TYPE: GRADIENT_NAME}):
    yield


def nudged_range(range_min, range_max, num_bits, narrow_range):
  """(nudged min, nudged max) as TF's FakeQuant kernels compute them, in float32."""
  quant_min = 1.0 if narrow_range else 0.0
  quant_max = float(2 ** num_bits - 1)
  scale = (range_max - range_min) / (quant_max - quant_min)
  zero_point_from_min = quant_min - range_min / scale
  floor = tf.floor(zero_point_from_min)
  rounded = tf.where(zero_point_from_min - floor >= 0.5, floor + 1.0, floor)  # halves away from 0
  zero_point = tf.clip_by_value(rounded, quant_min, quant_max)
  return (quant_min - zero_point) * scale, (quant_max - zero_point) * scale


def gradient(op, grad):
  """(d input, d min, d max) of the per-channel FakeQuant `op` for d output `grad`."""
  inputs, range_min, range_max = op.inputs
  with tf.name_scope("per_channel_gradient"):
    nudged_min, nudged_max = nudged_range(range_min, range_max, op.get_attr("num_bits"),
                                          op.get_attr("narrow_range"))
    unset = tf.logical_and(tf.equal(range_min, 0.0), tf.equal(range_max, 0.0))
    below = tf.logical_and(inputs < nudged_min, tf.logical_not(unset))
    above = tf.logical_and(inputs > nudged_max, tf.logical_not(unset))
    inside = tf.logical_or(tf.logical_and(inputs >= nudged_min, inputs <= nudged_max), unset)
    zeros = tf.zeros_like(grad)
    rank = inputs.shape.rank  # reduce over all but the channels (rank 1: over none)
    axes = list(range(rank - 1)) if rank is not None else tf.range(tf.rank(inputs) - 1)
    return (tf.where(inside, grad, zeros),
            tf.reduce_sum(tf.where(below, grad, zeros), axes),
            tf.reduce_sum(tf.where(above, grad, zeros), axes))


tf.RegisterGradient(GRADIENT_NAME)(gradient)
