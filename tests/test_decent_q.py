"""The decent_q graph functions: what gets quantized, the config's effects, deploy files, errors."""

import dataclasses
import os

import numpy as np
import pytest
import tensorflow as tf

import dpu_models
from qat_rewrite import decent_q
from qat_rewrite.graph.view import is_weight_unscale
from qat_rewrite.quant import pow2
from qat_rewrite.targets.dpu import arithmetic, rewrite

v1 = tf.compat.v1


def _config(tmp_path, **changes):
  return decent_q.QuantizeConfig(input_nodes=dpu_models.INPUT_NODES,
                                 output_nodes=dpu_models.OUTPUT_NODES,
                                 input_shapes=dpu_models.INPUT_SHAPES,
                                 output_dir=str(tmp_path / "quantize_results"), **changes)


def _rewritten(config, training=True):
  """A fresh graph with the model, rewritten; returns (graph, report, {point name: point})."""
  graph = tf.Graph()
  with graph.as_default():
    dpu_models.build(is_training=training)
    create = (decent_q.CreateQuantizeTrainingGraph if training
              else decent_q.CreateQuantizeEvaluationGraph)
    report = create(config=config)
  return graph, report, {p.name: p for p in rewrite.rewritten(graph).plan.points}


def _train(config, directory, steps=30):
  """QAT for a few steps; returns the checkpoint directory."""
  graph = tf.Graph()
  with graph.as_default():
    raw, labels, _, loss = dpu_models.build(is_training=True)
    decent_q.CreateQuantizeTrainingGraph(config=config)
    with tf.control_dependencies(v1.get_collection(v1.GraphKeys.UPDATE_OPS)):
      train_op = v1.train.AdamOptimizer(1e-3).minimize(loss)
    with v1.Session() as sess:
      sess.run(v1.global_variables_initializer())
      for images, y in dpu_models.batches(steps):
        sess.run(train_op, {raw: images, labels: y})
      v1.train.Saver().save(sess, os.path.join(directory, "model.ckpt"))
  return directory


@pytest.fixture(scope="module")
def deployed(tmp_path_factory):
  """Trained, rewritten for eval, deployed; with the eval graph's outputs on one batch."""
  tmp_path = tmp_path_factory.mktemp("deployed")
  config = _config(tmp_path)
  ckpt = _train(config, str(tmp_path / "ckpt"))
  images = next(dpu_models.batches(1, batch=4, seed=7))[0]
  graph = tf.Graph()
  with graph.as_default():
    raw, _, _, _ = dpu_models.build(is_training=False)
    report = decent_q.CreateQuantizeEvaluationGraph(config=config)
    paths = decent_q.CreateQuantizeDeployGraph(checkpoint=ckpt, config=config)
    with v1.Session() as sess:
      v1.train.Saver().restore(sess, tf.train.latest_checkpoint(ckpt))
      net_in = sess.run("net_in:0", {raw: images})
      outputs = sess.run({p: p + ":0" for p in _point_names(graph)}, {raw: images})
  return dict(config=config, ckpt=ckpt, paths=paths, report=report, net_in=net_in,
              outputs=outputs, info=_read_info(paths["quantize_info.txt"]))


def _point_names(graph):
  return [p.name for p in rewrite.rewritten(graph).plan.points]


def _read_info(path):
  """quantize_info.txt as {tensor: (kind, bits, pos)} and {layer: (pi, pw, pb, po)}."""
  points, layers, section = {}, {}, 0
  for line in open(path):
    if line.startswith("#"):
      section += line.startswith("# layer") or line.startswith("# eval model tensor")
      continue
    fields = line.split()
    if section == 0:
      points[fields[0]] = (fields[1], int(fields[2]), int(fields[3]))
    elif section == 1:
      layers[fields[0]] = tuple(None if f == "-" else int(f) for f in fields[1:5])
  return points, layers


def _load(path):
  graph_def = v1.GraphDef()
  with open(path, "rb") as f:
    graph_def.ParseFromString(f.read())
  return graph_def


