"""Carries a rewrite done on a copy of a graph over to the graph itself, in one import.

A rewrite runs on a copy (`copy_of`), where a failure costs nothing. `graft` then compares
the copy's GraphDef with the one the copy was made from and brings the difference over:
- the new nodes, imported in one `import_graph_def` call, their inputs from the graph mapped
  to the graph's own tensors;
- the edits to existing nodes: rerouted inputs, added control inputs, changed attributes;
- the collections (variables re-created from their VariableDef, ops and tensors by name);
- the graph state (graph/state.py) and the rewrite's result, their tensors, ops and variables
  swapped for the graph's own of the same name;
- the Python functions of the py_funcs it built, which a graph keeps alive.

Everything that could stop it is checked before the graph is touched (`NotGraftable`); the
import itself is all or nothing. Some rewrites are not graftable, because part of what they
build lives in Python rather than in the GraphDef: v1 control flow (its contexts), mirrored
variables (an active tf.distribute strategy). The caller then rewrites the graph itself.
"""

import copy as copy_module
import dataclasses
import enum

import numpy as np
import tensorflow as tf
from tensorflow.core.framework import graph_pb2
from tensorflow.python.framework import ops as tf_ops

from qat_rewrite.graph import editor, state

_V1_CONTROL_FLOW = frozenset({"Enter", "Exit", "NextIteration", "LoopCond", "RefEnter",
                              "RefExit", "RefNextIteration"})
_PLAIN = (str, bytes, int, float, bool, type(None), np.ndarray, np.generic, tf.DType,
          tf.TensorShape, enum.Enum)


class NotGraftable(Exception):
  """The copy's rewrite cannot be carried over; the message says why."""


def copy_of(graph, plain=False):
  """(a new tf.Graph with `graph`'s ops and state, `graph`'s GraphDef), or (None, why not)
  where a rewrite of the copy could not be grafted. `plain`: any copy of the ops will do (a
  rehearsal), (None, why not) only for a graph over 2 GB."""
  if not plain and tf.distribute.has_strategy():
    return None, "a tf.distribute strategy is active"
  try:
    graph_def = graph.as_graph_def()
  except ValueError as e:  # over 2 GB
    return None, str(e)
  if not plain:
    try:
      if any(n.op in _V1_CONTROL_FLOW for n in graph_def.node):
        raise NotGraftable("the graph holds v1 control flow")
      _walk(state.everything(graph), set())
    except NotGraftable as e:
      return None, str(e)
  duplicate = tf.Graph()
  with duplicate.as_default():
    tf.import_graph_def(graph_def, name="")
  if not plain:
    _Translation(duplicate).state(graph, duplicate)
  return duplicate, graph_def


def graft(graph, rewritten, before, result=None):
  """Brings what a rewrite added to `rewritten` (a `copy_of(graph)`, made from GraphDef
  `before`) over to `graph`; returns `result` translated into `graph`. Raises NotGraftable,
  leaving `graph` as it was, if some of it cannot be carried over."""
  after = rewritten.as_graph_def()
  old = {n.name: n for n in before.node}
  new_nodes = [n for n in after.node if n.name not in old]
  edits = [_edit(n, old[n.name]) for n in after.node if n.name in old and n != old[n.name]]
  if any(n.op in _V1_CONTROL_FLOW for n in new_nodes):
    raise NotGraftable("the rewrite built v1 control flow")
  with rewritten.as_default():  # a VariableDef is written in graph mode only
    collections = _collection_protos(rewritten)
  imported, late_controls = _importable(new_nodes, old, after, before)
  translation = _Translation(graph)
  translation.check(state.everything(rewritten))
  translation.check(result)

  with graph.as_default():
    if imported.node:
      input_map = {name: graph.get_tensor_by_name(name)
                   for name in _external_inputs(imported, old)}
      tf.import_graph_def(imported, input_map=input_map, name="")
      editor.mark_scopes_used(graph, [n.name for n in imported.node])
    for name, controls in late_controls.items():
      editor.add_control_inputs(graph.get_operation_by_name(name),
                                [graph.get_operation_by_name(c) for c in controls])
    for edit in edits:
      edit.apply(graph)
    editor.keep_py_funcs(graph, editor.py_funcs(rewritten))
    translation.collections(collections)
    translation.state(rewritten, graph)
    return translation.value(result)


@dataclasses.dataclass
class _Edit:
  """What a rewrite changed in an existing node."""
  name: str
  inputs: dict  # input index -> new tensor name
  controls: list  # op names of added control inputs
  attrs: dict  # attribute name -> new AttrValue

  def apply(self, graph):
    op = graph.get_operation_by_name(self.name)
    for index, tensor in self.inputs.items():
      editor.replace_input(op, index, graph.get_tensor_by_name(tensor))
    if self.controls:
      editor.add_control_inputs(op, [graph.get_operation_by_name(c) for c in self.controls])
    for name, value in self.attrs.items():
      editor.set_attr(op, name, value)


def _edit(node, old):
  """The _Edit that turns NodeDef `old` into `node`, or NotGraftable."""
  if node.op != old.op or node.device != old.device:
    raise NotGraftable("the rewrite changed the type or device of %s" % node.name)
  data = [i for i in node.input if not i.startswith("^")]
  old_data = [i for i in old.input if not i.startswith("^")]
  controls = [i[1:] for i in node.input if i.startswith("^")]
  old_controls = {i[1:] for i in old.input if i.startswith("^")}
  if len(data) != len(old_data) or not old_controls <= set(controls):
    raise NotGraftable("the rewrite removed an input of %s" % node.name)
  if not set(old.attr) <= set(node.attr):
    raise NotGraftable("the rewrite removed an attribute of %s" % node.name)
  stripped, old_stripped = type(node)(), type(old)()
  for n, source in ((stripped, node), (old_stripped, old)):
    n.CopyFrom(source)
    del n.input[:]
    n.attr.clear()
  if stripped != old_stripped:
    raise NotGraftable("the rewrite changed %s beyond its inputs and attributes" % node.name)
  return _Edit(
      node.name,
      {i: _tensor_name(t) for i, (t, o) in enumerate(zip(data, old_data)) if t != o},
      [c for c in controls if c not in old_controls],
      {k: v for k, v in node.attr.items() if k not in old.attr or old.attr[k] != v})


