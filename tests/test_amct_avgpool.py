"""AvgPool as an AMCT layer: listed in the configs, ULQ on its input in retrain, a data range
in calibration, and AscendQuant → AvgPool → AscendDequant (no weights) in the deploy model,
whose stock-TF twin computes what the retrained eval graph computes. Real MNIST digits."""

import json

import numpy as np
import pytest
import tensorflow as tf

import ascend_models
from qat_rewrite import amct
from qat_rewrite.datasets import load_mnist
from qat_rewrite.targets.ascend import calibrate, deploy, numerics, ptq, record

v1 = tf.compat.v1
INPUT, OUTPUT = "net_in", "net/logits/BiasAdd"
POOL = "net/pool/AvgPool"
CONV, DENSE = "net/conv/Conv2D", "net/logits/MatMul"


def build(padding="SAME"):
  """conv (stride 2) → ReLU → 3x3 avg pool (stride 2) → dense, in the default graph: 28x28x1
  → 14x14x8 → 7x7x8 → 10. SAME pads the pool, so border windows average fewer values."""
  v1.set_random_seed(1)
  images = v1.placeholder(tf.float32, [None, 28, 28, 1], name=INPUT)
  labels = v1.placeholder(tf.int64, [None], name="labels")
  with v1.variable_scope("net"):
    x = tf.nn.relu(v1.layers.conv2d(images, 8, 3, strides=2, padding="same", name="conv",
                                    kernel_initializer=ascend_models._init()))
    x = v1.layers.average_pooling2d(x, 3, 2, padding=padding, name="pool")
    logits = v1.layers.dense(v1.layers.flatten(x), 10, name="logits",
                             kernel_initializer=ascend_models._init())
  loss = v1.losses.sparse_softmax_cross_entropy(labels, logits)
  return images, labels, logits, loss


def _graph(padding="SAME"):
  graph = tf.Graph()
  with graph.as_default():
    build(padding)
  return graph


def _load(path):
  graph_def = v1.GraphDef()
  with open(path, "rb") as f:
    graph_def.ParseFromString(f.read())
  return graph_def


def _run(graph_def, fetches, x):
  with tf.Graph().as_default():
    tf.import_graph_def(graph_def, name="")
    with v1.Session() as sess:
      return sess.run(fetches, {INPUT + ":0": x})


def _accuracy(logits, labels):
  return 100.0 * float(np.mean(np.argmax(logits, axis=1) == labels))


@pytest.fixture(scope="module")
def mnist():
  return load_mnist(seed=0)


# ---- configs ----

def _simple_config(tmp_path, text, graph=None):
  cfg = tmp_path / "retrain.cfg"
  cfg.write_text("retrain_data_quant_config { ulq_quantize { } }\n"
                 "retrain_weight_quant_config { arq_retrain { channel_wise: true } }\n" + text)
  out = tmp_path / "config.json"
  amct.create_quant_retrain_config(str(out), graph or _graph(), config_defination=str(cfg))
  return json.loads(out.read_text())


def test_retrain_config_lists_the_pool_with_a_per_tensor_weight_config(tmp_path):
  out = tmp_path / "config.json"
  floats = amct.create_quant_retrain_config(str(out), _graph())
  doc = json.loads(out.read_text())
  assert set(doc) - {"version", "batch_num"} == {CONV, POOL, DENSE}
  assert doc[POOL]["retrain_enable"] is True
  assert doc[POOL]["retrain_data_config"]["algo"] == "ulq_quantize"
  assert doc[POOL]["retrain_weight_config"]["channel_wise"] is False
  assert floats == []


def test_skip_and_override_by_type_reach_the_pool(tmp_path):
  doc = _simple_config(tmp_path, 'skip_layer_types: "AvgPool"\n')
  assert doc[POOL]["retrain_enable"] is False and doc[CONV]["retrain_enable"] is True
  doc = _simple_config(tmp_path, 'override_layer_types { layer_type: "AvgPool" '
                       'retrain_data_quant_config { ulq_quantize { fixed_min: true } } }\n')
  assert doc[POOL]["retrain_data_config"]["fixed_min"] is True
  assert doc[CONV]["retrain_data_config"]["fixed_min"] is False
  doc = _simple_config(tmp_path, 'quant_skip_layers: "%s"\n' % POOL)
  assert doc[POOL]["retrain_enable"] is False


