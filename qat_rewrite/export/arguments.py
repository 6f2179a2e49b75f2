"""Argument checks both exporters share: paths, node names, input ranges and shapes.

Everything here runs before any conversion, so bad input fails fast and writes nothing.
"""

import os

import numpy as np
from absl import logging

from qat_rewrite import files
from qat_rewrite.export import frozen
from qat_rewrite.graph import roles


def prepare(model, input_nodes, output_nodes, checkpoint, given_ranges):
  """(frozen eval GraphDef cut to the quantized outputs, input nodes, quantized output
  nodes, {input: (min, max)}), after checking every argument."""
  input_nodes, output_nodes = names("input_nodes", input_nodes), names("output_nodes", output_nodes)
  full = frozen.load_graph_def(model)
  replaced = roles.replacements(full.node)  # an output that was a batch norm's last op: its fold
  output_nodes = [replaced[n].name if n in replaced else n for n in output_nodes]
  check_nodes_exist(full, input_nodes, "input")
  check_nodes_exist(full, output_nodes, "output")
  quantized_outputs = [frozen.quantized_output(full, name) for name in output_nodes]
  graph_def = frozen.freeze(full, quantized_outputs, checkpoint)
  check_inputs_feed_outputs(graph_def, input_nodes)
  return graph_def, input_nodes, quantized_outputs, input_ranges(graph_def, input_nodes,
                                                                 given_ranges)


def check_output_path(path):
  if not isinstance(path, (str, os.PathLike)) or not os.fspath(path):
    raise ValueError("output_path must be a file path, got %r" % (path,))
  path = os.path.abspath(os.fspath(path))
  if os.path.isdir(path):
    raise ValueError("output_path %r is a directory; give the .tflite file's path" % path)
  files.check_output_dir(os.path.dirname(path))
  return path


def names(argument, names):
  if isinstance(names, str):
    names = [names]
  names = list(names or [])
  if not names or not all(isinstance(n, str) and n for n in names):
    raise ValueError("%s must be a non-empty list of node names, got %r" % (argument, names))
  return [frozen.node_name(n) for n in names]


def check_nodes_exist(graph_def, names, kind):
  present = {n.name for n in graph_def.node}
  missing = [n for n in names if n not in present]
  if missing:
    raise ValueError("%s node(s) %s not in the graph" % (kind, ", ".join(map(repr, missing))))


def check_inputs_feed_outputs(graph_def, input_nodes):
  present = {n.name: n for n in graph_def.node}
  for name in input_nodes:
    if name not in present:
      raise ValueError("input node %r does not feed the outputs" % name)
    if present[name].op not in ("Placeholder", "PlaceholderWithDefault"):
      raise ValueError("input node %r is a %s, not a Placeholder" % (name, present[name].op))


def input_ranges(graph_def, input_nodes, given):
  given = dict(given or {})
  unknown = sorted(set(given) - set(input_nodes))
  if unknown:
    raise ValueError("input_ranges names %s, which is not in input_nodes %s"
                     % (", ".join(map(repr, unknown)), input_nodes))
  ranges = {}
  for name in input_nodes:
    learned = frozen.input_fake_quant_range(graph_def, name)
    if learned is not None:  # the converter takes the input's FakeQuant range, nudged to hold 0
      value_range = (min(float(learned[0]), 0.0), max(float(learned[1]), 0.0))
      if name in given and not np.allclose(given[name], value_range, rtol=0, atol=1e-6):
        logging.warning("input_ranges[%r] = %r ignored: the input's FakeQuant (input_quant) has "
                        "the range %r, which the converter uses", name, given[name], value_range)
    else:
      value_range = given.get(name)
    if value_range is None:
      raise ValueError("input %r has no FakeQuant range: pass input_ranges={%r: (min, max)}, "
                       "the float range of the values it is fed (e.g. (0.0, 1.0) for images "
                       "scaled to [0, 1])" % (name, name))
    low, high = (float(v) for v in value_range)
    if not low < high or not low <= 0.0 <= high:
      raise ValueError("input_ranges[%r] must be (min, max) with min < max and 0 in the "
                       "range, got %r" % (name, value_range))
    ranges[name] = (low, high)
  return ranges


def input_shapes(graph_def, input_nodes, given):
  given = dict(given or {})
  nodes = {n.name: n for n in graph_def.node}
  shapes = {}
  for name in input_nodes:
    if name in given:
      shapes[name] = [int(d) for d in given[name]]
      continue
    shape = nodes[name].attr["shape"].shape
    if shape.unknown_rank:
      raise ValueError("input %r has an unknown rank: pass input_shapes={%r: [...]}"
                       % (name, name))
    dims = [d.size for d in shape.dim]
    if any(d < 0 for d in dims[1:]):
      raise ValueError("input %r has shape %s: only the batch dimension may be unknown; pass "
                       "input_shapes" % (name, dims))
    shapes[name] = [1 if dims and dims[0] < 0 else d for d in dims[:1]] + dims[1:]
  return shapes
