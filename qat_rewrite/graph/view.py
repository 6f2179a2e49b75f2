"""Read-only questions about a tf.compat.v1 graph that the passes keep asking."""

import collections

import tensorflow as tf

from qat_rewrite.graph import roles

RELU_TYPES = ("Relu", "Relu6")
SHAPE_TYPES = ("Shape", "ShapeN", "Size", "Rank")  # read a tensor's shape, not its values
FAKE_QUANT_TYPES = frozenset({
    "FakeQuantWithMinMaxVars", "FakeQuantWithMinMaxArgs",
    "FakeQuantWithMinMaxVarsPerChannel"})
VARIABLE_TYPES = frozenset({"VarHandleOp", "VariableV2", "Variable"})
ASSIGN_TYPES = frozenset({
    "AssignSubVariableOp", "AssignVariableOp", "AssignAddVariableOp",
    "Assign", "AssignSub", "AssignAdd"})


CONTROL_FLOW_TYPES = ("If", "StatelessIf", "Switch", "Merge")


class GraphView:
  """A snapshot of `graph`'s ops and consumers, taken when the view is built.

  Edits made afterwards (new ops, reroutes) are not seen: a pass that edits asks only about
  ops its edits leave alone, and the next pass builds a new view.
  """

  def __init__(self, graph):
    self.graph = graph
    self.ops = graph.get_operations()
    self._behind_control_flow = self._conditional_models = None  # computed when first asked
    self._consumers = collections.defaultdict(list)
    for op in self.ops:
      for t in op.inputs:
        self._consumers[t.ref()].append(op)

  def consumers(self, tensor):
    return list(self._consumers.get(tensor.ref(), ()))

  def op_consumers(self, op):
    return [c for t in op.outputs for c in self.consumers(t)]

  def behind_control_flow(self):
    """The ops that read, directly or not, an output of a conditional (If, Switch, Merge)."""
    if self._behind_control_flow is None:
      self._behind_control_flow = self.readers_of(
          [op for op in self.ops if op.type in CONTROL_FLOW_TYPES])
    return self._behind_control_flow

  def conditional_models(self):
    """The ops downstream of a Placeholder that a conditional also reads from: the model a
    training-flag conditional selects (Keras' learning-phase copy of a model constructed in a
    graph reads its own `Input`, which training never feeds)."""
    if self._conditional_models is None:
      conditionals = self.behind_control_flow()
      self._conditional_models = set()
      for placeholder in (op for op in self.ops if op.type == "Placeholder"):
        readers = self.readers_of([placeholder])
        if any(op.type in CONTROL_FLOW_TYPES or op in conditionals for op in readers):
          self._conditional_models |= readers
    return self._conditional_models

  def readers_of(self, ops):
    """The ops that read, directly or not, an output of one of `ops`."""
    found, pending = set(), list(ops)
    while pending:
      for consumer in self.op_consumers(pending.pop()):
        if consumer not in found:
          found.add(consumer)
          pending.append(consumer)
    return found

  def is_dangling(self, op):
    """True if no output of `op` is consumed (a folded-away batch norm, say)."""
    return not any(self.consumers(t) for t in op.outputs)

  def followed_by_fake_quant(self, tensor, through=("Identity", "Reshape")):
    """True if `tensor` already feeds a FakeQuant, looking through `through` ops."""
    for consumer in self.consumers(tensor):
      if consumer.type in FAKE_QUANT_TYPES:
        return True
      if consumer.type in through and self.followed_by_fake_quant(consumer.outputs[0], through):
        return True
    return False

  def find_assigned_variable(self, tensor, max_depth=4):
    """The variable that an assign op downstream of `tensor` updates (moving averages).

    Returns the variable's handle or ref tensor, or None.
    """
    frontier, seen = [tensor], set()
    for _ in range(max_depth):
      next_frontier = []
      for t in frontier:
        for consumer in self.consumers(t):
          if consumer in seen:
            continue
          seen.add(consumer)
          if consumer.type in ASSIGN_TYPES:
            return consumer.inputs[0]
          next_frontier.extend(consumer.outputs)
      frontier = next_frontier
    return None


