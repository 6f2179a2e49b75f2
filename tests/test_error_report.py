"""The per-layer error report: SQNR on crafted tensors whose noise is known, then on each kind of
model a user quantizes (a qat_rewrite.quantize eval graph, its .tflite, a DPU eval model, an
Ascend model), against the float graph: which layer hurts shows, and fewer bits show less SQNR."""

import math
import os

import numpy as np
import pytest
import tensorflow as tf

import dpu_models
from qat_rewrite import error_report, quantize
from qat_rewrite.targets.ascend import ptq as ascend_ptq
from qat_rewrite.targets.dpu import calibrate, deploy
from test_dpu_calibrate import frozen_test_cnn
from test_export_tflite import OUTPUT, build_cnn, data, qat_checkpoint

v1 = tf.compat.v1
DW2_ACT = "model/dw2/act_quant/FakeQuantWithMinMaxVars"


def test_sqnr_of_a_known_signal_and_noise():
  x = np.array([3.0, -4.0])  # signal power 25
  assert error_report.sqnr_db(x, x + np.array([0.3, 0.4])) == pytest.approx(20.0)  # noise 0.25
  assert error_report.sqnr_db(x, x) == math.inf
  assert error_report.sqnr_db(np.zeros(3), np.ones(3)) == -math.inf


def test_report_of_a_fake_quant_graph_on_a_crafted_batch():
  """x uniform on the 8-bit grid's cells: FakeQuant over [0, 2.55] with step 0.01 rounds each
  value to the nearest step, so the noise is exactly what numpy computes."""
  x = np.linspace(0.0, 2.55, 1001).astype(np.float32)
  with tf.Graph().as_default() as graph:
    inp = v1.placeholder(tf.float32, [None], name="x")
    tf.quantization.fake_quant_with_min_max_args(inp, 0.0, 2.55, num_bits=8, name="act_quant")
    (quantizer,) = error_report.find_quantizers(graph)
    with v1.Session() as sess:
      (row,) = error_report.measure(sess, [quantizer], {inp: x})
  q = np.round(x.astype(np.float64) / 0.01) * 0.01
  want = 10 * np.log10(np.sum(x.astype(np.float64) ** 2) / np.sum((x - q) ** 2))
  assert row.name == "act_quant" and row.grid == "8-bit, [0, 2.55]"
  assert row.sqnr_db == pytest.approx(want, abs=0.05)
  assert (row.minimum, row.maximum) == pytest.approx((0.0, 2.55))
  assert row.sqnr_db > 45  # about 6 dB per bit plus the signal's crest factor


def test_fewer_bits_lower_sqnr_by_about_6_db_per_bit():
  x = np.random.RandomState(0).uniform(-1, 1, 10000).astype(np.float32)
  with tf.Graph().as_default() as graph:
    inp = v1.placeholder(tf.float32, [None], name="x")
    for bits in (4, 8):
      tf.quantization.fake_quant_with_min_max_args(inp, -1.0, 1.0, num_bits=bits,
                                                   name="q%d" % bits)
    with v1.Session() as sess:
      rows = {r.name: r for r in error_report.eval_graph_report(sess, {inp: x})}
  assert rows["q8"].sqnr_db - rows["q4"].sqnr_db == pytest.approx(24.0, abs=1.0)
  table = error_report.markdown(list(rows.values()))
  assert table.splitlines()[0] == ("| quantized tensor | grid | min | max | local SQNR (dB) | "
                                   "SQNR vs float (dB) | float tensor | note |")
  assert "| q4 |" in table
  assert error_report.csv_text(list(rows.values())).splitlines()[0] == (
      "quantized_tensor,grid,min,max,sqnr_db,float_sqnr_db,float_tensor,note")


def test_accumulated_sqnr_counts_every_quantizer_upstream():
  """Two quantizers in a row: the second's input is already on a grid, so its local SQNR says
  nothing of the first's error; against the float graph it carries both."""
  x = np.random.RandomState(1).uniform(0, 1, 4096).astype(np.float32)
  with tf.Graph().as_default():
    inp = v1.placeholder(tf.float32, [None], name="x")
    coarse = tf.quantization.fake_quant_with_min_max_args(inp, 0.0, 1.0, num_bits=3,
                                                          name="coarse")
    tf.quantization.fake_quant_with_min_max_args(coarse * 3.0, 0.0, 3.0, num_bits=8,
                                                 name="fine")
    with v1.Session() as sess:
      rows = {r.name: r for r in error_report.eval_graph_report(sess, {"x": x})}
  assert rows["fine"].sqnr_db > rows["coarse"].sqnr_db + 20
  assert rows["fine"].float_sqnr_db == pytest.approx(rows["coarse"].float_sqnr_db, abs=0.5)
  assert rows["coarse"].float_tensor == "coarse:0"


# ---- on the models users quantize ----

@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
  directory = str(tmp_path_factory.mktemp("qat"))
  qat_checkpoint(directory, per_channel=True, steps=20)
  return directory


