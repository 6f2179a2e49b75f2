"""Quantizers decided before the graph is edited, and what a rule may ask of them.

A target's rules (`passes/insert_quantizers.py` for contrib and TFLite) add `Point`s to a
`QuantizerPlan`; `passes/build_quantizers.py` turns the plan into ops. Each point's `grid` says
how its grid relates to others: a range of its own (`OwnRange`), another quantizer's
(`SameGrid`), a pool's average rounded on its input's (`PoolRounding`), or a bias on the product
of its layer's input and weight steps (`BiasGrid`). A rule asks the plan, not the graph, whether
a tensor is quantized and on which grid, so it sees the points planned before it as if they
were built.
"""

import dataclasses
from typing import List, Optional, Tuple, Union

import tensorflow as tf

from qat_rewrite.passes.quantizer_grids import input_quantizer, weight_quantizer
from qat_rewrite.quant.spec import QuantSpec
from qat_rewrite.report import LayerReport


@dataclasses.dataclass(frozen=True)
class Grid:
  """The grid a rule refers to: a planned `point` (its delay is its own), or a FakeQuant op
  already in the graph (`quantizer`) with the delay condition it sits behind."""
  point: Optional["Point"] = None
  quantizer: Optional[tf.Operation] = None
  delay: Optional[tf.Tensor] = None


@dataclasses.dataclass(frozen=True)
class OwnRange:
  """A quantizer with range variables of its own."""
  spec: QuantSpec
  per_channel_shape: Optional[List[int]] = None  # the channels-last shape of depthwise weights
  nonnegative: bool = False  # a ReLU output: the minimum need not be measured
  in_update_ops: bool = False  # the training range update also joins UPDATE_OPS


@dataclasses.dataclass(frozen=True)
class SameGrid:
  """Rounds on `source`'s grid and reads its range: no variables (a concat, a shared max pool)."""
  source: Grid


@dataclasses.dataclass(frozen=True)
class PoolRounding:
  """An average pool's output rounded on its input's grid, ties nudged as the runtime breaks them."""
  source: Grid
  kernel_elements: int
  ties: str


@dataclasses.dataclass(frozen=True)
class BiasGrid:
  """A bias rounded to s_in·s_w, as TFLite adds it in int32."""
  input: Grid
  weights: Grid


@dataclasses.dataclass(eq=False)
class Point:
  """One quantizer to build: the tensor it quantizes, the scope asked for (made unique when
  built), the (op, input index) edges that will read its output, and how its grid is found.
  `report` lists the built scope; None for a bias, which reports a flag instead."""
  name: str
  tensor: tf.Tensor
  edges: List[Tuple[tf.Operation, int]]
  grid: Union[OwnRange, SameGrid, PoolRounding, BiasGrid]
  report: Optional[LayerReport]


def edges_of(tensor, consumers):
  """Every (op, index) at which an op of `consumers` reads `tensor`."""
  return [(op, i) for op in consumers for i, t in enumerate(op.inputs)
          if t.op is tensor.op and t.value_index == tensor.value_index]


class QuantizerPlan:
  """The points planned so far, in the order they will be built, over a snapshot `view` of the
  graph (`graph.view.GraphView`)."""

  def __init__(self, view):
    self.view = view
    self.points = []
    self._on_tensor = {}  # tensor name -> the point that quantizes it for every reader
    self._on_edge = {}  # (op name, input index) -> the point that edge will read

  def add(self, point):
    self.points.append(point)
    readers = edges_of(point.tensor, self.view.consumers(point.tensor))
    if all(edge in point.edges for edge in readers):  # not weights some other op reads too
      self._on_tensor.setdefault(point.tensor.name, point)
    for op, index in point.edges:
      self._on_edge[(op.name, index)] = point
    return point

  def read_by(self, op, index, point):
    """Makes input `index` of `op` read `point`'s output too (a weight shared by two layers)."""
    point.edges.append((op, index))
    self._on_edge[(op.name, index)] = point

  def on(self, tensor):
    """The point planned on `tensor` for every reader, or None."""
    return self._on_tensor.get(tensor.name)

  def quantized(self, tensor, through=("Identity", "Reshape")):
    """True if `tensor` feeds a FakeQuant already or a point is planned on it, looking through
    `through` ops."""
    if self.on(tensor) is not None or self.view.followed_by_fake_quant(tensor, through):
      return True
    return any(c.type in through and self.quantized(c.outputs[0], through)
               for c in self.view.consumers(tensor))

  def input_grid(self, tensor):
    """The Grid whose values `tensor` carries (through same-grid ops), or None."""
    found, delay = input_quantizer(tensor, planned=self.on)
    if found is None:
      return None
    return Grid(point=found) if isinstance(found, Point) else Grid(quantizer=found, delay=delay)

  def weight_grid(self, layer, index):
    """The Grid of the weights read at input `index` of `layer`, or None."""
    point = self._on_edge.get((layer.name, index))
    if point is not None:
      return Grid(point=point)
    quantizer, delay = weight_quantizer(layer.inputs[index])
    return Grid(quantizer=quantizer, delay=delay) if quantizer is not None else None
