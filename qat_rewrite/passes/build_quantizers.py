"""Turns a `QuantizerPlan` into ops: each point in plan order, so the grid it refers to is built
before it, then its edges are rerouted to read its output."""

from qat_rewrite.graph import editor
from qat_rewrite.graph.view import unwrapped_quantizer_output
from qat_rewrite.passes.quantizer_plan import BiasGrid, OwnRange, PoolRounding, SameGrid
from qat_rewrite.quant import fake_quant, pool_rounding


def build(graph, plan, settings):
  """Builds every point of `plan` in `graph` (a `Settings` says training, delay, variables);
  each point's report gets its scope."""
  built = {}  # point -> (its FakeQuant op, its delay condition or None)
  with graph.as_default():
    for point in plan.points:
      scope = editor.unique_scope(graph, point.name)
      quantized, delay = _BUILDERS[type(point.grid)](point, scope, settings, built)
      for op, index in point.edges:
        editor.replace_input(op, index, quantized)
      built[point] = (unwrapped_quantizer_output(quantized)[0].op, delay)
      if point.report is not None:
        point.report.quantizers.append(scope.rstrip("/"))


def _resolved(grid, built):
  """(FakeQuant op, delay condition or None) of a `Grid`."""
  return built[grid.point] if grid.point is not None else (grid.quantizer, grid.delay)


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