def _restored_eval_graph(checkpoint, bits=8, dw2_max=None):
  """(graph, session) of the restored qat_rewrite.quantize eval graph at `bits`, optionally
  with dw2's activation range cut to [min, dw2_max] (the deliberately bad layer)."""
  graph = tf.Graph()
  with graph.as_default():
    build_cnn(training=False)
    quantize.experimental_create_eval_graph(graph, weight_bits=bits, activation_bits=bits,
                                            symmetric=True, per_channel_weights=True)
    sess = v1.Session(graph=graph)
    v1.train.Saver().restore(sess, os.path.join(checkpoint, "model.ckpt"))
    if dw2_max is not None:
      (variable,) = [v for v in v1.global_variables() if v.op.name == "model/dw2/act_quant/max"]
      sess.run(variable.assign(dw2_max))
  return graph, sess


def _report(checkpoint, **kwargs):
  graph, sess = _restored_eval_graph(checkpoint, **kwargs)
  with sess:
    return {r.name: r for r in error_report.eval_graph_report(
        sess, {"images:0": data(16, 3, split=1)[0]})}


def test_quantize_eval_graph_report_names_each_quantizer_and_ranks_bits(checkpoint):
  eight, four = _report(checkpoint), _report(checkpoint, bits=4)
  assert {"model/conv1/weights_quant/FakeQuantWithMinMaxVarsPerChannel", DW2_ACT,
          "model/logits/act_quant/FakeQuantWithMinMaxVars"} <= set(eight)
  for name, row in eight.items():
    assert math.isfinite(row.float_sqnr_db) and row.float_tensor == name + ":0"
    # 4 bits: about 24 dB less where rounding dominates, less where a short range clips (the
    # activation ranges of 20 training steps)
    assert row.float_sqnr_db > four[name].float_sqnr_db + 3, name
    assert row.sqnr_db > four[name].sqnr_db + 3, name


def test_a_layer_clipped_by_a_tiny_range_has_the_lowest_sqnr(checkpoint):
  good, bad = _report(checkpoint), _report(checkpoint, dw2_max=0.02)
  assert min(bad.values(), key=lambda r: r.sqnr_db).name == DW2_ACT
  assert bad[DW2_ACT].float_sqnr_db < good[DW2_ACT].float_sqnr_db - 10
  upstream = "model/conv1/act_quant/FakeQuantWithMinMaxVars"
  assert bad[upstream].float_sqnr_db == pytest.approx(good[upstream].float_sqnr_db)


def _frozen(graph, sess):
  return v1.graph_util.convert_variables_to_constants(
      sess, graph.as_graph_def(), ["model/logits/act_quant/FakeQuantWithMinMaxVars"])


def test_exported_tflite_report_matches_the_eval_graph_and_finds_the_bad_layer(checkpoint,
                                                                             tmp_path):
  from qat_rewrite.export import to_tflite
  images = data(8, 3, split=1)[0]
  rows = {}
  for label, dw2_max in (("good", None), ("bad", 0.02)):
    graph, sess = _restored_eval_graph(checkpoint, dw2_max=dw2_max)
    with sess:
      frozen = _frozen(graph, sess)
      evaluated = {r.name: r for r in error_report.eval_graph_report(sess, {"images:0": images})}
    path = to_tflite(frozen, str(tmp_path / (label + ".tflite")), ["images"], [OUTPUT],
                     input_ranges={"images": (0.0, 1.0)}).path
    rows[label] = error_report.tflite_report(path, frozen, {"images": images})
    matched = {r.name: r for r in rows[label] if r.float_tensor}
    assert {"images", "model/Relu", "model/Relu6", "model/Relu_1",
            "model/logits/act_quant/FakeQuantWithMinMaxVars"} <= set(matched)
    assert all(math.isfinite(r.float_sqnr_db) for r in matched.values())
    # the integer model loses what the eval graph said it would, layer by layer
    for tflite_name, eval_name in (("model/Relu6", DW2_ACT), (
        "model/logits/act_quant/FakeQuantWithMinMaxVars",) * 2):
      assert matched[tflite_name].float_sqnr_db == pytest.approx(
          evaluated[eval_name].float_sqnr_db, abs=1.5)
    unmatched = [r for r in rows[label] if not r.float_tensor]
    assert all(r.note and math.isnan(r.float_sqnr_db) for r in unmatched)
  bad = [r for r in rows["bad"] if r.float_tensor]
  assert min(bad, key=lambda r: r.sqnr_db).name == "model/Relu6"


def test_tflite_report_of_a_ptq_model_against_the_float_graph(tmp_path):
  from qat_rewrite.targets.tflite import ptq as tflite
  graph_def = frozen_test_cnn()
  raw = [np.random.RandomState(i).uniform(0, 255, (4, 16, 16, 3)).astype(np.float32)
         for i in range(2)]
  model = tflite.calibrated_contents(graph_def, lambda i: {"raw": raw[i]}, ["net_in"],
                                     dpu_models.OUTPUT_NODES, dpu_models.INPUT_SHAPES, 2)
  rows = error_report.tflite_report(model[tflite.MODEL], graph_def, {"net_in": raw[0] / 255})
  matched = {r.name: r for r in rows if r.float_tensor}
  assert {"net_in", "relu1", "concat", "add_relu", "logits/BiasAdd"} <= set(matched)
  assert all(30 < r.float_sqnr_db < 80 and r.sqnr_db >= r.float_sqnr_db - 0.01
             for r in matched.values() if r.name != "net_in")
  with pytest.raises(ValueError, match="no value for the TFLite model's input"):
    error_report.tflite_report(model[tflite.MODEL], graph_def, {"raw": raw[0]})


