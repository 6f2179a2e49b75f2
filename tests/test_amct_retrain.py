"""The retrain workflow end to end on a small model: what is quantized and why not, the record,
the deploy model's structure and numbers, and errors that change nothing."""

import os

import numpy as np
import pytest
import tensorflow as tf

import ascend_models
from qat_rewrite import amct
from qat_rewrite.targets.ascend import deploy, numerics, record

v1 = tf.compat.v1


def _load(path):
  graph_def = v1.GraphDef()
  with open(path, "rb") as f:
    graph_def.ParseFromString(f.read())
  return graph_def


@pytest.fixture(scope="module")
def flow(tmp_path_factory):
  """Train 3 steps, rewrite the eval graph, write the record, freeze, save."""
  d = tmp_path_factory.mktemp("amct")
  out = {"dir": d, "config": str(d / "config.json"), "record": str(d / "record.txt")}
  amct.create_quant_retrain_config(out["config"], _training_graph_only())
  train = tf.Graph()
  with train.as_default():
    images, logits, loss, labels = ascend_models.build(is_training=True)
    ops = amct.create_quant_retrain_model(train, out["config"], out["record"])
    out["train_report"], out["train_ops"] = ops.report, ops
    x0, y0 = ascend_models.batch(0)
    probe = train.get_tensor_by_name("pw/Conv2D/ULQ/input:0")
    step = v1.train.GradientDescentOptimizer(0.0).minimize(loss)  # lr 0: clips keep the init
    with v1.Session() as sess:
      sess.run(v1.global_variables_initializer())
      out["first_batch_max"] = sess.run(probe, {images: x0}).max()
      sess.run(step, {images: x0, labels: y0})
      out["clip_max_after_step"] = sess.run(_variable("pw/Conv2D/ULQ/clip_max"))
      step = v1.train.AdamOptimizer(1e-3, name="adam").minimize(loss)
      sess.run(v1.variables_initializer([v for v in v1.global_variables()
                                         if "adam" in v.name.lower() or "power" in v.name]))
      for i in range(1, 3):
        sess.run(step, dict(zip((images, labels), ascend_models.batch(i))))
      v1.train.Saver().save(sess, str(d / "ckpt"))
  evaluation = tf.Graph()
  with evaluation.as_default():
    images, logits, _, _ = ascend_models.build(is_training=False)
    ops = amct.create_quant_retrain_model(evaluation, out["config"], out["record"])
    with v1.Session() as sess:
      v1.train.Saver().restore(sess, str(d / "ckpt"))
      assert not os.path.exists(out["record"])
      sess.run(ops[-1])
      out["x"] = ascend_models.batch(7)[0]
      out["eval_output"] = sess.run(logits, {images: out["x"]})
      frozen = v1.graph_util.convert_variables_to_constants(
          sess, evaluation.as_graph_def(), [ascend_models.OUTPUT])
  out["pb"] = str(d / "frozen.pb")
  with open(out["pb"], "wb") as f:
    f.write(frozen.SerializeToString())
  out["paths"] = amct.save_quant_retrain_model(out["pb"], [ascend_models.OUTPUT + ":0"],
                                               out["record"], str(d / "result" / "model"))
  out["records"] = record.read(out["record"])
  out["quantized"] = _load(out["paths"]["model_quantized.pb"])
  out["fake"] = _load(out["paths"]["model_fake_quant.pb"])
  return out


def _variable(name):
  return next(v for v in v1.global_variables() if v.op.name == name)


def _training_graph_only():
  graph = tf.Graph()
  with graph.as_default():
    ascend_models.build(is_training=True)
  return graph


def test_report_quantizes_supported_layers_and_says_why_others_stay_float(flow):
  report = flow["train_report"]
  assert sorted(report.quantized_weights) == sorted(ascend_models.LAYERS)
  reasons = {f.op: f.reason for f in report.float_ops}
  for name, word in ascend_models.FLOAT_LAYERS.items():
    assert word in reasons[name]
  notes = {l.layer: l.notes for l in report.layers}
  assert "3 input channels" in notes["conv1/Conv2D"][0]  # Cin <= 16: warned, still quantized
  assert notes["pw/Conv2D"] == []                       # 20 input channels: no warning
  assert sorted(report.folded_batch_norms) == ["bn1/FusedBatchNormV3", "bn2/FusedBatchNormV3"]


