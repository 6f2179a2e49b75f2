"""Copies of a subgraph built once, stamped into a graph in one import.

TensorFlow builds an op per Python call (about 0.25 ms each), and a rewrite adds hundreds of
quantizers that differ only in names and inputs. A `Template` is one such subgraph, built by its
own code in a scratch graph and kept as NodeDefs; `stamp` renames copies of it into their
scopes, points their inputs at the graph's tensors, and imports them all with one
`import_graph_def` call. Variables are re-created from their VariableDefs and the template's
collections are filled as building in place fills them, so the graph is the one that building
each copy in place gives, node for node.
"""

import dataclasses
from typing import Dict, List, Tuple

import tensorflow as tf
from tensorflow.core.framework import graph_pb2
from tensorflow.python.framework import ops as tf_ops

from qat_rewrite.graph import editor

_SCOPE = "qat_rewrite_template/"
_INPUT = "stamp_input_%d"


@dataclasses.dataclass
class Template:
  """NodeDefs of a subgraph under `_SCOPE`, its inputs' placeholder names, its output tensor's
  name, the ops it reads outside its scope (shared constants), and its collections as
  {key: [("variable", VariableDef) or ("name", op or tensor name)]}."""
  nodes: List
  inputs: List[str]
  output: str
  shared: List
  collections: Dict[str, List[Tuple[str, object]]]


def template(build, input_signature):
  """Builds `build(scope, *inputs)`, which returns a tensor, on placeholders of
  `input_signature` ((dtype, shape) pairs) in a scratch graph, and keeps it as a Template.
  Raises ValueError if it built something a GraphDef cannot carry (a function, a collection
  item that is neither a variable, an op nor a tensor)."""
  scratch = tf.Graph()
  with scratch.as_default():
    placeholders = [tf.compat.v1.placeholder(dtype, shape, name=_INPUT % i)
                    for i, (dtype, shape) in enumerate(input_signature)]
    output = build(_SCOPE, *placeholders)
    graph_def = scratch.as_graph_def()
    collections = {key: [_collection_item(item) for item in scratch.get_collection(key)]
                   for key in scratch.get_all_collection_keys()}
  if graph_def.library.function:
    raise ValueError("a template cannot hold functions")
  inputs = [p.op.name for p in placeholders]
  nodes = [n for n in graph_def.node if n.name.startswith(_SCOPE)]
  read = {name.lstrip("^").partition(":")[0] for n in nodes for name in n.input}
  if any(n.input for n in graph_def.node if n.name in read and n.name not in inputs
         and not n.name.startswith(_SCOPE)):
    raise ValueError("a template may read outside its scope only its inputs and constants")
  return Template(
      nodes=nodes, inputs=inputs, output=output.name,
      shared=[n for n in graph_def.node if n.name in read and not n.name.startswith(_SCOPE)
              and n.name not in inputs],
      collections=collections)


def rank_signature(tensor):
  """(dtype, shape) of a placeholder of `tensor`'s rank, unknown dimensions: what a template
  of ops that read only the rank is built on, so one template serves every shape."""
  rank = tensor.shape.rank
  return tensor.dtype, (None,) * rank if rank is not None else None


def _collection_item(item):
  if isinstance(item, tf.Variable):
    return "variable", item.to_proto()
  if isinstance(item, (tf.Tensor, tf.Operation)):
    return "name", item.name
  raise ValueError("a template's collection holds a %s" % type(item).__name__)


def stamp(graph, copies):
  """Imports one copy of a Template per `(template, scope, input tensors)` of `copies` into
  `graph`, each under its scope (absolute, ending in '/', already made unique); returns each
  copy's output tensor."""
  if not copies:
    return []
  graph_def = graph_pb2.GraphDef()
  graph_def.versions.CopyFrom(graph.graph_def_versions)
  input_map = {}
  shared = {}
  for number, (tmpl, scope, inputs) in enumerate(copies):
    renamed = _renamer(tmpl, scope, number)
    for placeholder, tensor in zip(tmpl.inputs, inputs):
      input_map[renamed(placeholder) + ":0"] = tensor
    for node in tmpl.nodes:
      copy = graph_def.node.add()
      copy.CopyFrom(node)
      copy.name = renamed(node.name)
      copy.input[:] = [_renamed_input(name, renamed) for name in node.input]
      for value in copy.attr.values():
        _rename_strings(value, scope)
    for node in tmpl.shared:
      shared.setdefault(node.name, node)
  for name, node in shared.items():
    if _has_op(graph, name):
      input_map.update({"%s:%d" % (name, i): t for i, t in
                        enumerate(graph.get_operation_by_name(name).outputs)})
    else:
      graph_def.node.add().CopyFrom(node)
  with graph.as_default():
    tf.import_graph_def(graph_def, input_map=_used(input_map, graph_def), name="")
    editor.mark_scopes_used(graph, [n.name for n in graph_def.node])
    outputs = []
    for number, (tmpl, scope, _) in enumerate(copies):
      renamed = _renamer(tmpl, scope, number)
      _fill_collections(graph, tmpl, renamed)
      outputs.append(graph.get_tensor_by_name(_renamed_input(tmpl.output, renamed)))
    return outputs


def _renamer(tmpl, scope, number):
  """The name in `graph` of a node of copy `number`: its scope for the template's, a name
  mapped to an input for a placeholder, the same name for a shared op."""
  inputs = set(tmpl.inputs)

  def renamed(name):
    if name.startswith(_SCOPE):
      return scope + name[len(_SCOPE):]
    if name in inputs:
      return "%s%s_%d" % (scope, name, number)
    return name
  return renamed


def _renamed_input(name, renamed):
  control = name.startswith("^")
  op_name, _, index = name.lstrip("^").partition(":")
  return ("^" if control else "") + renamed(op_name) + (":" + index if index else "")


def _rename_strings(value, scope):
  """Puts the copy's scope for the template's in a string attribute or string constant: a
  colocation (`loc:@<op>`), a variable's shared_name, a message naming an op."""
  if value.HasField("s"):
    value.s = _renamed_string(value.s, scope)
  elif value.HasField("list") and value.list.s:
    value.list.s[:] = [_renamed_string(s, scope) for s in value.list.s]
  elif value.HasField("tensor") and value.tensor.string_val:
    value.tensor.string_val[:] = [_renamed_string(s, scope) for s in value.tensor.string_val]


def _renamed_string(raw, scope):
  return raw.replace(_SCOPE.encode(), scope.encode())


def _fill_collections(graph, tmpl, renamed):
  for key, items in tmpl.collections.items():
    for kind, item in items:
      if kind == "variable":
        proto = type(item)()
        proto.CopyFrom(item)
        for field in ("variable_name", "initial_value_name", "initializer_name",
                      "snapshot_name"):
          setattr(proto, field, _renamed_input(getattr(proto, field), renamed))
        value = tf_ops.get_from_proto_function(key)(proto)
      else:
        value = graph.as_graph_element(_renamed_input(item, renamed))
      graph.add_to_collection(key, value)


def _has_op(graph, name):
  try:
    graph.get_operation_by_name(name)
    return True
  except KeyError:
    return False


def _used(input_map, graph_def):
  """The entries of `input_map` that some node reads (the importer refuses the others)."""
  read = {name if ":" in name else name + ":0"
          for node in graph_def.node for name in node.input if not name.startswith("^")}
  return {k: v for k, v in input_map.items() if k in read}
