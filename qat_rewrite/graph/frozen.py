"""Frozen GraphDefs: reading them with clear errors, and settling learning-phase switches.

A Keras model exported from TF 1.x in its learning phase keeps both batch-norm branches behind
`Switch`/`Merge` on `keras_learning_phase`, a PlaceholderWithDefault that nobody feeds at
inference. decent_q failed on these ("bad shape" while folding); here the switch is settled to
the branch its predicate takes when nothing is fed, and the other branch is dropped.
"""

import collections

import numpy as np
import tensorflow as tf
from google.protobuf import message
from tensorflow.core.protobuf import rewriter_config_pb2
from tensorflow.python.framework import op_def_registry


# Ops that pass their input through unchanged, when looking for a predicate's value.
_PASS_THROUGH = ("Identity", "PlaceholderWithDefault")
VARIABLE_TYPES = ("VarHandleOp", "VariableV2", "Variable")


def load_graph_def(path):
  """The GraphDef in `path`; ValueError naming the file if it is missing or not a GraphDef."""
  try:
    with open(path, "rb") as f:
      data = f.read()
  except OSError as e:
    raise ValueError("cannot read graph file %r: %s" % (path, e.strerror or e)) from e
  graph_def = tf.compat.v1.GraphDef()
  try:
    graph_def.ParseFromString(data)
  except message.DecodeError as e:
    raise ValueError("%r is not a binary GraphDef (.pb): %s" % (path, e)) from e
  if not graph_def.node:
    raise ValueError("%r holds no graph nodes: is it a binary GraphDef (.pb)?" % path)
  _check_ops_known(graph_def, path)
  return graph_def


def _check_ops_known(graph_def, path):
  """ValueError naming the nodes whose op type this TensorFlow has not registered."""
  functions = {f.signature.name for f in graph_def.library.function}
  unknown = {}
  for node in graph_def.node:
    if node.op not in functions and op_def_registry.get(node.op) is None:
      unknown.setdefault(node.op, node.name)
  if unknown:
    raise ValueError("%r uses op types TensorFlow %s does not know: %s. Was it written with "
                     "custom ops or a newer TensorFlow? Load the library that registers them "
                     "(tf.load_op_library) first" % (path, tf.__version__, ", ".join(
                         "%s (node %r)" % item for item in sorted(unknown.items()))))


def resolve_checkpoint(checkpoint):
  """A checkpoint prefix from a directory (its latest) or a prefix; ValueError if none."""
  if not isinstance(checkpoint, str) or not checkpoint:
    raise ValueError("checkpoint must be a checkpoint directory or prefix, got %r" % (checkpoint,))
  if tf.io.gfile.isdir(checkpoint):
    prefix = tf.train.latest_checkpoint(checkpoint)
    if prefix is None:
      raise ValueError("no checkpoint in directory %r (no 'checkpoint' index file)" % checkpoint)
    return prefix
  if not tf.io.gfile.exists(checkpoint + ".index"):
    raise ValueError("checkpoint %r not found (no %s.index)" % (checkpoint, checkpoint))
  return checkpoint


def constants_from_checkpoint(graph_def, prefix, needed, check=None):
  """`graph_def` cut to what the `needed` nodes read, each variable read replaced by its value
  in checkpoint `prefix`. `check(reader, {variable: shape the graph wants})`, if given, may
  refuse the checkpoint first. ValueError naming the checkpoint if it lacks a variable or holds
  one of another shape; nothing is run."""
  reader = tf.train.load_checkpoint(prefix)
  graph_def = tf.compat.v1.graph_util.extract_sub_graph(graph_def, list(needed))
  variables = {n.name: n for n in graph_def.node if n.op in VARIABLE_TYPES}
  wanted = {name: _shape(node) for name, node in variables.items()}
  if check is not None:
    check(reader, wanted)
  check_variables(reader, prefix, wanted)
  out = tf.compat.v1.GraphDef()
  out.versions.CopyFrom(graph_def.versions)
  out.library.CopyFrom(graph_def.library)
  for node in graph_def.node:
    read_of = node.input[0] if node.op == "ReadVariableOp" else None
    if node.op in VARIABLE_TYPES or read_of in variables:
      out.node.append(const_node(node.name, reader.get_tensor(read_of or node.name)))
    else:
      copy = out.node.add()
      copy.CopyFrom(node)
      if "_class" in copy.attr:
        del copy.attr["_class"]  # colocation with variables that are now constants
  return out


def _shape(variable_node):
  shape = variable_node.attr["shape"].shape
  return None if shape.unknown_rank else [d.size for d in shape.dim]


def check_variables(reader, prefix, wanted, missing_hint=""):
  """ValueError if checkpoint `prefix` lacks a variable of `wanted` ({name: shape or None}) or
  holds one of another shape."""
  saved = reader.get_variable_to_shape_map()
  for name in wanted:  # in graph order: the first layer's mismatch first
    if name in saved and wanted[name] is not None and wanted[name] != list(saved[name]):
      raise ValueError("checkpoint %r: variable %s has shape %s, the graph wants %s (a "
                       "checkpoint of another model?)" % (prefix, name, list(saved[name]),
                                                          wanted[name]))
  missing = sorted(name for name in wanted if name not in saved)
  if missing:
    raise ValueError("checkpoint %r lacks %d variable(s) the graph needs, e.g. %s%s"
                     % (prefix, len(missing), ", ".join(missing[:5]), missing_hint))