# Where the FixNeurons go ---------------------------------------------------------------------

EXPECTED_ACTIVATIONS = {
    "net_in/aquant", "relu1/aquant", "relu_a/aquant", "branch_b/relu6_b/aquant", "concat/aquant",
    "maxpool/aquant", "leaky/aquant", "shortcut/BiasAdd/aquant", "add_relu/aquant",
    "avgpool/mul/aquant", "gap/aquant", "logits/BiasAdd/aquant"}


def test_training_rewrite_places_fixneurons_like_decent_q(tmp_path):
  graph, report, points = _rewritten(_config(tmp_path))
  activations = {n for n, p in points.items() if p.kind in ("input", "activation")}
  assert activations == EXPECTED_ACTIVATIONS
  # Weight layers: weights and biases quantized, the conv output itself is not (DPU fuses it).
  assert sorted(report.quantized_weights) == sorted([
      "conv1/Conv2D", "branch_a/Conv2D", "branch_b/depthwise", "conv2/Conv2D",
      "shortcut/Conv2D", "logits/MatMul"])
  assert not {"conv1/Conv2D/aquant", "branch_a/Conv2D/aquant", "branch_a/BiasAdd/aquant",
              "bn1/FusedBatchNormV3/aquant"} & set(points)
  assert points["net_in/aquant"].method == 0  # graph inputs: non-overflow, always
  depthwise = [p for p in points.values() if p.kind == "weights" and p.depthwise]
  assert [p.mode for p in depthwise] == [2]
  # Pre- and post-processing outside input_nodes → output_nodes stay float.
  names = {op.name for op in graph.get_operations()}
  assert not any(n.startswith(("raw/", "mul/aquant", "probs/")) for n in names)
  probs = graph.get_operation_by_name("probs")
  assert probs.inputs[0].op.name == "logits/BiasAdd/aquant"  # consumers read the quantized output


def test_every_consumer_reads_the_quantized_tensor(tmp_path):
  graph, _, points = _rewritten(_config(tmp_path))
  for name, point in points.items():
    quantized = graph.get_tensor_by_name(name + ":0")
    for consumer in point.consumers:
      # A training fold may divide the quantized weights by its batch-norm scale on the way
      # (fold_batch_norm.unscale_on_weights): the conv then reads them through that Mul.
      read = [t.op.inputs[0] if is_weight_unscale(t.op) else t for t in consumer.inputs]
      assert quantized in read, (name, consumer.name)
      assert point.tensor not in read, (name, consumer.name)


def test_bits_methods_and_per_node_overrides(tmp_path):
  config = _config(tmp_path, weight_bit=6, activation_bit=7, method=0,
                   nodes_bit=["branch_a/Conv2D:4", "relu1:5"],
                   nodes_method=["relu_a:2", "branch_b/depthwise:2"])
  _, _, points = _rewritten(config)
  branch_a_weights = next(p for p in points.values()
                          if p.kind == "weights" and "branch_a" in p.name)
  assert branch_a_weights.bits == 4  # a compute op's name sets its weights
  assert points["relu1/aquant"].bits == 5
  assert points["relu_a/aquant"].bits == 7 and points["relu_a/aquant"].method == 2
  assert points["leaky/aquant"].bits == 7 and points["leaky/aquant"].method == 0
  assert all(p.bits == 6 for p in points.values() if p.kind in ("weights", "bias")
             and "branch_a" not in p.name)


def test_ignore_nodes_keep_a_whole_pattern_float(tmp_path):
  _, report, points = _rewritten(_config(tmp_path, ignore_nodes=["relu_a"]))
  assert "branch_a/Conv2D" not in report.quantized_weights
  assert not any("branch_a" in n or n.startswith("relu_a") for n in points)
  assert any(f.op == "branch_a/Conv2D" and "ignore_nodes" in f.reason for f in report.float_ops)
  # The concat now has an unquantized input, so it is not quantized either.
  assert "concat/aquant" not in points