def is_fake_quantized(tensor):
  """True if `tensor` comes out of a quantizer (through its delay select, channel reshape or a
  training fold's unscale of the weights)."""
  return unwrapped_quantizer_output(tensor)[0].op.type in FAKE_QUANT_TYPES


def unwrapped_quantizer_output(tensor):
  """(`tensor` without what the rewrite puts after a quantizer: its delay select, its
  per-channel restore, a training fold's unscale of the weights; the delay condition or None)."""
  delay = None
  while True:
    op = tensor.op
    role = roles.of(op)
    if role == "delay_select":
      delay, tensor = op.inputs[0], op.inputs[1]
    elif role in ("per_channel_restore", "weight_unscale"):
      tensor = op.inputs[0]
    else:
      return tensor, delay


def is_weight_unscale(op):
  """The Mul by 1/s that a training fold puts between a layer's quantized weights and the layer
  (passes/fold_batch_norm.unscale_on_weights)."""
  return op.type == "Mul" and roles.of(op) == "weight_unscale"


def variable_source(tensor):
  """The variable op behind a weight read, or None if `tensor` is not a plain read."""
  op = tensor.op
  if op.type == "ReadVariableOp" and op.inputs[0].op.type in VARIABLE_TYPES:
    return op.inputs[0].op
  if op.type == "Identity":
    parent = op.inputs[0].op
    if parent.type in VARIABLE_TYPES:
      return parent
    if parent.type == "ConcatV2":
      return parent  # partitioned variable: the concat of the shards is the weight
  return None


def value_of(tensor, name):
  """`tensor` itself, or a fresh read if it is a variable's handle (resource) or ref tensor."""
  if tensor.dtype == tf.resource:
    dtype = tensor.op.get_attr("dtype")
    return tf.raw_ops.ReadVariableOp(resource=tensor, dtype=dtype, name=name)
  if tensor.dtype._is_ref_dtype:  # pylint: disable=protected-access
    return tf.identity(tensor, name=name)
  return tensor


_RANDOM_TYPES = frozenset({"RandomUniform", "RandomStandardNormal", "TruncatedNormal",
                           "StatelessRandomUniformV2", "StatelessRandomUniform"})
_MASK_TYPES = frozenset({"GreaterEqual", "Greater", "Less", "Cast", "Floor", "Add", "AddV2",
                         "Mul", "RealDiv", "Sub", "Identity"})
_SCALE_TYPES = ("Mul", "RealDiv")


def _random_mask(tensor, depth=5):
  """True if `tensor` is a random mask: computed from a random op by a few element-wise ops."""
  op = tensor.op
  if op.type in _RANDOM_TYPES:
    return True
  return depth > 0 and op.type in _MASK_TYPES and any(
      _random_mask(t, depth - 1) for t in op.inputs)


def dropout_input(op):
  """The tensor a dropout op passes on, or None if `op` is not one.

  Dropout (tf.nn.dropout, slim, Keras Dropout and stochastic depth) is a SelectV2 or Mul by a
  random mask, of the input scaled by 1/keep_prob; it runs in the training graph only, so the
  rewrite looks through it to place the same quantizers as in the eval graph. For the scaling
  op that only feeds a dropout, this is its own input as well.
  """
  if op.type in ("SelectV2", "Select", "Mul") and any(_random_mask(t) for t in op.inputs):
    data = [t for t in op.inputs if t.dtype.is_floating and not _random_mask(t)
            and constant_value(t) is None]
    if len(data) != 1:
      return None
    scaled = data[0].op
    if scaled.type in _SCALE_TYPES and len(scaled.outputs[0].consumers()) == 1:
      unscaled = _scaled_input(scaled)
      return data[0] if unscaled is None else unscaled
    return data[0]
  consumers = op.outputs[0].consumers() if op.type in _SCALE_TYPES else []
  if len(consumers) == 1 and dropout_input(consumers[0]) is not None:
    return _scaled_input(op)
  return None


def is_dropout(op):
  """True if `op` is the random select or mask multiply of a dropout."""
  return op.type in ("SelectV2", "Select", "Mul") and dropout_input(op) is not None and any(
      _random_mask(t) for t in op.inputs)