def test_retrain_ops_are_trainable_clips_then_the_record_op(flow):
  ops = flow["train_ops"]
  assert isinstance(ops[-1], tf.Operation) and ops[-1].output_tensor.op is ops[-1]
  names = sorted(v.op.name for v in ops[:-1])
  assert names == sorted("%s/ULQ/%s" % (layer, bound) for layer in ascend_models.LAYERS
                         for bound in ("clip_max", "clip_min"))
  trainable = {v.op.name for v in ops[0].graph.get_collection(
      v1.GraphKeys.TRAINABLE_VARIABLES)}
  assert set(names) <= trainable


def test_clip_is_initialized_from_the_first_batch(flow):
  assert flow["clip_max_after_step"] == pytest.approx(flow["first_batch_max"], rel=1e-6)


def test_record_has_a_scale_per_output_channel_for_convolutions(flow):
  records = flow["records"]
  assert sorted(records) == sorted(ascend_models.LAYERS)
  counts = {name: len(r.scale_w) for name, r in records.items()}
  assert counts == {"conv1/Conv2D": 20, "dw/depthwise": 40, "pw/Conv2D": 20,
                    "deconv/conv2d_transpose": 6, "logits/MatMul": 1}
  assert all(set(r.offset_w) == {0} for r in records.values())
  # The first layer reads inputs in [-1, 1]: an asymmetric grid with 0 near the middle.
  assert -3 <= records["conv1/Conv2D"].offset_d <= 3
  # pw reads a ReLU output: its lower clip is 0, so 0 sits at -128.
  assert records["pw/Conv2D"].offset_d == -128


def test_quantized_pb_has_the_ascend_deploy_structure(flow):
  nodes = {n.name: n for n in flow["quantized"].node}
  types = [n.op for n in flow["quantized"].node]
  for op in ("AscendQuant", "AscendWeightQuant", "AscendDequant"):
    assert types.count(op) == len(ascend_models.LAYERS)
  assert not any("FusedBatchNorm" in t for t in types)  # folded
  assert not any("/ULQ/" in n or "/ARQ/" in n for n in nodes)  # retrain ops gone
  for layer in ascend_models.LAYERS:
    r = flow["records"][layer]
    quant = nodes[layer + "/AscendQuant"]
    assert quant.attr["offset"].f == r.offset_d
    assert np.float32(quant.attr["scale"].f) == np.float32(1.0) / np.float32(r.scale_d)
    assert quant.attr["dst_type"].s == b"INT8"
    data_index = 2 if nodes[layer].op == "Conv2DBackpropInput" else 0
    assert nodes[layer].input[data_index] == layer + "/AscendQuant"
    assert nodes[layer].input[1] == layer + "/AscendWeightQuant"
    weights = tf.make_ndarray(nodes[layer + "/weight_int8"].attr["value"].tensor)
    assert weights.dtype == np.int8 and weights.min() >= -128
    deq = deploy.unpack_deq_scale(tf.make_ndarray(nodes[layer + "/deq_scale"].attr[
        "value"].tensor))
    np.testing.assert_array_equal(deq, np.float32(r.scale_d) * np.float32(r.scale_w))
  # layers left float keep float weights and no quantizer
  assert nodes["atrous"].input[0] != "atrous/AscendQuant"