def test_dpu_eval_model_report_has_the_float_reference(tmp_path):
  from qat_rewrite import decent_q
  batches = [np.random.RandomState(i).uniform(0, 255, (4, 16, 16, 3)).astype(np.float32)
             for i in range(2)]
  reports = {}
  for bits in (8, 4):
    config = decent_q.QuantizeConfig(
        input_nodes=dpu_models.INPUT_NODES, output_nodes=dpu_models.OUTPUT_NODES,
        input_shapes=dpu_models.INPUT_SHAPES, output_dir=str(tmp_path), calib_iter=2,
        weight_bit=bits, activation_bit=bits)
    contents = calibrate.calibrated_contents(frozen_test_cnn(), lambda i: {"raw": batches[i]},
                                             config, False)
    eval_model = v1.GraphDef.FromString(contents[deploy.EVAL_MODEL])
    reports[bits] = {r.name: r for r in error_report.frozen_graph_report(
        eval_model, {"net_in": batches[0] / 255.0})}
  assert {"net_in/aquant", "relu1/aquant", "conv1/mul_fold/wquant", "logits/BiasAdd/aquant"
          } <= set(reports[8])
  for name in ("relu1/aquant", "leaky/aquant", "logits/BiasAdd/aquant"):
    assert math.isfinite(reports[8][name].float_sqnr_db)
    assert reports[8][name].float_sqnr_db > reports[4][name].float_sqnr_db + 10


def _ascend_models(tmp_path):
  graph_def = frozen_test_cnn()
  path = tmp_path / "model.pb"
  path.write_bytes(graph_def.SerializeToString())
  raw = [np.random.RandomState(i).uniform(0, 255, (4, 16, 16, 3)).astype(np.float32)
         for i in range(2)]
  contents = ascend_ptq.calibrated_contents(str(path), graph_def, lambda i: {"raw": raw[i]},
                                            dpu_models.OUTPUT_NODES, 2)
  return graph_def, v1.GraphDef.FromString(contents["model_fake_quant.pb"]), {"raw": raw[0]}


def _narrowed(fake_quant, layer, factor):
  """`fake_quant` with `layer`'s data range `factor` times narrower (scale and dequant scale
  changed together, so only the clipping and the finer step change)."""
  out = v1.GraphDef()
  out.CopyFrom(fake_quant)
  for node in out.node:
    if node.name in (layer + "/AscendQuant/scale", layer + "/AscendDequant/scale"):
      value = tf.make_ndarray(node.attr["value"].tensor)
      value = value * factor if node.name.endswith("Quant/scale") else value / factor
      node.attr["value"].tensor.CopyFrom(tf.make_tensor_proto(value.astype(np.float32)))
  return out


def test_ascend_report_per_layer_and_a_clipped_layer_stands_out(tmp_path):
  graph_def, fake_quant, feeds = _ascend_models(tmp_path)
  good = {r.name: r for r in error_report.ascend_report(fake_quant, graph_def, feeds)}
  assert list(good) == ["conv1/Conv2D", "branch_a/Conv2D", "branch_b/depthwise", "conv2/Conv2D",
                        "shortcut/Conv2D", "avgpool", "logits/MatMul"]
  assert good["conv1/Conv2D"].float_tensor == "relu1:0"  # after the folded batch norm
  assert all(30 < r.float_sqnr_db < 80 and 30 < r.sqnr_db for r in good.values())
  bad = {r.name: r for r in error_report.ascend_report(
      _narrowed(fake_quant, "branch_b/depthwise", 30.0), graph_def, feeds)}
  assert min(bad.values(), key=lambda r: r.sqnr_db).name == "branch_b/depthwise"
  assert (bad["branch_b/depthwise"].float_sqnr_db
          < good["branch_b/depthwise"].float_sqnr_db - 10)
  assert bad["conv1/Conv2D"].float_sqnr_db == pytest.approx(good["conv1/Conv2D"].float_sqnr_db)


def test_report_files_are_markdown_csv_and_png():
  rows = [error_report.Row("a", "8-bit", 0.0, 1.0, 40.0, 30.0, "a:0"),
          error_report.Row("b", "int8", 0.0, 1.0, math.nan, math.nan, note="no float twin")]
  files = error_report.report_files(rows)
  assert sorted(files) == ["quantize_report.csv", "quantize_report.md", "quantize_report.png"]
  assert b"| b | int8 | 0 | 1 | n/a | n/a |  | no float twin |" in files["quantize_report.md"]
  assert files["quantize_report.png"][:4] == b"\x89PNG"