def test_channel_wise_on_the_pool_is_refused_naming_it(tmp_path):
  with pytest.raises(ValueError, match="%s.*channel_wise" % POOL):
    _simple_config(tmp_path, 'override_layer_configs { layer_name: "%s" '
                   'retrain_weight_quant_config { arq_retrain { channel_wise: true } } }\n'
                   % POOL)
  # The same in the JSON, for retrain and for calibration; the graph stays as it was.
  for create, rewrite, section in (
      (amct.create_quant_retrain_config, amct.create_quant_retrain_model,
       "retrain_weight_config"),
      (amct.create_quant_config, amct.quantize_model, "weight_quant_params")):
    path = tmp_path / "config.json"
    create(str(path), _graph())
    doc = json.loads(path.read_text())
    doc[POOL][section]["channel_wise"] = True
    path.write_text(json.dumps(doc))
    graph = _graph()
    before = len(graph.get_operations())
    with pytest.raises(ValueError, match="%s.*channel_wise" % POOL):
      rewrite(graph, str(path), str(tmp_path / "record.txt"))
    assert len(graph.get_operations()) == before


def test_unsupported_pools_stay_float_with_a_reason(tmp_path):
  graph = tf.Graph()
  with graph.as_default():
    x = v1.placeholder(tf.float32, [None, 4, 8, 8], name="x")
    nchw = tf.nn.avg_pool2d(x, 2, 2, "VALID", data_format="NCHW", name="nchw")
    half = tf.nn.avg_pool2d(tf.cast(tf.transpose(x, [0, 2, 3, 1]), tf.float16), 2, 2, "VALID",
                            name="half")
    tf.add(tf.reduce_sum(nchw), tf.cast(tf.reduce_sum(half), tf.float32), name="out")
  floats = {f.op: f.reason for f in amct.create_quant_retrain_config(
      str(tmp_path / "config.json"), graph)}
  assert "NHWC only" in floats["nchw"]
  assert "float32" in floats["half"]
  assert json.loads((tmp_path / "config.json").read_text()).keys() == {"version", "batch_num"}


# ---- retrain, record, save ----

@pytest.fixture(scope="module")
def flow(tmp_path_factory, mnist):
  """Quantization-aware training from scratch (300 steps), the eval graph, record, save."""
  (x_train, y_train), (x_test, y_test) = mnist
  d = tmp_path_factory.mktemp("amct_pool")
  out = {"config": str(d / "config.json"), "record": str(d / "record.txt")}
  amct.create_quant_retrain_config(out["config"], _graph())
  with tf.Graph().as_default() as train:
    images, labels, _, loss = build()
    ops = amct.create_quant_retrain_model(train, out["config"], out["record"])
    out["report"], out["ops"] = ops.report, [v.op.name for v in ops[:-1]]
    out["train_ops"] = {op.name for op in train.get_operations()}
    step = v1.train.AdamOptimizer(3e-3).minimize(loss)
    rng = np.random.RandomState(0)
    with v1.Session() as sess:
      sess.run(v1.global_variables_initializer())
      for _ in range(300):
        i = rng.randint(0, len(x_train), 64)
        sess.run(step, {images: x_train[i], labels: y_train[i]})
      v1.train.Saver().save(sess, str(d / "ckpt"))
  out["x"], out["y"] = x_test[:500], y_test[:500]
  with tf.Graph().as_default() as evaluation:
    images, _, logits, _ = build()
    ops = amct.create_quant_retrain_model(evaluation, out["config"], out["record"])
    with v1.Session() as sess:
      v1.train.Saver().restore(sess, str(d / "ckpt"))
      sess.run(ops[-1])
      out["clips"] = sess.run({v.op.name.rsplit("/", 1)[1]: v for v in v1.global_variables()
                               if v.op.name.startswith(POOL + "/ULQ/clip_")})
      out["eval_logits"] = sess.run(logits, {images: out["x"]})
      frozen = v1.graph_util.convert_variables_to_constants(sess, evaluation.as_graph_def(),
                                                            [OUTPUT])
  out["pb"] = str(d / "frozen.pb")
  with open(out["pb"], "wb") as f:
    f.write(frozen.SerializeToString())
  paths = amct.save_quant_retrain_model(out["pb"], [OUTPUT], out["record"],
                                        str(d / "result" / "model"))
  out["records"] = record.read(out["record"])
  out["quantized"] = _load(paths["model_quantized.pb"])
  out["fake"] = _load(paths["model_fake_quant.pb"])
  return out