def test_fake_quant_model_computes_what_the_record_says(flow):
  r = flow["records"]["logits/MatMul"]
  nodes = {n.name: n for n in flow["quantized"].node}
  w_int8 = tf.make_ndarray(nodes["logits/MatMul/weight_int8"].attr["value"].tensor)
  with tf.Graph().as_default():
    tf.import_graph_def(flow["fake"], name="")
    assert not {n.op for n in flow["fake"].node} & set(deploy.ASCEND_OPS)
    fetch = ["logits/MatMul/AscendQuant:0", "Reshape:0", "logits/MatMul/AscendDequant:0", "conv1/Conv2D/AscendQuant:0",
             ascend_models.OUTPUT + ":0"]
    with v1.Session() as sess:
      quantized, data, dequantized, first, output = sess.run(
          fetch, {ascend_models.INPUT + ":0": flow["x"]})
  # AscendQuant: int8 = clip(round(x / scale_d) + offset_d); the cube sees int8 - offset_d.
  expected = numerics.quantize_data_np(data, r.scale_d, r.offset_d) - r.offset_d
  np.testing.assert_array_equal(quantized, expected)
  # AscendDequant: the integer sums times scale_d * scale_w.
  sums = expected.astype(np.int64) @ w_int8.astype(np.int64)
  np.testing.assert_allclose(dequantized, sums * np.float32(r.scale_d) * r.scale_w[0],
                             rtol=1e-5)
  r1 = flow["records"]["conv1/Conv2D"]
  np.testing.assert_array_equal(
      first, numerics.quantize_data_np(flow["x"], r1.scale_d, r1.offset_d) - r1.offset_d)
  # And the whole model agrees with the retrained eval graph it came from.
  np.testing.assert_allclose(output, flow["eval_output"], atol=1e-4 * np.abs(output).max())


def test_record_missing_a_layer_is_refused_and_writes_nothing(flow, tmp_path):
  partial = dict(flow["records"])
  del partial["pw/Conv2D"]
  bad = tmp_path / "record.txt"
  record.write(str(bad), partial)
  existing = tmp_path / "model_quantized.pb"
  existing.write_bytes(b"old")
  with pytest.raises(ValueError, match="no entry for layer 'pw/Conv2D'"):
    amct.save_quant_retrain_model(flow["pb"], [ascend_models.OUTPUT], str(bad),
                                  str(tmp_path / "model"))
  assert existing.read_bytes() == b"old"
  assert sorted(os.listdir(tmp_path)) == ["model_quantized.pb", "record.txt"]


def test_save_refuses_unknown_outputs_and_unfrozen_training_models(flow, tmp_path):
  with pytest.raises(ValueError, match="'nope' is not in pb_model"):
    amct.save_quant_retrain_model(flow["pb"], ["nope:0"], flow["record"], str(tmp_path / "m"))
  with tf.Graph().as_default() as graph:
    ascend_models.build(is_training=True)
    pb = tmp_path / "train.pb"
    pb.write_bytes(graph.as_graph_def().SerializeToString())
  with pytest.raises(ValueError, match="training mode"):
    amct.save_quant_retrain_model(str(pb), ["out"], flow["record"], str(tmp_path / "m"))
  assert not any(name.startswith("m_") for name in os.listdir(tmp_path))


def test_record_op_refuses_uninitialized_clips(flow, tmp_path):
  with tf.Graph().as_default() as graph:
    ascend_models.build(is_training=False)
    ops = amct.create_quant_retrain_model(graph, flow["config"], str(tmp_path / "r.txt"))
    with v1.Session() as sess:
      sess.run(v1.global_variables_initializer())
      with pytest.raises(tf.errors.OpError, match="clip range was never set"):
        sess.run(ops[-1])
  assert not os.path.exists(tmp_path / "r.txt")


def test_refusals_leave_the_graph_unchanged(flow, tmp_path):
  with tf.Graph().as_default() as graph:
    _, _, loss, _ = ascend_models.build(is_training=True)
    v1.train.GradientDescentOptimizer(0.1).minimize(loss)
    before = len(graph.get_operations())
    with pytest.raises(ValueError, match="before building the optimizer"):
      amct.create_quant_retrain_model(graph, flow["config"], str(tmp_path / "r.txt"))
    assert len(graph.get_operations()) == before
  with tf.Graph().as_default() as graph:
    ascend_models.build(is_training=True)
    amct.create_quant_retrain_model(graph, flow["config"], str(tmp_path / "r.txt"))
    before = len(graph.get_operations())
    with pytest.raises(ValueError, match="already holds AMCT retrain quantizers"):
      amct.create_quant_retrain_model(graph, flow["config"], str(tmp_path / "r.txt"))
    assert len(graph.get_operations()) == before


