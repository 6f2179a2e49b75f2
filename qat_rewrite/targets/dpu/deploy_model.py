"""Translates a frozen DPU eval graph into `deploy_model.pb`: the integer network.

Each weight layer becomes one node holding its integer weights and bias (`weights`, `bias`
tensors, `wpos`, `bpos`) with the batch norm already folded in; the fold arithmetic, bias add
and quantizers disappear; a node whose output is quantized carries `opos = [bits, pos]`, and
`ipos` lists the positions of its quantized inputs. Constant operands become attributes. The
format is documented in `reference_runner`, which executes it with integer arithmetic.
"""

import numpy as np
import tensorflow as tf
from absl import logging

from qat_rewrite.graph.view import constant_value
from qat_rewrite.layers import kind_of
from qat_rewrite.quant import pow2
from qat_rewrite.targets.dpu.plan import BIAS, WEIGHTS

_LAYER_ATTRS = ("strides", "padding", "dilations", "data_format", "T")


def build(graph, plan, positions, values, config, outputs):
  """Returns (deploy GraphDef, {eval model tensor: deploy node}) for `graph`'s rewrite: the
  deploy node of every output and of every quantized activation the outputs need."""
  t = _Translator(graph, plan, positions, values)
  for name, shape in zip(config.input_nodes, config.input_shapes):
    t.placeholder(name, shape)
  needed = tf.compat.v1.graph_util.extract_sub_graph(graph.as_graph_def(), outputs)
  order = [graph.get_operation_by_name(n.name) for n in _topological(needed)]
  for op in order:
    t.translate(op)
  missing = [name for name in outputs if name not in t.alias]
  if missing:
    raise ValueError("deploy model: output %s is not reached from the input nodes" % missing[0])
  activations = [p.name for p in plan.points if p.kind not in (WEIGHTS, BIAS)]
  tensor_map = {name: t.alias[name] for name in outputs + activations if name in t.alias}
  return t.finish(), tensor_map