def test_retrain_puts_ulq_and_no_arq_on_the_pool(flow):
  layers = {l.layer: l for l in flow["report"].layers}
  assert set(layers) == {CONV, POOL, DENSE}
  assert layers[POOL].kind == "avg_pool" and layers[POOL].weights_quantized is False
  assert layers[POOL].quantizers == [POOL + "/ULQ"]
  assert sorted(flow["report"].quantized_weights) == [CONV, DENSE]
  assert {POOL + "/ULQ/clip_max", POOL + "/ULQ/clip_min"} <= set(flow["ops"])
  assert POOL + "/ULQ/output" in flow["train_ops"]
  assert not any(name.startswith(POOL + "/ARQ") for name in flow["train_ops"])


def test_record_holds_the_pool_with_unit_weight_scale_and_its_clips(flow):
  r = flow["records"][POOL]
  assert r.scale_w == (1.0,) and r.offset_w == (0,)
  scale_d, offset_d = numerics.data_scale_offset_np(flow["clips"]["clip_min"],
                                                    flow["clips"]["clip_max"])
  assert r.scale_d == pytest.approx(scale_d, rel=1e-6) and r.offset_d == offset_d
  assert flow["clips"]["clip_min"] <= 0 < flow["clips"]["clip_max"]


def test_quantized_pb_quantizes_the_pool_without_weight_quant(flow):
  nodes = {n.name: n for n in flow["quantized"].node}
  r = flow["records"][POOL]
  assert nodes[POOL].input[0] == POOL + "/AscendQuant"
  assert nodes[POOL + "/AscendQuant"].attr["offset"].f == r.offset_d
  assert np.float32(nodes[POOL + "/AscendQuant"].attr["scale"].f) == (
      np.float32(1.0) / np.float32(r.scale_d))
  dequant = nodes[POOL + "/AscendDequant"]
  assert list(dequant.input) == [POOL, POOL + "/deq_scale"]
  assert list(dequant.attr["ksize"].list.i) == [1, 3, 3, 1]
  assert dequant.attr["data_format"].s == b"NHWC"
  deq = deploy.unpack_deq_scale(tf.make_ndarray(nodes[POOL + "/deq_scale"].attr[
      "value"].tensor))
  np.testing.assert_array_equal(deq, [np.float32(r.scale_d)])
  assert POOL + "/AscendWeightQuant" not in nodes
  assert [n.op for n in nodes.values()].count("AscendWeightQuant") == 2  # conv and dense
  # The pool's consumer reads the dequantized values; the conv's dequant feeds the pool quant.
  assert any(POOL + "/AscendDequant" in n.input for n in nodes.values() if n.op == "Reshape")
  assert not any(n.name.startswith(POOL + "/ULQ") for n in nodes.values())


def test_fake_quant_pool_averages_the_ulq_values_of_the_eval_graph(flow):
  assert not {n.op for n in flow["fake"].node} & set(deploy.ASCEND_OPS)
  pool_data = next(n for n in flow["quantized"].node if n.name == POOL + "/AscendQuant").input[0]
  data, pool_int, pool_out, logits = _run(
      flow["fake"], [pool_data + ":0", POOL + ":0", POOL + "/AscendDequant:0", OUTPUT + ":0"],
      flow["x"])
  r = flow["records"][POOL]
  # The pool averages integers (int8 - offset_d); SAME border windows average fewer of them.
  assert pool_int.min() >= 0 and pool_int.max() <= 255
  np.testing.assert_allclose(pool_out, pool_int * np.float32(r.scale_d), rtol=1e-6)
  # The retrained eval graph, fed the same pool input: its pool averages the ULQ values.
  with tf.Graph().as_default():
    tf.import_graph_def(_load(flow["pb"]), name="")
    with v1.Session() as sess:
      ulq, eval_pool = sess.run([POOL + "/ULQ/output:0", POOL + ":0"], {pool_data + ":0": data})
  np.testing.assert_allclose(ulq, (numerics.quantize_data_np(data, r.scale_d, r.offset_d)
                                   - r.offset_d) * np.float32(r.scale_d), rtol=1e-6)
  np.testing.assert_allclose(pool_out, eval_pool, rtol=1e-5, atol=1e-6 * eval_pool.max())
  # End to end, on 500 test digits (the conv's sums round differently in a few places).
  quantized = _accuracy(logits, flow["y"])
  retrained = _accuracy(flow["eval_logits"], flow["y"])
  assert retrained > 80
  assert abs(quantized - retrained) <= 1.0


