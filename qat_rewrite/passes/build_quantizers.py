"""Turns a `QuantizerPlan` into ops: each point in plan order, so the grid it refers to is built
before it, then its edges are rerouted to read its output.

Points with a range of their own, most of a plan, and then the biases are stamped from NodeDef
templates, one import each (`graph/stamp.py`): one template per kind of quantizer, built by
`fake_quant` itself, so the graph is the one building each in place gives. Under a
tf.distribute strategy, whose replicas share ranges, they are built op by op, as the few
points on another quantizer's grid always are.
"""

import functools

import tensorflow as tf

from qat_rewrite.graph import editor, stamp
from qat_rewrite.graph.view import unwrapped_quantizer_output
from qat_rewrite.passes.quantizer_plan import BiasGrid, OwnRange, PoolRounding, SameGrid
from qat_rewrite.quant import fake_quant, pool_rounding


def build(graph, plan, settings):
  """Builds every point of `plan` in `graph` (a `Settings` says training, delay, variables);
  each point's report gets its scope. Biases come last, after every grid they read."""
  with graph.as_default():
    scopes = {point: editor.unique_scope(graph, point.name) for point in plan.points}
    # point -> (its quantized output, its FakeQuant op, its delay condition or None)
    built = {}
    stamped = _stamped_ranges(graph, plan, scopes, settings)
    for point in plan.points:
      if isinstance(point.grid, BiasGrid):
        continue
      quantized, delay = stamped.get(point) or _BUILDERS[type(point.grid)](
          point, scopes[point], settings, built)
      _attach(point, scopes[point], quantized, delay, built)
    biases = [point for point in plan.points if isinstance(point.grid, BiasGrid)]
    build_biases = _built_biases if tf.distribute.has_strategy() else _stamped_biases
    for point, quantized in zip(biases, build_biases(graph, biases, scopes, built)):
      _attach(point, scopes[point], quantized, None, built)


def _attach(point, scope, quantized, delay, built):
  """Makes the point's edges read `quantized`, and records it."""
  for op, index in point.edges:
    editor.replace_input(op, index, quantized)
  built[point] = (quantized, unwrapped_quantizer_output(quantized)[0].op, delay)
  if point.report is not None:
    point.report.quantizers.append(scope.rstrip("/"))


def _stamped_ranges(graph, plan, scopes, settings):
  """{point: (quantized output, delay condition or None)} of the OwnRange points, stamped in
  one import; {} under a tf.distribute strategy."""
  if tf.distribute.has_strategy():
    return {}
  use_resource = settings.use_resource
  if use_resource is None:
    use_resource = tf.compat.v1.resource_variables_enabled()
  copies, owners = [], []
  for point in plan.points:
    scope = scopes[point]
    if not isinstance(point.grid, OwnRange) or fake_quant.in_replica_scope(scope):
      continue
    delay = settings.delay_reached(scope + "activate_quant")
    grid, x = point.grid, point.tensor
    # Only a per-channel range reads the shape; other ops depend on the rank alone.
    dtype, shape = ((x.dtype, tuple(x.shape.as_list())) if grid.spec.per_channel
                    else stamp.rank_signature(x))
    template = _range_template(
        dtype, shape, grid.spec, tuple(grid.per_channel_shape or ()) or None, grid.nonnegative,
        grid.in_update_ops, settings.options.training, use_resource, delay is not None)
    copies.append((template, scope, [x] + ([delay] if delay is not None else [])))
    owners.append((point, delay))
  outputs = stamp.stamp(graph, copies)
  return {point: (quantized, delay) for (point, delay), quantized in zip(owners, outputs)}


def _built_biases(graph, biases, scopes, built):
  """The quantized bias of each BiasGrid point, built op by op."""
  del graph
  return [_bias(point, scopes[point], None, built)[0] for point in biases]


def _stamped_biases(graph, biases, scopes, built):
  """The quantized bias of each BiasGrid point, stamped in one import."""
  copies = []
  for point in biases:
    in_q, in_delay = _resolved(point.grid.input, built)
    w_q, w_delay = _resolved(point.grid.weights, built)
    delay = w_delay if w_delay is not None else in_delay
    ranges = list(in_q.inputs[1:3]) + list(w_q.inputs[1:3])
    inputs = [point.tensor] + ranges + ([delay] if delay is not None else [])
    template = _bias_template(tuple(stamp.rank_signature(t) for t in inputs), _grid_attrs(in_q),
                              _grid_attrs(w_q), delay is not None)
    copies.append((template, scopes[point], inputs))
  return stamp.stamp(graph, copies)


