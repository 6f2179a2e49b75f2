"""Where decent_q puts its FixNeurons, decided before the graph is edited.

The rules (research decent_q.md §2.3): every input node gets an activation quantizer
(`<input>/aquant`, always method 0); every weight layer gets one on its weights and bias
(`<read>/wquant`) and one on the last op of its pattern, the activation or else the bias
(`<op>/aquant`; the DPU fuses conv, bias and ReLU, so nothing in between is quantized); an
element-wise, pooling, concat or shape op gets one on its output when all its data inputs are
quantized (after a ReLU that alone follows it). Ops outside the input→output subgraph and
patterns that touch `ignore_nodes` stay float.
"""

import dataclasses
from typing import Dict, List, Optional, Tuple

import tensorflow as tf

from qat_rewrite.graph.matcher import find_matches
from qat_rewrite.graph.view import (GraphView, dropout_input, sole_relu_consumer,
                                    topological_order)
from qat_rewrite.layers import kind_of
from qat_rewrite.layers.catalogue import LAYER_TYPES, UNSUPPORTED_COMPUTE_TYPES
from qat_rewrite.layers.patterns import compute_layer
from qat_rewrite.quant import pow2
from qat_rewrite.report import FloatOp

INPUT, WEIGHTS, BIAS, ACTIVATION = "input", "weights", "bias", "activation"
# decent_q 3.5's single-op patterns plus its element-wise ones: quantized when their inputs are.
OUTPUT_QUANTIZED_TYPES = frozenset({
    "Add", "AddV2", "AddN", "Mul", "Maximum", "Max", "AvgPool", "MaxPool", "Mean", "Pad",
    "MirrorPad", "Transpose", "Concat", "ConcatV2", "Squeeze", "Reshape", "ExpandDims", "Relu",
    "Relu6", "LeakyRelu", "Sum"})
CONCAT_TYPES = ("Concat", "ConcatV2")
POOL_TYPES = ("MaxPool", "AvgPool")
_CHAIN_ROLES = ("batch_to_space", "fold_scale", "folded_bn", "fold_reshape", "fold_reshape_back",
                "bias", "forced_updates")


@dataclasses.dataclass
class Point:
  """One FixNeuron: the tensor it quantizes, how, and which ops will read its output."""
  name: str
  tensor: tf.Tensor
  kind: str
  bits: int
  method: int
  consumers: List[tf.Operation]
  depthwise: bool = False
  # A folded bias that a training graph (batch-statistics fold) does not add: only its rounding
  # error is added after the layer, so that training sees what eval's bias quantizer does.
  simulated: bool = False

  @property
  def mode(self):
    """decent_q's FixNeuron mode: 0 weights, 1 activation, 2 depthwise weights."""
    if self.kind in (INPUT, ACTIVATION):
      return 1
    return 2 if self.depthwise else 0

  @property
  def rounding(self):
    return pow2.HALF_UP if self.mode == 1 else pow2.HALF_AWAY


@dataclasses.dataclass
class Group:
  """One weight layer with its quantizers: decent_q's node group (compute, in, out, w, b)."""
  layer: tf.Operation
  input: Point
  weights: Point
  bias: Optional[Point]
  output: Point
  absorbed: Tuple[str, ...]  # ops between the layer and its output that the DPU fuses
  activation: Optional[str]
  folded_batch_norm: Optional[str]

  @property
  def kernel_elements(self):
    """The products summed per output: kh·kw·c_in (kh·kw depthwise, K for a MatMul)."""
    return kind_of(self.layer).kernel_elements(self.layer, self.weights.tensor.shape.as_list())


@dataclasses.dataclass
class Plan:
  points: List[Point]
  groups: List[Group]
  alignments: List[Tuple[Point, List[Point]]]  # output point, the input points that follow it
  pool_scales: Dict[str, Tuple[str, int, int]]  # scale Mul -> (pool, k, n)
  float_ops: List[FloatOp]


