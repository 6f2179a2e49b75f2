"""The report of an Ascend model, on its stock-TensorFlow twin `<save_path>_fake_quant.pb`.

The deploy model (`_quantized.pb`) needs AMCT's custom ops; its twin computes the same numbers
with stock ops (qat_rewrite.targets.ascend.deploy.fake_quant_model): per layer L,
`L/AscendQuant` = clip(round(x·scale) + offset) − offset (the integers the cube multiplies, as
floats) reading x through `L/AscendQuant/scaled`, and `L/AscendDequant` = L's integer sums times
scale_d·scale_w. The weights are only there as integers (batch norm folded into them), so the
float reference is the user's float graph: a row per quantized layer holds its data quantizer's
local SQNR (x against the integers times scale_d = 1/scale) and, against the float graph, the
first tensor after L/AscendDequant that the float graph has under the same name and shape (the
bias add, or the activation after a folded batch norm).
"""

import collections

import numpy as np
import tensorflow as tf

from qat_rewrite.error_report.quantizers import tensor_name_feeds
from qat_rewrite.error_report.rows import Row, sqnr_db, value_range

_QUANT, _DEQUANT = "/AscendQuant", "/AscendDequant"


def ascend_report(fake_quant_graph_def, float_graph_def, feeds):
  """Per-layer rows of an AMCT `<save_path>_fake_quant.pb` (a GraphDef) against the float graph
  it was quantized from, on one batch `feeds` ({placeholder name: array})."""
  feeds = tensor_name_feeds(feeds)
  float_graph = _imported(float_graph_def)
  graph = _imported(fake_quant_graph_def)
  layers = _layers(graph)
  if not layers:
    raise ValueError("the model has no AscendQuant layer: give AMCT's <save_path>_fake_quant.pb")
  consumers = collections.defaultdict(list)
  for op in graph.get_operations():
    for t in op.inputs:
      consumers[t.op.name].append(op)
  twins = {name: _float_twin(graph.get_operation_by_name(name + _DEQUANT), name, consumers,
                             float_graph) for name in layers}
  fetches = {name: (scaled.inputs[0], quant.outputs[0], scaled.inputs[1])
             for name, (quant, scaled) in layers.items()}
  fetches.update({"out:" + name: twin + ":0" for name, twin in twins.items() if twin})
  with tf.compat.v1.Session(graph=graph) as sess:
    values = sess.run(fetches, feeds)
  with tf.compat.v1.Session(graph=float_graph) as sess:
    reference = sess.run({twin: twin + ":0" for twin in twins.values() if twin}, feeds)
  rows = []
  for name, (quant, _) in layers.items():
    x, integers, scale = (np.asarray(v, np.float64) for v in values[name])
    offset = _const(graph, quant.name + "/offset")
    row = Row(name, "int8 data, scale_d %.4g, offset_d %d" % (1.0 / scale, offset),
              *value_range(x), sqnr_db(x, integers / scale))
    twin = twins[name]
    if twin:
      row.float_tensor = twin + ":0"
      row.float_sqnr_db = sqnr_db(reference[twin], values["out:" + name])
    else:
      row.note = "no tensor after %s%s has a float twin of the same name and shape" % (
          name, _DEQUANT)
    rows.append(row)
  return rows


def _imported(graph_def):
  graph = tf.Graph()
  with graph.as_default():
    tf.import_graph_def(graph_def, name="")
  return graph


def _layers(graph):
  """{layer name: (its AscendQuant op, the Mul by scale it reads)}, in graph order."""
  layers = {}
  for op in graph.get_operations():
    if op.name.endswith(_QUANT) and op.type == "Sub":
      try:
        scaled = graph.get_operation_by_name(op.name + "/scaled")
      except KeyError:
        continue
      layers[op.name[:-len(_QUANT)]] = (op, scaled)
  return layers


def _float_twin(dequant, layer, consumers, float_graph):
  """The name of the first op after `dequant` (breadth first) whose output the float graph has
  under the same name with the same static shape, or None."""
  seen, queue = set(), collections.deque([dequant])
  while queue:
    op = queue.popleft()
    for consumer in consumers[op.name]:
      if consumer.name in seen:
        continue
      seen.add(consumer.name)
      if _same_tensor(consumer, float_graph):
        return consumer.name
      queue.append(consumer)
  return None


def _same_tensor(op, float_graph):
  try:
    twin = float_graph.get_operation_by_name(op.name)
  except KeyError:
    return False
  if not op.outputs or not twin.outputs or not twin.outputs[0].dtype.is_floating:
    return False
  return op.outputs[0].shape.as_list() == twin.outputs[0].shape.as_list() if (
      op.outputs[0].shape.rank is not None and twin.outputs[0].shape.rank is not None) else True


def _const(graph, name):
  return float(tf.make_ndarray(graph.get_operation_by_name(name).get_attr("value")))
