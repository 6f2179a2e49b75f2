"""Makes the float graph compute what the DPU computes (decent_q's simulate_dpu, replace_sigmoid).

- LeakyReLU with alpha 0.1 uses 26/256, the DPU's alpha;
- AvgPool, and Mean over H and W (global average pooling), are multiplied by kh·kw·k/2^n:
  the DPU divides by multiplying with k/2^n (`<pool>/scale_value`, Mul `<pool>/mul`);
- hard-sigmoid, relu6(x + 3)·(1/6), is multiplied by 6·2731/2^14: the DPU's 1/6 is 2731/2^14;
- with replace_sigmoid, Sigmoid becomes that hard-sigmoid.
The same edits run on the training and the eval graph, so both name their ops alike.
"""

import numpy as np
import tensorflow as tf

from qat_rewrite.graph import editor
from qat_rewrite.graph.view import GraphView, constant_value
from qat_rewrite.targets.dpu import arithmetic


def simulate_dpu(graph, scope, scale_all_avgpool):
  """Applies the DPU arithmetic to the ops in `scope`; returns {scale Mul: (pool, k, n)}."""
  view = GraphView(graph)
  pool_scales = {}
  for op in sorted(scope, key=lambda o: o.name):
    if op.type == "LeakyRelu":
      alpha = op.get_attr("alpha")
      if arithmetic.leaky_relu_alpha(alpha) != alpha:
        editor.set_attr(op, "alpha", tf.compat.v1.AttrValue(f=arithmetic.LEAKY_RELU_ALPHA))
    kernel = _average_kernel(op)
    multiplier = kernel and arithmetic.avgpool_multiplier(*kernel, scale_all=scale_all_avgpool)
    if multiplier:
      mul = _scale_after(view, op, arithmetic.avgpool_scale(*kernel, scale_all=scale_all_avgpool))
      pool_scales[mul.name] = (op.name,) + tuple(multiplier)
    elif _is_hard_sigmoid(op):
      _scale_after(view, op, arithmetic.HARD_SIGMOID_FACTOR)
  return pool_scales


def replace_sigmoid(graph, scope):
  """Sigmoid(x) → relu6(x + 3)·(1/6), named under `<sigmoid>/hard_sigmoid/`."""
  view = GraphView(graph)
  for op in sorted(scope, key=lambda o: o.name):
    if op.type == "Sigmoid":
      consumers = view.consumers(op.outputs[0])
      with graph.name_scope(op.name + "/hard_sigmoid/"):
        x = op.inputs[0]
        hard = tf.multiply(tf.nn.relu6(x + tf.constant(3.0, x.dtype)),
                           tf.constant(1.0 / 6.0, x.dtype), name="mul")
      editor.reroute(op.outputs[0], hard, consumers)


def _average_kernel(op):
  """(kh, kw) of an NHWC AvgPool, or of a Mean over axes 1 and 2 with known H and W."""
  if op.type == "AvgPool" and op.get_attr("data_format") == b"NHWC":
    return tuple(op.get_attr("ksize")[1:3])
  if op.type == "Mean":
    axes = constant_value(op.inputs[1])
    shape = op.inputs[0].shape
    if (axes is not None and shape.rank == 4 and None not in shape.as_list()[1:3]
        and sorted(int(a) % 4 for a in np.atleast_1d(axes)) == [1, 2]):
      return tuple(shape.as_list()[1:3])
  return None


def _is_hard_sigmoid(op):
  """Mul(Relu6(x + 3), 1/6): Keras' and decent_q's hard-sigmoid."""
  if op.type != "Mul":
    return False
  for a, b in ((0, 1), (1, 0)):
    relu6, factor = op.inputs[a].op, constant_value(op.inputs[b])
    if (relu6.type == "Relu6" and factor is not None and np.size(factor) == 1
        and abs(float(factor) - 1.0 / 6.0) < 1e-6 and relu6.inputs[0].op.type in ("Add", "AddV2")):
      return any(np.size(v) == 1 and abs(float(v) - 3.0) < 1e-6
                 for v in (constant_value(t) for t in relu6.inputs[0].op.inputs) if v is not None)
  return False


def _scale_after(view, op, factor):
  """Multiplies `op`'s output by `factor` for all its consumers; returns the Mul op."""
  graph = op.graph
  consumers = view.consumers(op.outputs[0])
  with graph.name_scope(op.name + "/"):
    scale = tf.constant(factor, op.outputs[0].dtype, name="scale_value")
    scaled = tf.multiply(op.outputs[0], scale, name="mul")
  editor.reroute(op.outputs[0], scaled, consumers)
  return scaled.op