def _grid_attrs(quantizer):
  return quantizer.get_attr("num_bits"), quantizer.get_attr("narrow_range")


@functools.lru_cache(maxsize=256)
def _bias_template(signature, input_attrs, weight_attrs, delayed):
  """The NodeDef template of one kind of bias quantizer. It reads the input and weight ranges
  through stand-in FakeQuant ops outside its scope, which are not copied."""
  def build(scope, bias, in_min, in_max, w_min, w_max, *delay):
    stand_in = tf.compat.v1.placeholder(tf.float32, name="stand_in")
    in_q = tf.quantization.fake_quant_with_min_max_vars(
        stand_in, in_min, in_max, num_bits=input_attrs[0], narrow_range=input_attrs[1])
    w_fake_quant = (tf.quantization.fake_quant_with_min_max_vars_per_channel if w_min.shape.rank
                    else tf.quantization.fake_quant_with_min_max_vars)
    w_q = w_fake_quant(stand_in, w_min, w_max, num_bits=weight_attrs[0],
                       narrow_range=weight_attrs[1])
    with tf.compat.v1.get_default_graph().name_scope(scope):
      return fake_quant.quantize_bias(bias, in_q.op, w_q.op, delay[0] if delayed else None)
  return stamp.template(build, list(signature))


@functools.lru_cache(maxsize=256)
def _range_template(dtype, shape, spec, per_channel_shape, nonnegative, in_update_ops, training,
                    use_resource, delayed):
  """The NodeDef template of one kind of range quantizer (protos only: it holds no graph)."""
  def build(scope, x, *delay):
    return fake_quant.fake_quantize(
        x, spec, scope, training, list(per_channel_shape) if per_channel_shape else None,
        delay[0] if delayed else None, use_resource, nonnegative=nonnegative,
        in_update_ops=in_update_ops)
  return stamp.template(build, [(dtype, shape)] + ([(tf.bool, [])] if delayed else []))


def clear_templates():
  """Forgets the templates: for code that changes how `fake_quant` builds (a test swapping the
  per-channel gradient)."""
  _range_template.cache_clear()
  _bias_template.cache_clear()


def _resolved(grid, built):
  """(FakeQuant op, delay condition or None) of a `Grid`."""
  if grid.point is None:
    return grid.quantizer, grid.delay
  _, quantizer, delay = built[grid.point]
  return quantizer, delay


def _own_range(point, scope, settings, built):
  del built
  grid = point.grid
  delay = settings.delay_reached(scope + "activate_quant")
  quantized = fake_quant.fake_quantize(
      point.tensor, grid.spec, scope, settings.options.training, grid.per_channel_shape, delay,
      settings.use_resource, nonnegative=grid.nonnegative, in_update_ops=grid.in_update_ops)
  return quantized, delay


def _same_grid(point, scope, settings, built):
  del settings
  quantizer, delay = _resolved(point.grid.source, built)
  return fake_quant.fake_quantize_like(point.tensor, quantizer, scope, delay), delay


def _pool_rounding(point, scope, settings, built):
  del settings
  quantizer, delay = _resolved(point.grid.source, built)
  output = point.tensor
  with output.graph.name_scope(scope):
    nudged = pool_rounding.round_ties(output, quantizer, point.grid.kernel_elements,
                                      point.grid.ties)
    quantized = fake_quant.fake_quantize_like(nudged, quantizer, scope)
    if delay is not None:  # float until the input's quantizer switches on
      quantized = fake_quant.delay_select(delay, quantized, output)
  return quantized, delay


def _bias(point, scope, settings, built):
  del settings
  in_q, in_delay = _resolved(point.grid.input, built)
  w_q, w_delay = _resolved(point.grid.weights, built)
  delay = w_delay if w_delay is not None else in_delay
  with point.tensor.graph.name_scope(scope):
    return fake_quant.quantize_bias(point.tensor, in_q, w_q, delay), delay


_BUILDERS = {OwnRange: _own_range, SameGrid: _same_grid, PoolRounding: _pool_rounding}