# ---- calibration ----

def _frozen_float(padding):
  with tf.Graph().as_default() as graph:
    build(padding)
    with v1.Session() as sess:
      sess.run(v1.global_variables_initializer())
      return v1.graph_util.convert_variables_to_constants(sess, graph.as_graph_def(), [OUTPUT])


def test_calibration_quantizes_the_pool(tmp_path, mnist):
  x = mnist[1][0][:64]
  batches = [x[:32], x[32:]]
  frozen = _frozen_float("VALID")
  pb = tmp_path / "float.pb"
  pb.write_bytes(frozen.SerializeToString())
  config, rec = str(tmp_path / "calib.json"), str(tmp_path / "record.txt")
  with tf.Graph().as_default() as graph:
    tf.import_graph_def(frozen, name="")
    amct.create_quant_config(config, graph, batch_num=2)
    assert json.loads(open(config).read())[POOL]["quant_enable"] is True
    added = amct.quantize_model(graph, config, rec)
    assert POOL + "/calibration/observe" in [op.name for op in added]
    with v1.Session() as sess:
      pool_inputs = [sess.run([POOL + "/calibration/output:0", OUTPUT + ":0"],
                              {INPUT + ":0": b})[0] for b in batches]
      reference = sess.run(OUTPUT + ":0", {INPUT + ":0": x})  # after batch_num: ignored
  r = record.read(rec)[POOL]
  assert r.scale_w == (1.0,)
  scale_d, offset_d = numerics.data_scale_offset_np(min(p.min() for p in pool_inputs),
                                                    max(p.max() for p in pool_inputs))
  assert (np.float32(r.scale_d), r.offset_d) == (scale_d, offset_d)
  paths = amct.save_model(str(pb), [OUTPUT], rec, str(tmp_path / "ptq"))
  nodes = {n.name: n for n in _load(paths["ptq_quantized.pb"]).node}
  assert nodes[POOL].input[0] == POOL + "/AscendQuant"
  assert list(nodes[POOL + "/AscendDequant"].attr["ksize"].list.i) == [1, 3, 3, 1]
  assert POOL + "/AscendWeightQuant" not in nodes
  output = _run(_load(paths["ptq_fake_quant.pb"]), OUTPUT + ":0", x)
  error = np.abs(output - reference).max() / np.abs(reference).max()
  assert 0 < error < 0.05


def test_calibration_report_numerics_check_and_cli_flow_include_the_pool(tmp_path, mnist):
  frozen = _frozen_float("SAME")
  config = str(tmp_path / "calib.json")
  with tf.Graph().as_default() as graph:
    tf.import_graph_def(frozen, name="")
    amct.create_quant_config(config, graph, skip_layers=[CONV])
    _, report = calibrate.rewrite(graph, config, str(tmp_path / "record.txt"))
    pool_input = graph.get_operation_by_name(POOL + "/calibration/CheckNumerics").inputs[0]
    with v1.Session() as sess, pytest.raises(tf.errors.InvalidArgumentError,
                                             match="NaN or Inf in the input of layer " + POOL):
      sess.run(OUTPUT + ":0", {pool_input: np.full(pool_input.shape.as_list()[1:], np.nan,
                                                   np.float32)[None]})
  layers = {l.layer: l for l in report.layers}
  assert set(layers) == {POOL, DENSE}
  assert layers[POOL].weights_quantized is False and layers[DENSE].weights_quantized is True
  assert [f.op for f in report.float_ops] == [CONV]
  # `qat_rewrite quantize --target ascend` shares the calibration code.
  x = mnist[1][0][:16]
  pb = tmp_path / "float.pb"
  pb.write_bytes(frozen.SerializeToString())
  contents = ptq.calibrated_contents(str(pb), frozen, lambda i: {INPUT: x}, [OUTPUT], 1)
  assert ('key: "%s"' % POOL) in contents[ptq.RECORD].decode()
  quantized = v1.GraphDef.FromString(contents["model_quantized.pb"])
  assert {n.name for n in quantized.node} >= {POOL + "/AscendQuant", POOL + "/AscendDequant"}