def const_node(name, value, dtype=None):
  """A Const NodeDef holding `value`."""
  value = np.asarray(value, dtype=dtype)
  node = tf.compat.v1.NodeDef(name=name, op="Const")
  node.attr["dtype"].type = tf.as_dtype(value.dtype).as_datatype_enum
  node.attr["value"].tensor.CopyFrom(tf.make_tensor_proto(value))
  return node


def import_graph_def(graph_def, path="graph"):
  """A new tf.Graph holding `graph_def` with its own names; errors name the file."""
  graph = tf.Graph()
  with graph.as_default():
    try:
      tf.import_graph_def(graph_def, name="")
    except (ValueError, tf.errors.OpError) as e:
      raise ValueError("%s cannot be loaded by this TensorFlow: %s" % (path, e)) from e
  return graph


def session_for_one_run(graph):
  """A Session on `graph` without Grappler's graph optimizations.

  They pay off over many runs; for one evaluation of a graph full of constants (the weights and
  positions a deploy reads from a checkpoint) their constant folding is most of the time: 27 of
  the 29 s of ResNet50's DPU deploy, with the same values computed either way.
  """
  config = tf.compat.v1.ConfigProto(graph_options=tf.compat.v1.GraphOptions(
      rewrite_options=rewriter_config_pb2.RewriterConfig(disable_meta_optimizer=True)))
  return tf.compat.v1.Session(graph=graph, config=config)


def run_graph_def(graph_def, feeds, outputs):
  """{output node: array} of `graph_def` run once in stock TensorFlow; feeds keyed by node.
  Without Grappler (`session_for_one_run` says why): a frozen graph is all constants, vgg_16's
  138 M weights among them."""
  with tf.Graph().as_default() as graph:
    tf.import_graph_def(graph_def, name="")
    with session_for_one_run(graph) as sess:
      return sess.run({name: name + ":0" for name in outputs},
                      {name + ":0": value for name, value in feeds.items()})


def settle_constant_switches(graph_def):
  """A copy of `graph_def` where every Switch whose predicate is constant when nothing is fed
  (a Const, or a PlaceholderWithDefault of one, through Identities) passes its input through,
  and every Merge takes its one live input. Returns (graph_def, number of switches settled)."""
  nodes = {node.name: node for node in graph_def.node}
  taken = {}  # switch name -> the output index that stays live (0: false, 1: true)
  for node in graph_def.node:
    if node.op == "Switch":
      value = _constant_bool(nodes, node.input[1])
      if value is not None:
        taken[node.name] = int(value)
  if not taken:
    return graph_def, 0
  dead = _dead_nodes(graph_def, nodes, taken)
  result = tf.compat.v1.GraphDef()
  result.versions.CopyFrom(graph_def.versions)
  result.library.CopyFrom(graph_def.library)
  for node in graph_def.node:
    if node.name in dead:
      continue
    new = result.node.add()
    new.CopyFrom(node)
    data = [i for i in node.input if not i.startswith("^")]
    live = [i for i in data if _source(i) not in dead and not _killed_by(i, taken)]
    if node.name in taken or (node.op == "Merge" and len(live) < len(data)):
      live = data[:1] if node.name in taken else live
      new.op = "Identity"
      del new.input[:]
      new.input.extend(live + [i for i in node.input if i.startswith("^")])
      for key in list(new.attr):
        if key != "T":
          del new.attr[key]
    new.input[:] = [_settled_input(i, taken) for i in new.input if _source(i) not in dead]
  return result, len(taken)


def _constant_bool(nodes, name):
  """The value of a boolean predicate when nothing is fed, or None if it is not constant."""
  node = nodes.get(_source(name))
  while node is not None and node.op in _PASS_THROUGH:
    node = nodes.get(_source(node.input[0])) if node.input else None
  if node is None or node.op != "Const":
    return None
  value = tf.make_ndarray(node.attr["value"].tensor)
  return bool(value) if value.size == 1 else None


def _dead_nodes(graph_def, nodes, taken):
  """Nodes that only run on a branch not taken: a dead input kills a node, except a Merge,
  which dies only when all its inputs are dead."""
  consumers = collections.defaultdict(list)
  for node in graph_def.node:
    for name in node.input:
      consumers[_source(name)].append((node, name))
  dead, frontier = set(), []
  for switch, index in taken.items():
    for consumer, name in consumers[switch]:
      if _output_index(name) == 1 - index and not name.startswith("^"):
        frontier.append(consumer)
  while frontier:
    node = frontier.pop()
    if node.name in dead:
      continue
    if node.op == "Merge" and any(_source(i) not in dead and not i.startswith("^")
                                  and not _killed_by(i, taken) for i in node.input):
      continue
    dead.add(node.name)
    frontier.extend(consumer for consumer, _ in consumers[node.name])
  return dead


def _killed_by(name, taken):
  """True if input `name` reads the untaken output of a settled switch."""
  source = _source(name)
  return source in taken and _output_index(name) == 1 - taken[source]


def _settled_input(name, taken):
  """A settled switch is an Identity: its live output is output 0."""
  return _source(name) if _source(name) in taken and not name.startswith("^") else name


def _source(name):
  return name.lstrip("^").split(":")[0]


def _output_index(name):
  parts = name.split(":")
  return int(parts[1]) if len(parts) > 1 else 0