@dataclasses.dataclass(frozen=True)
class Precision:
  """Bits and position method per point, with decent_q's per-node overrides."""
  weight_bit: int
  activation_bit: int
  method: int
  nodes_bit: Dict[str, int]
  nodes_method: Dict[str, int]

  def bits(self, kind, *names):
    default = self.weight_bit if kind in (WEIGHTS, BIAS) else self.activation_bit
    return next((self.nodes_bit[n] for n in names if n in self.nodes_bit), default)

  def method_for(self, kind, *names):
    if kind == INPUT:
      return 0  # decent_q: graph inputs always use non-overflow
    return next((self.nodes_method[n] for n in names if n in self.nodes_method), self.method)


def make_plan(graph, scope, input_names, ignore, precision, folds, pool_scales, align_concat,
              align_pool, output_names, replaced_outputs=None):
  """The plan for `graph` restricted to the ops in `scope` (see the module docstring), whose
  batch norms `folds` (fold_batch_norm.Folds) folded.

  `align_concat`/`align_pool` follow decent_q: 0 every op, 1 only those in `output_names`,
  2 none. `replaced_outputs` ({output name: tensor}) names the tensors a batch-norm fold put in
  place of output nodes: their quantizers are `<output name>/aquant`, as deploy expects.
  """
  builder = _Builder(graph, scope, precision, replaced_outputs or {})
  for name in input_names:
    if name not in ignore:
      op = graph.get_operation_by_name(name)
      builder.activation(op.outputs[0], INPUT, op.name)
  matches = [m for m in find_matches(compute_layer(), builder.view.ops, "layer",
                                     exclude=set(builder.view.ops) - scope)]
  by_layer = {m.op("layer"): m for m in matches}
  members, float_ops, alignments = set(), [], []
  for op in topological_order([op for op in builder.view.ops if op in scope]):
    if op in members:
      continue
    if op in by_layer:
      m = by_layer[op]
      members |= m.ops
      why = _float_reason(m, ignore)
      if why:
        float_ops.append(FloatOp(op.name, op.type, why))
      else:
        builder.group(m, folds.folded.get(op.name), folds)
    elif op.type == "Identity" and builder.quantized(op.inputs[0]):
      builder.alias(op.outputs[0], op.inputs[0])
    elif dropout_input(op) is not None:  # training only: eval reads its input
      if builder.quantized(dropout_input(op)):
        builder.alias(op.outputs[0], dropout_input(op))
    elif op.type in OUTPUT_QUANTIZED_TYPES and op.name not in ignore:
      inputs = [builder.quantized(t) for t in _data_inputs(op)]
      if inputs and all(inputs):
        target = _trailing(op, pool_scales)
        members |= {op, target}
        point = builder.activation(target.outputs[0], ACTIVATION, target.name, op.name)
        mode = align_concat if op.type in CONCAT_TYPES else align_pool
        if op.type in CONCAT_TYPES + POOL_TYPES and (mode == 0 or (mode == 1 and
                                                                   op.name in output_names)):
          alignments.append((point, inputs))
    elif op.type in LAYER_TYPES:
      float_ops.append(FloatOp(op.name, op.type, "no quantizable pattern matched"))
    elif op.type in UNSUPPORTED_COMPUTE_TYPES:
      float_ops.append(FloatOp(op.name, op.type, "%s is not a supported layer type" % op.type))
  for name in output_names:
    builder.name_after_output(graph.get_operation_by_name(name))
  float_ops.extend(FloatOp(op.name, op.type, "outside the input_nodes → output_nodes subgraph")
                   for op in builder.view.ops if op.type in LAYER_TYPES and op not in scope
                   and not builder.view.is_dangling(op))
  return Plan(builder.points, builder.groups, alignments, pool_scales, float_ops)


def _float_reason(m, ignore):
  layer = m.op("layer")
  kind = kind_of(layer)
  why = kind.supports(layer) if kind.supports else None
  hit = sorted(ignore & {op.name for op in m.ops})
  return why or ("matches ignore_nodes entry %r" % hit[0] if hit else None)


def _data_inputs(op):
  """Float inputs that carry data (not constants such as a Reshape's shape or a Pad's sizes)."""
  return [t for t in op.inputs if t.dtype.is_floating and t.op.type != "Const"]