def _importable(new_nodes, old, after, before):
  """(a GraphDef of the new nodes and new functions, {new node: control inputs from the old
  graph}): the importer maps data inputs to existing tensors but control inputs only to ops
  with outputs, so those are added after the import."""
  imported = graph_pb2.GraphDef()
  imported.versions.CopyFrom(after.versions)
  late = {}
  for node in new_nodes:
    copied = imported.node.add()
    copied.CopyFrom(node)
    del copied.input[:]
    for name in node.input:
      if name.startswith("^") and name[1:] in old:
        late.setdefault(node.name, []).append(name[1:])
      else:
        copied.input.append(name)
  known = {f.signature.name: f for f in before.library.function}
  for function in after.library.function:
    if function.signature.name not in known:
      imported.library.function.add().CopyFrom(function)
    elif function != known[function.signature.name]:
      raise NotGraftable("the rewrite changed function %s" % function.signature.name)
  if len(after.library.gradient) != len(before.library.gradient):
    raise NotGraftable("the rewrite added a function gradient")
  return imported, late


def _external_inputs(imported, old):
  """The tensor names, in `old`'s graph, that nodes of `imported` read."""
  names = set()
  for node in imported.node:
    for name in node.input:
      if not name.startswith("^") and name.split(":")[0] in old:
        names.add(_tensor_name(name))
  return names


def _tensor_name(name):
  return name if ":" in name else name + ":0"


def _collection_protos(rewritten):
  """{key: [item as a proto or name]} of the copy's collections (all the rewrite's: the copy
  started with none), or NotGraftable for an item that has no such form."""
  protos = {}
  for key in rewritten.get_all_collection_keys():
    to_proto = tf_ops.get_to_proto_function(key)
    items = []
    for item in rewritten.get_collection(key):
      if to_proto is not None:
        items.append(("proto", to_proto(item)))
      elif isinstance(item, (tf.Tensor, tf.Operation)):
        items.append(("name", item.name))
      elif isinstance(item, _PLAIN):
        items.append(("plain", item))
      else:
        raise NotGraftable("collection %r holds a %s" % (key, type(item).__name__))
    protos[key] = items
  return protos


class _Translation:
  """Swaps a value's tensors, ops and variables for those of the same name in `graph`,
  keeping shared objects shared (a plan's point is in several lists)."""

  def __init__(self, graph):
    self.graph = graph
    self.variables = {}
    self.memo = {}

  def check(self, value):
    """Raises NotGraftable if `value` holds something that cannot be translated."""
    _walk(value, set())

  def collections(self, protos):
    for key, items in protos.items():
      from_proto = tf_ops.get_from_proto_function(key)
      for kind, item in items:
        if kind == "proto":
          value = from_proto(item)
          if isinstance(value, tf.Variable):
            value = self.variables.setdefault(value.name, value)
        elif kind == "name":
          value = self.graph.as_graph_element(item)
        else:
          value = item
        self.graph.add_to_collection(key, value)

  def state(self, source, target):
    for key, value in state.everything(source).items():
      state.put(target, key, self.value(value))

  def value(self, value):
    if isinstance(value, _PLAIN):
      return value
    if id(value) in self.memo:
      return self.memo[id(value)]
    result = self._translated(value)
    self.memo[id(value)] = result
    return result

  def _translated(self, value):
    if isinstance(value, (tf.Tensor, tf.Operation)):
      return self.graph.as_graph_element(value.name)
    if isinstance(value, tf.Variable):
      if value.name not in self.variables:
        with value.graph.as_default():
          proto = value.to_proto()
        with self.graph.as_default():
          self.variables[value.name] = tf_ops.get_from_proto_function(
              tf.compat.v1.GraphKeys.GLOBAL_VARIABLES)(proto)
      return self.variables[value.name]
    if isinstance(value, tuple) and hasattr(value, "_fields"):
      return type(value)(*(self.value(v) for v in value))
    if isinstance(value, (list, tuple, set, frozenset)):
      duplicate = type(value)(self.value(v) for v in value)
    elif isinstance(value, dict):
      duplicate = type(value)((self.value(k), self.value(v)) for k, v in value.items())
    else:
      duplicate = copy_module.copy(value)
    self.memo[id(value)] = duplicate  # before the fields: they may lead back to it
    for name, field in getattr(value, "__dict__", {}).items():  # a list's `.report` too
      object.__setattr__(duplicate, name, self.value(field))
    return duplicate


def _walk(value, seen):
  if isinstance(value, _PLAIN) or isinstance(value, (tf.Tensor, tf.Operation, tf.Variable)):
    return
  if id(value) in seen:
    return
  seen.add(id(value))
  children = list(getattr(value, "__dict__", {}).values())
  if isinstance(value, (list, tuple, set, frozenset)):
    children += list(value)
  elif isinstance(value, dict):
    children += list(value.keys()) + list(value.values())
  elif callable(value) or not hasattr(value, "__dict__"):
    raise NotGraftable("the rewrite's result or state holds a %s" % type(value).__name__)
  for child in children:
    _walk(child, seen)
