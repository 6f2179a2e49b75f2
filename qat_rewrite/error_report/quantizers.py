"""Quantizers of an eval graph, their local error, and the float graph they stand in for.

Works on FakeQuant graphs (contrib, `qat_rewrite.quantize`, Ascend retrain) and on DPU eval models
(Identity `<op>/aquant|wquant` tagged `_bit_width`, `_quantize_pos`), live or frozen.

The float reference of such a graph is the graph itself with every quantizer bypassed: each
quantizer node becomes an Identity of the float tensor it reads, keeping its name. The copy has
every weight, fold and name of the eval graph, so each quantized tensor has a float twin of the
same name, and the difference between the two is the error of every quantizer upstream.
"""

import collections
import copy
import dataclasses
import heapq

import numpy as np
import tensorflow as tf

from qat_rewrite.error_report.rows import Row, sqnr_db, value_range
from qat_rewrite.graph.view import FAKE_QUANT_TYPES


@dataclasses.dataclass
class Quantizer:
  """One quantized tensor: its name, the tensors before and after, its grid as text (completed
  by the values of `range_tensors`, a FakeQuant's min and max, when measured)."""
  name: str
  float_tensor: tf.Tensor
  quantized_tensor: tf.Tensor
  grid: str
  range_tensors: tuple = ()


def find_quantizers(graph):
  """Every quantizer of `graph`, inputs before outputs."""
  found = []
  for op in _data_flow_order(graph):
    if op.type in FAKE_QUANT_TYPES:
      found.append(_fake_quant(op))
    elif "_quantize_pos" in op.node_def.attr:
      attr = op.node_def.attr
      grid = "%d-bit, pos %d" % (attr["_bit_width"].i, attr["_quantize_pos"].i)
      found.append(Quantizer(op.name, _outside_input(graph, op.name), op.outputs[0], grid))
  return found


def _data_flow_order(graph):
  """The ops of `graph` in a topological order, graph order among the ready ones."""
  ops = graph.get_operations()
  waiting = {op.name: len({t.op.name for t in op.inputs} | {c.name for c in op.control_inputs})
             for op in ops}
  readers = collections.defaultdict(list)
  for op in ops:
    for name in {t.op.name for t in op.inputs} | {c.name for c in op.control_inputs}:
      readers[name].append(op)
  index = {op.name: i for i, op in enumerate(ops)}
  ready = [(index[op.name], op) for op in ops if not waiting[op.name]]
  heapq.heapify(ready)
  ordered = []
  while ready:
    _, op = heapq.heappop(ready)
    ordered.append(op)
    for reader in readers[op.name]:
      waiting[reader.name] -= 1
      if not waiting[reader.name]:
        heapq.heappush(ready, (index[reader.name], reader))
  return ordered + [op for op in ops if waiting[op.name]]  # in a cycle (while loops)


def _fake_quant(op):
  bits = op.get_attr("num_bits")
  if op.type == "FakeQuantWithMinMaxArgs":
    grid = "%d-bit, [%g, %g]" % (bits, op.get_attr("min"), op.get_attr("max"))
    return Quantizer(op.name, op.inputs[0], op.outputs[0], grid)
  per_channel = " per channel" if op.type.endswith("PerChannel") else ""
  return Quantizer(op.name, op.inputs[0], op.outputs[0], "%d-bit%s" % (bits, per_channel),
                   (op.inputs[1], op.inputs[2]))


def _grid(quantizer, ranges):
  if not ranges:
    return quantizer.grid
  low, high = (np.asarray(v, np.float64) for v in ranges)
  if low.size == 1:
    return "%s, [%.4g, %.4g]" % (quantizer.grid, low.item(), high.item())
  return "%s, %d ranges within [%.4g, %.4g]" % (quantizer.grid, low.size, low.min(), high.max())


def _outside_input(graph, name):
  """The float tensor a power-of-two quantizer `name` reads: the one input of its `name/` ops
  that comes from outside them."""
  scope = name + "/"
  inside = [op for op in graph.get_operations() if op.name.startswith(scope)]
  sources = {t.ref(): t for op in inside for t in op.inputs
             if not t.op.name.startswith(scope) and t.dtype.is_floating}
  if len(sources) != 1:
    raise ValueError("cannot find the float input of quantizer %s (%d candidates)"
                     % (name, len(sources)))
  return next(iter(sources.values()))


