"""Each rewrite runs on a copy and is grafted onto the user's graph in one import
(passes/transaction.py, graph/graft.py). The graph it leaves must be the one a rewrite of the
graph itself leaves: the same nodes, attributes, inputs, collections and report."""

import pytest
import tensorflow as tf

import ascend_models
import dpu_models
from qat_rewrite import amct, decent_q, quantize
from qat_rewrite.graph import graft, state
from qat_rewrite.targets.dpu import rewrite as dpu_rewrite

v1 = tf.compat.v1


def _contrib_training(graph, tmp_path):
  dpu_models.build(is_training=True)
  return quantize.experimental_create_training_graph(
      graph, quant_delay=5, symmetric=True, per_channel_weights=True)


def _contrib_eval(graph, tmp_path):
  dpu_models.build(is_training=False)
  return quantize.experimental_create_eval_graph(graph, requantize="xnnpack")


def _decent_q_training(graph, tmp_path):
  dpu_models.build(is_training=True)
  return decent_q.CreateQuantizeTrainingGraph(config=decent_q.QuantizeConfig(
      input_nodes=dpu_models.INPUT_NODES, output_nodes=dpu_models.OUTPUT_NODES,
      input_shapes=dpu_models.INPUT_SHAPES))


def _amct_calibration(graph, tmp_path):
  ascend_models.build(is_training=False)
  config = str(tmp_path / "config.json")
  amct.create_quant_config(config, graph, batch_num=1)
  return amct.quantize_model(graph, config, str(tmp_path / "record.txt"))


def _amct_retrain(graph, tmp_path):
  ascend_models.build(is_training=True)
  config = str(tmp_path / "config.json")
  amct.create_quant_retrain_config(config, graph)
  return amct.create_quant_retrain_model(graph, config, str(tmp_path / "record.txt"))


REWRITES = {"contrib_training": _contrib_training,
            "contrib_eval": _contrib_eval,
            "decent_q_training": _decent_q_training,
            "amct_calibration": _amct_calibration,
            "amct_retrain": _amct_retrain}


def _rewritten(rewrite, tmp_path):
  graph = tf.Graph()
  with graph.as_default():
    result = rewrite(graph, tmp_path)
  return graph, result


def _contents(graph):
  nodes = {n.name: n for n in graph.as_graph_def().node}
  for node in nodes.values():
    node.attr.pop("token", None)  # a py_func's: the process numbers its functions
  collections = {key: [getattr(item, "name", item) for item in graph.get_collection(key)]
                 for key in graph.get_all_collection_keys()}
  return nodes, collections


@pytest.mark.parametrize("name", sorted(REWRITES))
def test_the_grafted_graph_is_the_graph_a_rewrite_in_place_gives(name, tmp_path, monkeypatch):
  rewrite = REWRITES[name]
  grafted, real_graft = [], graft.graft

  def recording_graft(*args, **kwargs):
    result = real_graft(*args, **kwargs)
    grafted.append(True)
    return result

  monkeypatch.setattr(graft, "graft", recording_graft)
  graph, result = _rewritten(rewrite, tmp_path / "grafted")
  assert grafted

  real_copy = graft.copy_of
  monkeypatch.setattr(graft, "copy_of", lambda g, plain=False: (
      real_copy(g, plain=True) if plain else (None, "the test rewrites the graph itself")))
  in_place, in_place_result = _rewritten(rewrite, tmp_path / "in_place")

  nodes, collections = _contents(graph)
  expected_nodes, expected_collections = _contents(in_place)
  assert sorted(nodes) == sorted(expected_nodes)
  assert [n for n in nodes if nodes[n] != expected_nodes[n]] == []
  assert collections == expected_collections
  assert str(result).replace("grafted", "in_place") == str(in_place_result)


def test_what_the_rewrite_left_for_deploy_names_the_graphs_own_tensors(tmp_path):
  graph, _ = _rewritten(_decent_q_training, tmp_path)
  plan = dpu_rewrite.rewritten(graph).plan
  assert all(p.tensor.graph is graph for p in plan.points)
  assert all(c.graph is graph for p in plan.points for c in p.consumers)
  # Shared objects stay shared: a group's points are points of the plan.
  assert all(any(g.output is p for p in plan.points) for g in plan.groups)
  positions = dpu_rewrite.rewritten(graph).positions
  assert all(t.graph is graph for t in positions.values())
  # The variables grafted from their VariableDefs initialise and train in the graph's session.
  raw = graph.get_tensor_by_name("raw:0")
  images = next(dpu_models.batches(1, batch=2))[0]
  with graph.as_default(), v1.Session() as sess:
    sess.run(v1.global_variables_initializer())
    sess.run(v1.get_collection(v1.GraphKeys.UPDATE_OPS), {raw: images})
    found = sess.run(positions, {raw: images})
  assert set(found) == {p.name for p in plan.points}
  assert all(-128 <= int(p) <= 127 for p in found.values())


def test_a_graph_with_v1_control_flow_is_rewritten_in_place_after_a_rehearsal():
  graph = tf.Graph()
  with graph.as_default():
    v1.disable_control_flow_v2()
    try:
      x = v1.placeholder(tf.float32, [2, 8])
      v1.while_loop(lambda i: i < 3, lambda i: i + 1, [tf.constant(0)])
      tf.identity(v1.layers.dense(x, 4), name="out")
    finally:
      v1.enable_control_flow_v2()
  copy, reason = graft.copy_of(graph)
  assert copy is None and "v1 control flow" in reason
  quantize.create_training_graph(graph)
  assert any(op.type == "FakeQuantWithMinMaxVars" for op in graph.get_operations())


def test_a_copy_carries_the_graphs_state_over():
  graph = tf.Graph()
  with graph.as_default():
    x = v1.placeholder(tf.float32, [2], name="x")
  state.put(graph, "a test's record", {"tensor": x, "names": ["x"]})
  copy, _ = graft.copy_of(graph)
  record = state.get(copy, "a test's record")
  assert record["tensor"].graph is copy and record["tensor"].name == "x:0"
  assert record["names"] == ["x"]
