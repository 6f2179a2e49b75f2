"""The frozen eval graph every exporter starts from, and the names in it that matter.

An exporter takes a rewritten eval graph plus its checkpoint, or an already frozen GraphDef
(in memory or a .pb file). Either way it gets a GraphDef with constants for variables, cut
to what the outputs need, and learns from the FakeQuant ops where the quantized outputs and
the input ranges are. Bad input is refused here, before any file is touched.
"""

import copy
import os

import tensorflow as tf

from qat_rewrite.graph.frozen import (VARIABLE_TYPES, constants_from_checkpoint,
                                      resolve_checkpoint)
from qat_rewrite.graph.frozen import load_graph_def as load_graph_file
from qat_rewrite.passes import checkpoint as checkpoint_checks
from qat_rewrite.quant.integer_requantize import is_emulation
from qat_rewrite.quant.pool_rounding import is_ties_nudge

FAKE_QUANT_TYPES = ("FakeQuantWithMinMaxVars", "FakeQuantWithMinMaxVarsPerChannel",
                    "FakeQuantWithMinMaxArgs")
_ALIAS_TYPES = ("Identity",)
_RESHAPE_TYPES = ("Identity", "Reshape", "Squeeze", "ExpandDims")
# Ops between a model input and its quantizer that keep its range: reshapes, and zero or mirror
# padding (slim's conv2d_same, Keras ZeroPadding2D), since every range holds 0.
_RANGE_PRESERVING_TYPES = _RESHAPE_TYPES + ("Pad", "MirrorPad")


def load_graph_def(model, checkpoint=None):
  """A GraphDef from a tf.Graph, a GraphDef or a .pb path; variables still unresolved."""
  if isinstance(model, tf.Graph):
    return model.as_graph_def()
  if isinstance(model, tf.compat.v1.GraphDef):
    return model
  if isinstance(model, (str, os.PathLike)):
    return load_graph_file(os.fspath(model))
  raise ValueError("model must be a tf.Graph, a tf.compat.v1.GraphDef or a .pb path, got %r"
                   % (type(model).__name__,))


def freeze(model, output_nodes, checkpoint=None):
  """The frozen GraphDef of `model`, cut to `output_nodes` (names as given, checked).

  A graph with variables needs `checkpoint` (a directory: its latest; or a prefix); the
  variables are read from it, so neither the user's graph nor any session is touched.
  """
  graph_def = load_graph_def(model)
  nodes = {n.name: n for n in graph_def.node}
  missing = [name for name in output_nodes if name not in nodes]
  if missing:
    raise ValueError("output node(s) %s not in the graph" % ", ".join(map(repr, missing)))
  cut = tf.compat.v1.graph_util.extract_sub_graph(graph_def, list(output_nodes))
  variables = [n.name for n in cut.node if n.op in VARIABLE_TYPES]
  if not variables:
    return cut
  if checkpoint is None:
    raise ValueError("the graph reads %d variable(s) (e.g. %s): pass the checkpoint to read "
                     "them from, or a frozen GraphDef" % (len(variables), variables[0]))
  prefix = resolve_checkpoint(checkpoint)
  return constants_from_checkpoint(
      graph_def, prefix, output_nodes,
      check=lambda reader, variables: checkpoint_checks.check(graph_def, reader, prefix,
                                                           variables))


def without_ties_nudges(graph_def, output_nodes):
  """The frozen eval `graph_def` for a converter: each AvgPool ties nudge and each integer
  requantization bypassed (the exported model pools and requantizes its integers itself, see
  qat_rewrite.quant.pool_rounding and integer_requantize), cut to `output_nodes`. The eval
  graph, the reference of the agreement checks, keeps them."""
  nudges = {n.name: n.input[0] for n in graph_def.node
            if (is_ties_nudge(n) or is_emulation(n)) and n.op in ("Add", "AddV2")}
  if nudges:
    graph_def = copy.deepcopy(graph_def)
    for node in graph_def.node:
      for i, name in enumerate(node.input):
        if name in nudges or name.endswith(":0") and name[:-2] in nudges:
          node.input[i] = nudges[name.split(":")[0]]
  return tf.compat.v1.graph_util.extract_sub_graph(graph_def, list(output_nodes))


def node_name(tensor_or_node):
  """'a/b:0' and '^a/b' -> 'a/b'."""
  return tensor_or_node.lstrip("^").split(":")[0]


def consumers(graph_def):
  """{node name: [nodes reading one of its outputs]}."""
  result = {}
  for node in graph_def.node:
    for inp in node.input:
      if not inp.startswith("^"):
        result.setdefault(node_name(inp), []).append(node)
  return result


def quantized_output(graph_def, name):
  """The FakeQuant that quantizes node `name` (the rewrite puts one after a model's last
  layer), or `name` itself; the exported model must end at the quantized tensor."""
  nodes = {n.name: n for n in graph_def.node}
  readers = consumers(graph_def)
  current = nodes[name]
  while current.op not in FAKE_QUANT_TYPES:
    nexts = [c for c in readers.get(current.name, []) if c.op in FAKE_QUANT_TYPES + _ALIAS_TYPES
             or is_ties_nudge(c) or is_emulation(c)]
    if len(nexts) != 1:
      return name
    current = nexts[0]
  return current.name


def constant_value(graph_def, name):
  """The value of Const node `name`, following Identity ops; None if it is not constant."""
  nodes = {n.name: n for n in graph_def.node}
  node = nodes.get(node_name(name))
  while node is not None and node.op in _ALIAS_TYPES:
    node = nodes.get(node_name(node.input[0]))
  if node is None or node.op != "Const":
    return None
  return tf.make_ndarray(node.attr["value"].tensor)


def input_fake_quant_range(graph_def, input_name):
  """(min, max) of the FakeQuant reading input `input_name`, directly or through ops that keep
  its range (a dense layer's input quantizer reads the flattened input, a ResNet's first conv
  the zero-padded one), or None."""
  readers = consumers(graph_def)
  frontier = [input_name]
  while frontier:
    name = frontier.pop()
    for reader in readers.get(name, []):
      if reader.op == "FakeQuantWithMinMaxArgs":
        return float(reader.attr["min"].f), float(reader.attr["max"].f)
      if reader.op == "FakeQuantWithMinMaxVars":
        low, high = (constant_value(graph_def, reader.input[i]) for i in (1, 2))
        if low is not None and high is not None:
          return float(low), float(high)
      if reader.op in _RANGE_PRESERVING_TYPES and node_name(reader.input[0]) == name:
        frontier.append(reader.name)
  return None


def per_channel_fake_quants(graph_def):
  return [n.name for n in graph_def.node if n.op == "FakeQuantWithMinMaxVarsPerChannel"]