def measure(sess, quantizers, feeds):
  """A Row per quantizer from one run of `sess` on `feeds`: range and local SQNR only."""
  return _measure(sess, quantizers, feeds)[0]


def _measure(sess, quantizers, feeds):
  """(rows, {quantized tensor name: value})."""
  fetches = {q.name: (q.float_tensor, q.quantized_tensor, q.range_tensors) for q in quantizers}
  values = sess.run(fetches, feeds)
  rows, quantized = [], {}
  for q in quantizers:
    x, y, ranges = values[q.name]
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    rows.append(Row(q.name, _grid(q, ranges), *value_range(x), sqnr_db(x, y)))
    quantized[q.quantized_tensor.name] = y
  return rows, quantized


def float_reference(graph_def):
  """A copy of `graph_def` (frozen) with every quantizer an Identity of its float input, names
  kept; a graph without quantizers comes back as it is."""
  graph = tf.Graph()
  with graph.as_default():
    tf.import_graph_def(graph_def, name="")
  bypass = {q.name: q.float_tensor for q in find_quantizers(graph)}
  if not bypass:
    return graph_def
  out = copy.deepcopy(graph_def)
  for node in out.node:
    if node.name in bypass:
      source = bypass[node.name]
      node.op = "Identity"
      node.input[:] = [source.op.name if source.value_index == 0 else source.name]
      node.ClearField("attr")
      node.attr["T"].type = source.dtype.as_datatype_enum
  return out


def run_by_name(graph_def, feeds, names):
  """{tensor name: value} of `graph_def` run once on `feeds` ({tensor or node name: array})."""
  with tf.Graph().as_default() as graph:
    tf.import_graph_def(graph_def, name="")
    with tf.compat.v1.Session(graph=graph) as sess:
      return sess.run({name: name for name in names}, tensor_name_feeds(feeds))


def tensor_name_feeds(feeds):
  """{"name:0": value} for feeds keyed by tf.Tensor, "name:0" or "name"."""
  named = {}
  for key, value in feeds.items():
    name = key if isinstance(key, str) else key.name
    named[name if ":" in name else name + ":0"] = value
  return named


def _quantizers_of(graph):
  quantizers = find_quantizers(graph)
  if not quantizers:
    raise ValueError("the graph has no quantizer (FakeQuant op, or DPU aquant/wquant): is it "
                     "the eval graph rewritten by qat_rewrite?")
  return quantizers


def _report(sess, graph_def, feeds):
  quantizers = _quantizers_of(sess.graph)
  feeds = tensor_name_feeds(feeds)
  rows, quantized = _measure(sess, quantizers, feeds)
  reference = run_by_name(float_reference(graph_def), feeds, list(quantized))
  for row, q in zip(rows, quantizers):
    name = q.quantized_tensor.name
    row.float_tensor = name
    row.float_sqnr_db = sqnr_db(reference[name], quantized[name])
  return rows


def eval_graph_report(sess, feeds):
  """Per-quantizer rows of the live eval graph in `sess` (variables initialised or restored),
  run on `feeds` (one batch, {placeholder tensor or name: array}). The float reference is built
  from a frozen copy; the graph and the session are left as they were."""
  quantizers = _quantizers_of(sess.graph)
  graph_def = tf.compat.v1.graph_util.convert_variables_to_constants(
      sess, sess.graph.as_graph_def(), sorted({q.quantized_tensor.op.name for q in quantizers}))
  return _report(sess, graph_def, feeds)


def frozen_graph_report(graph_def, feeds):
  """Per-quantizer rows of a frozen eval graph (a GraphDef: FakeQuant eval graph or DPU
  quantize_eval_model.pb) run on `feeds` ({node or tensor name: array})."""
  with tf.Graph().as_default() as graph:
    tf.import_graph_def(graph_def, name="")
    with tf.compat.v1.Session(graph=graph) as sess:
      return _report(sess, graph_def, feeds)