class _Translator:
  def __init__(self, graph, plan, positions, values):
    self.graph, self.positions, self.values = graph, positions, values
    self.points = {p.name: p for p in plan.points}
    self.internal = tuple(p.name + "/" for p in plan.points)
    self.groups = {g.layer.name: g for g in plan.groups}
    self.absorbed = {name for g in plan.groups for name in g.absorbed}
    self.pool_scales = plan.pool_scales
    self.alias = {}  # eval-graph op name -> deploy node name
    self.nodes = {}  # deploy node name -> NodeDef, in creation order

  def placeholder(self, name, shape):
    self.nodes[name] = placeholder_node(name, shape)
    self.alias[name] = name

  def translate(self, op):
    name = op.name
    if name in self.alias or name.startswith(self.internal):
      return
    if name in self.points:
      point = self.points[name]
      source = self.alias.get(point.tensor.op.name)
      if point.kind not in (WEIGHTS, BIAS) and source:
        self.nodes[source].attr["opos"].list.i[:] = [point.bits, self.positions[name]]
        self.alias[name] = source
      return
    data = [t for t in op.inputs if t.op.name in self.alias]
    if not data or not op.outputs or not op.outputs[0].dtype.is_floating:
      return  # constants, weights and shape arithmetic become attributes where needed
    if name in self.groups:
      self._layer(op, self.groups[name])
    elif name in self.absorbed or op.type == "Identity":
      self.alias[name] = self.alias[data[0].op.name]
    elif name in self.pool_scales:
      pool, k, n = self.pool_scales[name]
      self.nodes[self.alias[pool]].attr["dpu_multiplier"].list.i[:] = [k, n]
      self.alias[name] = self.alias[pool]
    else:
      self._copy(op, data)

  def _new(self, name, op_type):
    node = tf.compat.v1.NodeDef(name=name, op=op_type)
    self.nodes[name] = node
    return node

  def _layer(self, op, group):
    kind = kind_of(op)
    node = self._new(op.name, op.type)
    for key in _LAYER_ATTRS:
      if key in op.node_def.attr:
        node.attr[key].CopyFrom(op.node_def.attr[key])
    node.input.append(self.alias[op.inputs[kind.data_input].op.name])
    weights = self.values[group.weights.name]
    if op.type == "MatMul":
      if op.get_attr("transpose_a"):
        raise ValueError("deploy model: %s uses transpose_a, which the DPU has no form for"
                         % op.name)
      weights = weights.T if op.get_attr("transpose_b") else weights
      for key in ("transpose_a", "transpose_b"):
        node.attr[key].b = False
    if op.type == "Conv2DBackpropInput":
      node.attr["output_shape"].list.i[:] = _static_shape(op.outputs[0])
    self._integer_attr(node, "weights", "wpos", group.weights, weights)
    if group.bias is not None:
      self._integer_attr(node, "bias", "bpos", group.bias, self.values[group.bias.name])
    self.alias[op.name] = op.name

  def _integer_attr(self, node, key, pos_key, point, value):
    pos = self.positions[point.name]
    ints = to_integers(value, point.bits, pos, point.rounding)
    node.attr[key].tensor.CopyFrom(tf.make_tensor_proto(ints))
    node.attr[pos_key].list.i[:] = [point.bits, pos]

  def _copy(self, op, data):
    node = self._new(op.name, op.type)
    for key, value in op.node_def.attr.items():
      if not key.startswith("_"):
        node.attr[key].CopyFrom(value)
    node.input.extend(self.alias[t.op.name] for t in data)
    for i, t in enumerate(op.inputs):
      if t.op.name in self.alias:
        continue
      value = constant_value(t)
      if op.type == "Reshape":
        node.attr["shape"].list.i[:] = _static_shape(op.outputs[0])
      elif value is None:
        logging.warning("deploy model: input %d of %s is neither data nor constant; dropped",
                        i, op.name)
      elif op.type in ("Concat", "ConcatV2"):
        node.attr["axis"].i = int(value)
      elif op.type in ("Mean", "Sum", "Max"):
        node.attr["reduction_indices"].list.i[:] = np.atleast_1d(value).tolist()
      elif op.type in ("Pad", "MirrorPad"):
        node.attr["paddings"].list.i[:] = np.asarray(value).ravel().tolist()
      else:
        node.attr["constant_%d" % i].tensor.CopyFrom(tf.make_tensor_proto(value))
    self.alias[op.name] = op.name

  def finish(self):
    """The GraphDef, with `ipos` on every node from its inputs' `opos`."""
    graph_def = tf.compat.v1.GraphDef()
    for node in self.nodes.values():
      ipos = [i for name in node.input for i in self.nodes[name].attr["opos"].list.i]
      if ipos:
        node.attr["ipos"].list.i[:] = ipos
      graph_def.node.append(node)
    return graph_def


def placeholder_node(name, shape):
  """A float32 Placeholder NodeDef of `shape` (-1: unknown), what input nodes become."""
  node = tf.compat.v1.NodeDef(name=name, op="Placeholder")
  node.attr["dtype"].type = tf.float32.as_datatype_enum
  node.attr["shape"].shape.CopyFrom(tf.TensorShape([None if d == -1 else d
                                                    for d in shape]).as_proto())
  return node


def to_integers(value, bits, pos, rounding=pow2.HALF_AWAY):
  """The integers q of `value` on the (bits, pos) grid: int8 up to 8 bits, else int16."""
  q = np.rint(pow2.quantize(value, bits, pos, rounding).astype(np.float64) * 2.0 ** pos)
  return q.astype(np.int8 if bits <= 8 else np.int16)


def _static_shape(tensor):
  """The static shape with -1 for unknown dims; at most one may be unknown."""
  dims = [-1 if d is None else d for d in tensor.shape.as_list()]
  if dims.count(-1) > 1:
    raise ValueError("deploy model: %s has shape %s; only the batch may be unknown"
                     % (tensor.name, tensor.shape))
  return dims


def _topological(graph_def):
  """NodeDefs ordered inputs first (a GraphDef from a rewritten graph need not be)."""
  nodes = {n.name: n for n in graph_def.node}
  order, state = [], {}
  for root in nodes:
    stack = [(root, False)]
    while stack:
      name, expanded = stack.pop()
      if expanded:
        state[name] = "done"
        order.append(nodes[name])
        continue
      if state.get(name):
        continue
      state[name] = "open"
      stack.append((name, True))
      for inp in nodes[name].input:
        parent = inp.lstrip("^").split(":")[0]
        if parent in nodes and not state.get(parent):
          stack.append((parent, False))
  return order