def test_a_users_ops_named_like_amcts_are_not_taken_for_a_rewrite(flow, tmp_path):
  """A graph is known as already rewritten by the role AMCT's own ops carry, not by their names:
  a user's `probe/ULQ/output` and `probe/calibration/observe` were refused."""
  def build_with_probes(is_training):
    images, _, _, _ = ascend_models.build(is_training=is_training)
    tf.identity(images, name="probe/ULQ/output")
    tf.identity(images, name="probe/calibration/observe")

  with tf.Graph().as_default() as graph:
    build_with_probes(True)
    ops = amct.create_quant_retrain_model(graph, flow["config"], str(tmp_path / "r.txt"))
    assert ops.report.layers
  config = str(tmp_path / "calib.json")
  with tf.Graph().as_default() as graph:
    build_with_probes(False)
    amct.create_quant_config(config, graph, batch_num=1)
    assert len(amct.quantize_model(graph, config, str(tmp_path / "c.txt"))) == len(
        ascend_models.LAYERS)
    with pytest.raises(ValueError, match="already holds AMCT calibration ops"):
      amct.quantize_model(graph, config, str(tmp_path / "c.txt"))


def test_fixed_min_pins_the_lower_clip_at_zero(tmp_path):
  cfg = tmp_path / "retrain.cfg"
  cfg.write_text("retrain_data_quant_config { ulq_quantize { fixed_min: true } }\n"
                 "retrain_weight_quant_config { arq_retrain { channel_wise: false } }\n")
  config = str(tmp_path / "config.json")
  with tf.Graph().as_default() as graph:
    images, _, loss, labels = ascend_models.build(is_training=True, batch_norm=False)
    amct.create_quant_retrain_config(config, graph, config_defination=str(cfg))
    ops = amct.create_quant_retrain_model(graph, config, str(tmp_path / "r.txt"))
    assert all(not v.op.name.endswith("clip_min") for v in ops[:-1])  # not trainable
    step = v1.train.AdamOptimizer(0.05).minimize(loss)
    with v1.Session() as sess:
      sess.run(v1.global_variables_initializer())
      for i in range(3):
        sess.run(step, dict(zip((images, labels), ascend_models.batch(i))))
      sess.run(ops[-1])
      clip_min = sess.run(_variable("conv1/Conv2D/ULQ/clip_min"))
  records = record.read(str(tmp_path / "r.txt"))
  assert clip_min == 0.0
  assert {r.offset_d for r in records.values()} == {-128}  # inputs in [-1, 1] clipped at 0
  assert all(len(r.scale_w) == 1 for r in records.values())  # channel_wise: false


def test_calibration_writes_the_record_after_batch_num_runs(tmp_path):
  config, rec = str(tmp_path / "calib.json"), str(tmp_path / "record.txt")
  with tf.Graph().as_default() as graph:
    images, logits, _, _ = ascend_models.build(is_training=False)
    with v1.Session() as sess:
      sess.run(v1.global_variables_initializer())
      frozen = v1.graph_util.convert_variables_to_constants(sess, graph.as_graph_def(),
                                                            [ascend_models.OUTPUT])
  pb = tmp_path / "float.pb"
  pb.write_bytes(frozen.SerializeToString())
  with tf.Graph().as_default() as graph:
    tf.import_graph_def(frozen, name="")
    amct.create_quant_config(config, graph, batch_num=2)
    added = amct.quantize_model(graph, config, rec)
    assert len(added) == len(ascend_models.LAYERS)
    with v1.Session() as sess:
      feed = {ascend_models.INPUT + ":0": ascend_models.batch(0)[0]}
      reference = sess.run(ascend_models.OUTPUT + ":0", feed)
      assert not os.path.exists(rec)
      sess.run(ascend_models.OUTPUT + ":0", {ascend_models.INPUT + ":0":
                                             ascend_models.batch(1)[0]})
  assert sorted(record.read(rec)) == sorted(ascend_models.LAYERS)
  paths = amct.save_model(str(pb), [ascend_models.OUTPUT], rec, str(tmp_path / "ptq"))
  with tf.Graph().as_default():
    tf.import_graph_def(_load(paths["ptq_fake_quant.pb"]), name="")
    with v1.Session() as sess:
      output = sess.run(ascend_models.OUTPUT + ":0", feed)
  error = np.abs(output - reference).max() / np.abs(reference).max()
  assert 0 < error < 0.05  # quantized, and close to float