def test_simulate_dpu_changes_leaky_relu_and_average_pools(tmp_path):
  graph, _, _ = _rewritten(_config(tmp_path))
  assert graph.get_operation_by_name("leaky").get_attr("alpha") == pytest.approx(26 / 256)
  scale = v1.Session(graph=graph).run("avgpool/scale_value:0")
  assert scale == pytest.approx(arithmetic.avgpool_scale(3, 3)) and scale == pytest.approx(63 / 64)
  # Global pooling over 8x8 divides by a power of two, which the DPU does exactly: no scale.
  assert "gap/mul" not in {op.name for op in graph.get_operations()}
  graph, _, _ = _rewritten(_config(tmp_path, simulate_dpu=0))
  assert graph.get_operation_by_name("leaky").get_attr("alpha") == pytest.approx(0.1)
  assert "avgpool/mul" not in {op.name for op in graph.get_operations()}


def test_replace_sigmoid_uses_the_hard_sigmoid(tmp_path):
  graph = tf.Graph()
  with graph.as_default():
    x = v1.placeholder(tf.float32, [None, 4, 4, 2], name="net_in")
    y = tf.sigmoid(_conv(x), name="sig")
    out = tf.identity(y * 2.0, name="out")
    config = decent_q.QuantizeConfig(input_nodes=["net_in"], output_nodes=["out"],
                                     input_shapes=[[-1, 4, 4, 2]], replace_sigmoid=1)
    decent_q.CreateQuantizeTrainingGraph(config=config)
    with v1.Session() as sess:
      sess.run(v1.global_variables_initializer())
      data = np.linspace(-8, 8, 64, dtype=np.float32).reshape(2, 4, 4, 2)
      got = sess.run(out, {x: data})
  assert "hard_sigmoid" in graph.get_operation_by_name("mul").inputs[0].name
  assert graph.get_operation_by_name("sig").outputs[0].consumers() == []
  assert np.all(got >= 0) and np.all(got <= 2.0)


def _conv(x):
  return v1.layers.conv2d(x, 2, 1, name="conv", kernel_initializer=v1.ones_initializer())


def test_training_adds_the_rounding_error_of_the_folded_bias_eval_quantizes(tmp_path):
  """A batch-norm-folded layer adds no bias in training (its batch norm does), but eval adds the
  folded bias at weight_bit bits (at 4 bits, the MNIST CNN's conv1 bias alone took QAT from 97%
  to 80%). Training adds that bias's rounding error before the activation, under the eval
  point's name."""
  config = _config(tmp_path, weight_bit=4)
  graph, report, points = _rewritten(config)
  _, _, eval_points = _rewritten(config, training=False)
  name = "conv1/BatchNorm_Fold/bias/wquant"
  assert points[name].simulated and points[name].kind == "bias" and name in eval_points
  assert not eval_points[name].simulated
  assert name in next(l for l in report.layers if l.layer == "conv1/Conv2D").quantizers
  relu = graph.get_operation_by_name("relu1")
  shifted = relu.inputs[0].op
  assert shifted.name == name + "/bias_rounding"
  with graph.as_default(), v1.Session() as sess:
    sess.run(v1.global_variables_initializer())
    # Move the batch norm's beta off the 4-bit grid, as training would.
    beta = next(v for v in v1.global_variables() if v.op.name == "bn1/beta")
    sess.run(beta.assign(np.linspace(-0.9, 0.8, 8).astype(np.float32)))
    feed = {"raw:0": next(dpu_models.batches(1))[0]}
    before, after, bias, quantized, pos = sess.run(
        [shifted.inputs[0], shifted.outputs[0], points[name].tensor, name + ":0",
         name + "/pos:0"], feed)
  step = 2.0 ** -pos
  np.testing.assert_allclose(quantized / step, np.round(quantized / step))  # on the grid
  assert np.abs(quantized - bias).max() > 0  # 4 bits: the error is not zero
  np.testing.assert_allclose(after - before, np.broadcast_to(quantized - bias, after.shape),
                             atol=1e-6)


