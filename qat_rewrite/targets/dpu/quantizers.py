"""Builds a plan's FixNeurons as stock TensorFlow ops and reroutes their consumers.

Each point `P` becomes `P/pos` (its int32 position) → `P/FixNeuron/...` (power-of-two fake
quantization, straight-through gradient) → `P` (an Identity with the point's exact name, what
decent_q's FixNeuron was called). Positions:
  training: activations and inputs use this batch's position and count it in
    `P/pos_histogram`; weights and biases use the position of their current values; a
    batch-norm-folded layer adds no bias, so the rounding error of the bias eval will add
    (its `simulated` bias point, at its own position: shift_bias would need the output's
    position, which depends on it) is added after the layer instead;
  eval: activations and inputs use the most frequent training position; weights and biases
    the position of their (final) values; then decent_q's eval adjustments run in order:
    align concat/pool inputs to the output, shift_cut (moves weights), shift_bias (moves biases).
"""

import functools

import tensorflow as tf

from qat_rewrite.graph import editor, roles, stamp
from qat_rewrite.quant import pow2
from qat_rewrite.targets.dpu import arithmetic
from qat_rewrite.targets.dpu.plan import ACTIVATION, INPUT, Point


FIX_NEURON_ROLE = "fix_neuron"  # a point's output Identity (graph/roles.py)


def build(graph, plan, training, use_resource, adjust_shift_cut=1, adjust_shift_bias=1):
  """Adds every point of `plan` to `graph`; returns {point name: its `P/pos` tensor}."""
  positions = _positions(graph, plan, training, use_resource)
  if not training:
    _align(plan, positions)
    for group in plan.groups:
      _adjust_shifts(group, positions, adjust_shift_cut, adjust_shift_bias)
  rounding_errors = {}  # output point -> the simulated bias's rounding error, to add before it
  pos_tensors = {}
  for point in plan.points:
    with graph.name_scope(point.name + "/"):
      pos = tf.identity(positions[point.name], name="pos")
      source = point.tensor
      if point.name in rounding_errors:
        source = tf.add(source, rounding_errors[point.name], name="bias_rounding")
      quantized = pow2.fake_quantize(source, point.bits, pos, point.rounding, name="FixNeuron")
      out = roles.mark(tf.identity(quantized, name=point.name + "/"),  # '/': the exact name
                       FIX_NEURON_ROLE)
    editor.reroute(point.tensor, out, point.consumers)
    pos_tensors[point.name] = pos
    if point.simulated:
      group = next(g for g in plan.groups if g.bias is point)
      error = tf.stop_gradient(out - point.tensor, name=point.name + "/rounding_error")
      _add_before_activation(graph, group, error, rounding_errors)
  return pos_tensors


def _add_before_activation(graph, group, error, rounding_errors):
  """Adds `error` to the layer's pre-activation output (where eval adds the bias)."""
  if group.activation is None:
    rounding_errors[group.output.name] = error
    return
  activation = graph.get_operation_by_name(group.activation)
  with graph.name_scope(group.bias.name + "/"):
    shifted = tf.add(activation.inputs[0], error, name="bias_rounding")
  editor.replace_input(activation, 0, shifted)


def _positions(graph, plan, training, use_resource):
  """{point name: its position tensor}, under `<point>/`. The position search is most of a
  FixNeuron's ops, so the positions are stamped from one template per kind (graph/stamp.py),
  in one import; under a tf.distribute strategy they are built op by op."""
  if tf.distribute.has_strategy():
    return _built_positions(graph, plan, training, use_resource)
  return _stamped_positions(graph, plan, training, use_resource)


def _built_positions(graph, plan, training, use_resource):
  with graph.as_default():
    return {p.name: _position(p, p.name + "/", p.tensor, training, use_resource)
            for p in plan.points}


def _stamped_positions(graph, plan, training, use_resource):
  if use_resource is None:
    use_resource = tf.compat.v1.resource_variables_enabled()
  copies = []
  for p in plan.points:
    template = _position_template(*stamp.rank_signature(p.tensor), p.kind, p.bits, p.method,
                                  p.depthwise, training, use_resource)
    copies.append((template, p.name + "/", [p.tensor]))
  return {p.name: pos for p, pos in zip(plan.points, stamp.stamp(graph, copies))}


@functools.lru_cache(maxsize=256)
def _position_template(dtype, shape, kind, bits, method, depthwise, training, use_resource):
  """The NodeDef template of one kind of position (protos only: it holds no graph)."""
  point = Point(name="", tensor=None, kind=kind, bits=bits, method=method, consumers=[],
                depthwise=depthwise)
  return stamp.template(
      lambda scope, x: _position(point, scope, x, training, use_resource),
      [(dtype, shape)])


def _position(point, scope, tensor, training, use_resource):
  """`tensor`'s position under `scope`: tracked over training for an activation or input, that
  of its values for weights and biases."""
  if point.kind in (INPUT, ACTIVATION):
    return pow2.tracked_position(tensor, point.bits, point.method, scope, training,
                                 point.rounding, use_resource=use_resource)
  with tf.compat.v1.get_default_graph().name_scope(scope):
    return pow2.choose_pos_tf(tensor, point.bits, point.method, point.rounding,
                              point.depthwise)


def _align(plan, positions):
  """Concat/pool inputs take the output's position; downstream ops first, so chains settle."""
  for out, inputs in reversed(plan.alignments):
    for point in inputs:
      positions[point.name] = positions[out.name]


def _adjust_shifts(group, positions, shift_cut_mode, shift_bias_mode):
  pi, po = positions[group.input.name], positions[group.output.name]
  pw = positions[group.weights.name]
  if shift_cut_mode:
    low, high = arithmetic.shift_cut_bounds(pi, po)
    pw = tf.clip_by_value(pw, low, high, name=group.weights.name + "/shift_cut_adjusted")
    positions[group.weights.name] = pw
  if group.bias is not None and shift_bias_mode:
    low, high = arithmetic.shift_bias_bounds(pi, pw, po, shift_bias_mode, group.kernel_elements,
                                             minimum=tf.minimum)
    positions[group.bias.name] = tf.clip_by_value(positions[group.bias.name], low, high,
                                                  name=group.bias.name + "/shift_bias_adjusted")
