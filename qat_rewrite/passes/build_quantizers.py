"""Turns a `QuantizerPlan` into ops: each point in plan order, so the grid it refers to is built
before it, then its edges are rerouted to read its output.

Points with a range of their own, most of a plan, are stamped from NodeDef templates in one
import (`graph/stamp.py`): one template per kind of quantizer, built by `fake_quant` itself, so
the graph is the one building each in place gives. Under a tf.distribute strategy, whose
replicas share ranges, they are built op by op.
"""

import functools

import tensorflow as tf

from qat_rewrite.graph import editor, stamp
from qat_rewrite.graph.view import unwrapped_quantizer_output
from qat_rewrite.passes.quantizer_plan import BiasGrid, OwnRange, PoolRounding, SameGrid
from qat_rewrite.quant import fake_quant, pool_rounding


def build(graph, plan, settings):
  """Builds every point of `plan` in `graph` (a `Settings` says training, delay, variables);
  each point's report gets its scope."""
  with graph.as_default():
    scopes = [editor.unique_scope(graph, point.name) for point in plan.points]
    built = _stamped_ranges(graph, plan, scopes, settings)
    # point -> (its quantized output, its FakeQuant op, its delay condition or None)
    for point, scope in zip(plan.points, scopes):
      if point in built:
        quantized, _, delay = built[point]
      else:
        quantized, delay = _BUILDERS[type(point.grid)](point, scope, settings, built)
      for op, index in point.edges:
        editor.replace_input(op, index, quantized)
      built[point] = (quantized, unwrapped_quantizer_output(quantized)[0].op, delay)
      if point.report is not None:
        point.report.quantizers.append(scope.rstrip("/"))


def _stamped_ranges(graph, plan, scopes, settings):
  """{point: (quantized output, FakeQuant op, delay)} of the OwnRange points, stamped in one
  import; {} under a tf.distribute strategy."""
  if tf.distribute.has_strategy():
    return {}
  use_resource = settings.use_resource
  if use_resource is None:
    use_resource = tf.compat.v1.resource_variables_enabled()
  copies, owners = [], []
  for point, scope in zip(plan.points, scopes):
    if not isinstance(point.grid, OwnRange) or fake_quant.in_replica_scope(scope):
      continue
    delay = settings.delay_reached(scope + "activate_quant")
    grid, x = point.grid, point.tensor
    # Only a per-channel range reads the shape; other ops depend on the rank alone.
    shape = (tuple(x.shape.as_list()) if grid.spec.per_channel
             else (None,) * x.shape.rank if x.shape.rank is not None else None)
    template = _range_template(
        x.dtype, shape, grid.spec, tuple(grid.per_channel_shape or ()) or None, grid.nonnegative,
        grid.in_update_ops, settings.options.training, use_resource, delay is not None)
    copies.append((template, scope, [x] + ([delay] if delay is not None else [])))
    owners.append((point, delay))
  outputs = stamp.stamp(graph, copies)
  return {point: (quantized, unwrapped_quantizer_output(quantized)[0].op, delay)
          for (point, delay), quantized in zip(owners, outputs)}


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


_BUILDERS = {OwnRange: _own_range, SameGrid: _same_grid, PoolRounding: _pool_rounding,
             BiasGrid: _bias}