# Positions: training follows the data, eval is stable and obeys the DPU limits --------------

def test_training_positions_follow_each_batch(tmp_path):
  graph, _, _ = _rewritten(_config(tmp_path))
  with graph.as_default(), v1.Session() as sess:
    sess.run(v1.global_variables_initializer())
    pos = graph.get_tensor_by_name("net_in/aquant/pos:0")
    images = next(dpu_models.batches(1))[0]
    big = sess.run(pos, {"raw:0": images})  # inputs up to 1.0: pos 6
    small = sess.run(pos, {"raw:0": images / 8})  # up to 1/8: three steps finer
    histogram = sess.run(next(v for v in v1.global_variables()
                              if v.op.name == "net_in/aquant/pos_histogram"))
  assert (big, small) == (6, 9)
  assert histogram[6 - pow2.MIN_TRACKED_POS] == 1 and histogram[9 - pow2.MIN_TRACKED_POS] == 1


def test_eval_positions_obey_shift_limits_and_concat_alignment(deployed):
  points, layers = deployed["info"]
  for layer, (pi, pw, pb, po) in layers.items():
    low, high = arithmetic.shift_cut_bounds(pi, po)
    assert low <= pw <= high, layer
    if pb is not None:
      low, high = arithmetic.shift_bias_bounds(pi, pw, po)
      assert low <= pb <= high, layer
  concat_pos = points["concat/aquant"][2]
  assert points["relu_a/aquant"][2] == concat_pos == points["branch_b/relu6_b/aquant"][2]
  assert points["maxpool/aquant"][2] == points["concat/aquant"][2]  # align_pool: input follows


def test_align_concat_off_keeps_input_positions(tmp_path):
  graph, _, _ = _rewritten(_config(tmp_path, align_concat=2, align_pool=2), training=False)
  pos = {op.name for op in graph.get_operations() if op.name.endswith("aquant/pos")}
  relu_a = graph.get_operation_by_name("relu_a/aquant/pos")
  assert "concat" not in relu_a.inputs[0].op.name and "relu_a/aquant/pos" in pos


def test_eval_fixneurons_quantize_on_the_grid_with_activation_rounding(deployed):
  points, _ = deployed["info"]
  for name, value in deployed["outputs"].items():
    kind, bits, pos = points[name]
    rounding = pow2.HALF_UP if kind in ("input", "activation") else pow2.HALF_AWAY
    np.testing.assert_array_equal(value, pow2.quantize(value, bits, pos, rounding), err_msg=name)


# Deploy files ---------------------------------------------------------------------------------

def test_deploy_writes_the_four_files(deployed):
  names = sorted(os.path.basename(p) for p in deployed["paths"].values())
  assert names == ["deploy_model.pb", "quantize_eval_model.pb", "quantize_eval_model_fixneuron.pb",
                   "quantize_info.txt"]
  assert sorted(os.listdir(deployed["config"].output_dir)) == names  # no temporary files left
  points, layers = deployed["info"]
  assert set(points) == set(deployed["outputs"])
  assert set(layers) == {"conv1/Conv2D", "branch_a/Conv2D", "branch_b/depthwise", "conv2/Conv2D",
                         "shortcut/Conv2D", "logits/MatMul"}


def test_quantize_eval_model_runs_in_stock_tensorflow_and_matches_the_eval_graph(deployed):
  graph_def = _load(deployed["paths"]["quantize_eval_model.pb"])
  assert {n.op for n in graph_def.node}.isdisjoint({"VarHandleOp", "VariableV2", "ReadVariableOp",
                                                    "Assert"})
  net_in = graph_def.node[[n.name for n in graph_def.node].index("net_in")]
  assert net_in.op == "Placeholder"
  assert [d.size for d in net_in.attr["shape"].shape.dim] == [-1, 16, 16, 3]
  with tf.Graph().as_default() as graph:
    tf.import_graph_def(graph_def, name="")
    with v1.Session() as sess:
      got = sess.run("logits/BiasAdd/aquant:0", {"net_in:0": deployed["net_in"]})
  np.testing.assert_array_equal(got, deployed["outputs"]["logits/BiasAdd/aquant"])
  fix = graph.get_operation_by_name("relu1/aquant")
  assert fix.get_attr("_bit_width") == 8 and fix.get_attr("_mode") == 1