def _scaled_input(op):
  """x of `x * c` or `x / c` with a constant c, else None."""
  variable = [t for t in op.inputs if constant_value(t) is None]
  if len(variable) != 1 or (op.type == "RealDiv" and op.inputs[0] is not variable[0]):
    return None  # c / x scales nothing
  return variable[0]


def sole_relu_consumer(op):
  """The ReLU/ReLU6 that is the only consumer of `op`'s output, or None (TFLite fuses them)."""
  consumers = op.outputs[0].consumers()
  if len(consumers) == 1 and consumers[0].type in RELU_TYPES:
    return consumers[0]
  return None


def is_channel_vector(tensor):
  """True if `tensor` holds one value per channel: shape [C] or [1, ..., 1, C]. A scalar is
  not: `x + 3` (hard-swish) adds no bias."""
  shape = tensor.shape
  if shape.rank is None or shape.rank == 0:
    return False
  return all(d == 1 for d in shape.as_list()[:-1])


def is_activation_tensor(tensor):
  """Neither a channel vector nor a scalar: a residual operand, not a bias."""
  return tensor.shape.rank != 0 and not is_channel_vector(tensor)


def context(op_or_name):
  """The name scope of an op: `a/b/Conv2D` -> `a/b`, `Conv2D` -> ``."""
  name = getattr(op_or_name, "name", op_or_name)
  return name.rpartition("/")[0]


def join(scope, name):
  return "%s/%s" % (scope, name) if scope else name


def constant_value(tensor):
  return tf.get_static_value(tensor)


# Ops whose value the converter folds when every input is constant (Keras' Normalization layer
# computes `(x - cast(mean)) / maximum(sqrt(cast(variance)), epsilon)`).
_FOLDABLE_TYPES = ("Identity", "Cast", "Sqrt", "Rsqrt", "Reciprocal", "Maximum", "Minimum",
                   "Add", "AddV2", "Sub", "Mul", "RealDiv", "Neg", "Reshape")


def folded_constant(tensor):
  """The value of `tensor` if it is a constant or the converter folds it into one (stateless
  ops of constants only), else None. Computed in a session on `tensor`'s graph, which runs
  only those constants."""
  value = constant_value(tensor)
  if value is not None or not _folds(tensor.op, depth=8):
    return value
  with tf.compat.v1.Session(graph=tensor.graph) as session:
    return session.run(tensor)


def _folds(op, depth):
  if op.type == "Const":
    return True
  return (depth > 0 and op.type in _FOLDABLE_TYPES and not op.control_inputs
          and all(_folds(t.op, depth - 1) for t in op.inputs))


def topological_order(ops):
  """`ops` ordered so that every op comes after the ops among them it reads (data or control).

  Creation order stops being topological once a rewrite reroutes inputs to new ops.
  """
  wanted = set(ops)
  pending = {op: sum(1 for p in _producers(op) if p in wanted) for op in ops}
  readers = collections.defaultdict(list)
  for op in ops:
    for p in _producers(op):
      if p in wanted:
        readers[p].append(op)
  ready = [op for op in ops if not pending[op]]
  order = []
  while ready:
    op = ready.pop()
    order.append(op)
    for reader in readers[op]:
      pending[reader] -= 1
      if not pending[reader]:
        ready.append(reader)
  if len(order) != len(ops):
    raise ValueError("the graph has a cycle among %d ops (a while loop?)" % (len(ops) - len(order)))
  return order


def _producers(op):
  return [t.op for t in op.inputs] + list(op.control_inputs)


def subgraph_ops(graph, input_names, output_names):
  """The ops on a data path from an input op to an output op, both ends included.

  Weights and other constants feeding those ops are not in it: they belong to the op they feed.
  """
  view = GraphView(graph)
  downstream, frontier = set(), [graph.get_operation_by_name(n) for n in input_names]
  while frontier:
    op = frontier.pop()
    if op not in downstream:
      downstream.add(op)
      frontier.extend(view.op_consumers(op))
  upstream, frontier = set(), [graph.get_operation_by_name(n) for n in output_names]
  while frontier:
    op = frontier.pop()
    if op not in upstream:
      upstream.add(op)
      frontier.extend(t.op for t in op.inputs if t.op in downstream)
  return upstream & downstream