def _trailing(op, pool_scales):
  """The op whose output is quantized for `op`: after a DPU scale Mul and a sole ReLU."""
  scale = next((c for c in op.outputs[0].consumers()
                if pool_scales.get(c.name, (None,))[0] == op.name), None)
  op = scale or op
  return sole_relu_consumer(op) or op


class _Builder:
  """Collects points and groups; one point per quantized tensor."""

  def __init__(self, graph, scope, precision, replaced_outputs):
    self.view = GraphView(graph)
    self.scope = scope
    self.precision = precision
    self._output_names = {t.ref(): name for name, t in replaced_outputs.items()}
    self.points, self.groups = [], []
    self._by_tensor = {}

  def quantized(self, tensor):
    return self._by_tensor.get(tensor.ref())

  def alias(self, tensor, source):
    self._by_tensor[tensor.ref()] = self._by_tensor[source.ref()]

  def _point(self, tensor, kind, suffix, names, consumers, depthwise=False):
    point = self._by_tensor.get(tensor.ref())
    if point is not None:
      point.consumers.extend(c for c in consumers if c not in point.consumers)
      return point
    point = Point("%s/%s" % (tensor.op.name, suffix), tensor, kind,
                  self.precision.bits(kind, *names), self.precision.method_for(kind, *names),
                  list(consumers), depthwise)
    self._by_tensor[tensor.ref()] = point
    self.points.append(point)
    return point

  def name_after_output(self, op):
    """An output node that only passes a quantized tensor on (an Identity, e.g. `net_out`)
    names that tensor's point `<output node>/aquant`: what deploy's outputs are called."""
    point = self.quantized(op.outputs[0]) if op.type == "Identity" else None
    if point is not None and point.tensor is not op.outputs[0]:
      point.name = "%s/aquant" % op.name

  def activation(self, tensor, kind, *names):
    """An `aquant` read by every consumer of `tensor` (outside the subgraph too, as decent_q)."""
    return self._point(tensor, kind, "aquant", names, self.view.consumers(tensor))

  def group(self, m, folded_batch_norm, folds):
    layer = m.op("layer")
    kind = kind_of(layer)
    data = layer.inputs[kind.data_input]
    pin = self.quantized(data) or self._point(
        data, ACTIVATION, "aquant", (data.op.name,),
        [c for c in self.view.consumers(data) if c in self.scope])
    weight = layer.inputs[kind.weight_input]
    pw = self._point(weight, WEIGHTS, "wquant", (weight.op.name, layer.name), [layer],
                     depthwise=kind.name == "depthwise_conv2d")
    pb = None
    if m.has("bias"):
      bias = m.tensor("bias_value")
      pb = self._point(bias, BIAS, "wquant", (bias.op.name,), [m.op("bias")])
    elif folded_batch_norm:
      bias = folds.eval_time_bias(layer.name)
      if bias is not None:
        pb = self._point(bias, BIAS, "wquant", (bias.op.name,), [])
        pb.simulated = True
    chain = [m.op(role) for role in _CHAIN_ROLES if m.has(role)]
    last = m.op("activation") or (chain[-1] if chain else layer)
    # Named after the op the user wrote (the batch norm, not the fold's arithmetic), so that
    # the training and eval graphs name it alike.
    named = m.op("activation").name if m.has("activation") else folded_batch_norm or last.name
    named = self._output_names.get(last.outputs[0].ref(), named)
    pout = self._by_tensor.get(last.outputs[0].ref())
    if pout is None:
      pout = Point(named + "/aquant", last.outputs[0], ACTIVATION,
                   self.precision.bits(ACTIVATION, named, last.name),
                   self.precision.method_for(ACTIVATION, named, last.name),
                   self.view.consumers(last.outputs[0]))
      self._by_tensor[last.outputs[0].ref()] = pout
      self.points.append(pout)
    self.groups.append(Group(layer, pin, pw, pb, pout, tuple(op.name for op in chain),
                             m.op("activation").name if m.has("activation") else None,
                             folded_batch_norm))