def test_fixneuron_model_carries_decent_q_attributes(deployed):
  graph_def = _load(deployed["paths"]["quantize_eval_model_fixneuron.pb"])
  fix = {n.name: n for n in graph_def.node if n.op == "FixNeuron"}
  points, _ = deployed["info"]
  assert set(fix) == set(points)
  for name, node in fix.items():
    kind, bits, pos = points[name]
    assert (node.attr["bit_width"].i, node.attr["quantize_pos"].i, node.attr["phase"].i) == (
        bits, pos, 1)
    expected = 1 if kind in ("input", "activation") else 2 if "depthwise" in name else 0
    assert node.attr["mode"].i == expected, name
  weights = [n for n in graph_def.node if n.op == "FixNeuron" and n.attr["mode"].i != 1]
  consts = {n.name for n in graph_def.node if n.op == "Const"}
  assert all(n.input[0] in consts for n in weights)  # Const → FixNeuron, as the compiler expects


def test_deploy_model_holds_integer_weights_and_positions(deployed):
  graph_def = _load(deployed["paths"]["deploy_model.pb"])
  nodes = {n.name: n for n in graph_def.node}
  points, layers = deployed["info"]
  conv = nodes["conv1/Conv2D"]
  assert list(conv.input) == ["net_in"]  # the weights are an attribute now
  weights = tf.make_ndarray(conv.attr["weights"].tensor)
  assert weights.dtype == np.int8 and weights.shape == (3, 3, 3, 8)
  pi, pw, pb, po = layers["conv1/Conv2D"]
  assert list(conv.attr["wpos"].list.i) == [8, pw] and list(conv.attr["bpos"].list.i) == [8, pb]
  assert list(conv.attr["ipos"].list.i) == [8, pi]
  assert list(nodes["relu1"].attr["opos"].list.i) == [8, po]
  assert "opos" not in conv.attr  # the ReLU follows: the DPU fuses them
  assert list(nodes["avgpool"].attr["dpu_multiplier"].list.i) == [7, 6]
  assert not any(n.op in ("Const", "FusedBatchNormV3", "BiasAdd") for n in graph_def.node)


# Errors --------------------------------------------------------------------------------------

@pytest.mark.parametrize("changes, message", [
    (dict(output_nodes=["nope"]), "output_nodes: node 'nope' is not in the graph"),
    (dict(input_nodes=["logits/BiasAdd"], output_nodes=["relu1"], input_shapes=[[-1, 5]]),
     "output node 'relu1' does not depend on any input node"),
    (dict(input_shapes=[[-1, 16, 16]]), "has rank 3 but input node 'net_in' outputs rank 4"),
    (dict(nodes_bit=["conv9/Conv2D:4"]), "nodes_bit: node 'conv9/Conv2D' is not in the graph"),
    (dict(input_nodes=[], input_shapes=[]), "input_nodes is empty"),
])
def test_bad_config_for_this_graph_is_refused_before_any_edit(tmp_path, changes, message):
  config = dataclasses.replace(_config(tmp_path), **changes)
  graph = tf.Graph()
  with graph.as_default():
    dpu_models.build(is_training=True)
    before = graph.as_graph_def()
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace("[", r"\[")):
      decent_q.CreateQuantizeTrainingGraph(config=config)
  assert graph.as_graph_def() == before


def test_rewriting_twice_is_refused(tmp_path):
  graph, _, _ = _rewritten(_config(tmp_path))
  with graph.as_default(), pytest.raises(ValueError, match="already holds decent_q quantizers"):
    decent_q.CreateQuantizeEvaluationGraph(config=_config(tmp_path))


def test_a_users_op_named_like_a_quantizer_is_not_taken_for_one(tmp_path):
  """The rewrite knows its quantizers by their role attribute (graph/roles.py), not by the
  `/aquant` name a user's op may also have."""
  graph = tf.Graph()
  with graph.as_default():
    raw, _, _, _ = dpu_models.build(is_training=True)
    tf.identity(raw, name="probe/aquant")
    report = decent_q.CreateQuantizeTrainingGraph(config=_config(tmp_path))
  assert report.layers


def test_config_must_be_a_quantize_config():
  with pytest.raises(ValueError, match="config must be a decent_q.QuantizeConfig"):
    decent_q.CreateQuantizeTrainingGraph(config={"input_nodes": ["x"]})


def _eval_graph(config):
  graph = tf.Graph()
  with graph.as_default():
    dpu_models.build(is_training=False)
    decent_q.CreateQuantizeEvaluationGraph(config=config)
  return graph


@pytest.mark.parametrize("checkpoint, message", [
    ("", "checkpoint must be a checkpoint directory or prefix"),
    ("{tmp}/empty", "no checkpoint in directory"),
    ("{tmp}/missing/model.ckpt", "not found"),
])
def test_deploy_refuses_missing_checkpoints_and_writes_nothing(tmp_path, checkpoint, message):
  (tmp_path / "empty").mkdir()
  config = _config(tmp_path)
  with _eval_graph(config).as_default(), pytest.raises(ValueError, match=message):
    decent_q.CreateQuantizeDeployGraph(checkpoint=checkpoint.format(tmp=tmp_path), config=config)
  assert not os.path.exists(config.output_dir)


def test_deploy_refuses_a_float_checkpoint_naming_the_missing_variables(tmp_path):
  graph = tf.Graph()
  with graph.as_default():
    dpu_models.build(is_training=True)
    with v1.Session() as sess:
      sess.run(v1.global_variables_initializer())
      v1.train.Saver().save(sess, str(tmp_path / "float" / "model.ckpt"))
  config = _config(tmp_path)
  with _eval_graph(config).as_default(), pytest.raises(ValueError, match="pos_histogram"):
    decent_q.CreateQuantizeDeployGraph(checkpoint=str(tmp_path / "float"), config=config)
  assert not os.path.exists(config.output_dir)


def test_deploy_needs_the_evaluation_rewrite(tmp_path):
  graph, _, _ = _rewritten(_config(tmp_path))
  with graph.as_default(), pytest.raises(ValueError, match="CreateQuantizeEvaluationGraph"):
    decent_q.CreateQuantizeDeployGraph(checkpoint=str(tmp_path), config=_config(tmp_path))


def test_output_dir_that_is_a_file_is_refused(deployed, tmp_path):
  target = tmp_path / "a_file"
  target.write_text("mine")
  config = dataclasses.replace(deployed["config"], output_dir=str(target))
  with _eval_graph(config).as_default(), pytest.raises(OSError, match="not a directory"):
    decent_q.CreateQuantizeDeployGraph(checkpoint=deployed["ckpt"], config=config)
  assert target.read_text() == "mine"


def test_a_failed_write_leaves_no_partial_files(deployed, tmp_path, full_disk):
  out = tmp_path / "out"
  out.mkdir()
  (out / "deploy_model.pb").write_bytes(b"the user's old file")
  config = dataclasses.replace(deployed["config"], output_dir=str(out))
  graph = _eval_graph(config)
  full_disk(3)  # the third file
  with graph.as_default(), pytest.raises(OSError, match="No space left on device"):
    decent_q.CreateQuantizeDeployGraph(checkpoint=deployed["ckpt"], config=config)
  assert sorted(os.listdir(out)) == ["deploy_model.pb"]
  assert (out / "deploy_model.pb").read_bytes() == b"the user's old file"
