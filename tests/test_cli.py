"""The `qat_rewrite` command line: each verb, its output files, and its errors."""

import csv
import math
import os
import subprocess
import sys

import numpy as np
import pytest

import dpu_models
from qat_rewrite import cli
from test_dpu_calibrate import frozen_test_cnn

INPUT_FN_MODULE = '''
import numpy as np

def input_fn(i):
  return {"raw": np.random.RandomState(i).uniform(0, 255, (4, 16, 16, 3)).astype(np.float32)}

def scaled_input_fn(i):
  return {"net_in": input_fn(i)["raw"] / 255.0}

def wrong_key(i):
  return {"pixels": np.zeros((4, 16, 16, 3), np.float32)}

def raises(i):
  raise RuntimeError("dataset not found")
'''


@pytest.fixture
def workdir(tmp_path, monkeypatch):
  """A directory with model.pb and calib.py, as the working directory."""
  (tmp_path / "model.pb").write_bytes(frozen_test_cnn().SerializeToString())
  (tmp_path / "calib.py").write_text(INPUT_FN_MODULE)
  monkeypatch.chdir(tmp_path)
  monkeypatch.syspath_prepend(str(tmp_path))
  sys.modules.pop("calib", None)
  return tmp_path


QUANTIZE = ["quantize", "--input_frozen_graph", "model.pb", "--input_nodes", "net_in",
            "--output_nodes", "logits/BiasAdd", "--input_shapes", "?,16,16,3",
            "--input_fn", "calib.input_fn", "--calib_iter", "2", "--output_dir", "out"]


def _run(argv, capsys):
  status = cli.main(argv)
  out, err = capsys.readouterr()
  return status, out, err


def _flag(argv, name, value):
  argv = list(argv)
  argv[argv.index(name) + 1] = value
  return argv


def test_quantize_writes_the_deploy_files_and_the_report(workdir, capsys):
  status, out, err = _run(QUANTIZE + ["--report", "--weight_bit", "6"], capsys)
  assert status == 0, err
  assert sorted(os.listdir(workdir / "out")) == [
      "deploy_model.pb", "quantize_eval_model.pb", "quantize_eval_model_fixneuron.pb",
      "quantize_info.txt", "quantize_report.csv", "quantize_report.md", "quantize_report.png"]
  info = (workdir / "out" / "quantize_info.txt").read_text()
  assert "conv1/mul_fold/wquant weights 6 " in info
  table = (workdir / "out" / "quantize_report.md").read_text()
  assert "| net_in/aquant | 8-bit, pos " in table and "| leaky/aquant |" in table
  assert (workdir / "out" / "quantize_report.png").read_bytes()[:4] == b"\x89PNG"
  report = _report_rows(workdir / "out")
  assert report["conv1/mul_fold/wquant"]["grid"].startswith("6-bit")
  assert 20 < float(report["leaky/aquant"]["float_sqnr_db"]) < float(
      report["net_in/aquant"]["float_sqnr_db"])  # the error grows along the network


def test_quantize_refuses_to_overwrite_unless_told(workdir, capsys):
  assert _run(QUANTIZE, capsys)[0] == 0
  before = (workdir / "out" / "deploy_model.pb").stat().st_mtime_ns
  status, _, err = _run(QUANTIZE, capsys)
  assert status == 1 and "already exists; pass --overwrite" in err
  assert (workdir / "out" / "deploy_model.pb").stat().st_mtime_ns == before
  assert _run(QUANTIZE + ["--overwrite"], capsys)[0] == 0


@pytest.mark.parametrize("change, message", [
    (("--input_frozen_graph", "missing.pb"), "cannot read graph file 'missing.pb'"),
    (("--input_frozen_graph", "calib.py"), "'calib.py' is not a binary GraphDef"),
    (("--input_nodes", "no_such_node"), "no_such_node"),
    (("--input_shapes", "?,16,x,3"), "--input_shapes '?,16,x,3'"),
    (("--input_fn", "nowhere.input_fn"), "cannot import module 'nowhere'"),
    (("--input_fn", "calib.missing"), "module 'calib' has no 'missing'"),
    (("--input_fn", "calib.wrong_key"), "feeds 'pixels', which is not a placeholder"),
    (("--input_fn", "calib.raises"), "raised on batch 0: RuntimeError: dataset not found"),
    (("--weight_bit", "17"), "weight_bit"),
    (("--calib_iter", "0"), "calib_iter"),
])
def test_quantize_errors_are_one_line_exit_1_and_write_nothing(workdir, capsys, change, message):
  argv = _flag(QUANTIZE, *change) if change[0] in QUANTIZE else QUANTIZE + list(change)
  status, out, err = _run(argv, capsys)
  assert status == 1
  assert message in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err
  assert not (workdir / "out").exists()


def test_verbose_shows_the_traceback(workdir, capsys):
  status, _, err = _run(_flag(QUANTIZE, "--input_fn", "calib.raises") + ["--verbose"], capsys)
  assert status == 1 and "Traceback" in err


def test_usage_errors_exit_2(workdir, capsys):
  with pytest.raises(SystemExit) as e:
    cli.main(["quantize", "--input_nodes", "net_in"])  # no --input_frozen_graph
  assert e.value.code == 2
  with pytest.raises(SystemExit) as e:
    cli.main(["compress"])
  assert e.value.code == 2


@pytest.mark.parametrize("verb", ["quantize", "inspect", "dump", "export"])
def test_every_verb_has_help(verb):
  result = subprocess.run([sys.executable, "-m", "qat_rewrite", verb, "--help"],
                          capture_output=True, text=True, timeout=120)
  assert result.returncode == 0 and "--input_frozen_graph" in result.stdout


def test_inspect_says_how_each_op_is_quantized_or_why_not(workdir, capsys):
  status, out, _ = _run(["inspect", "--input_frozen_graph", "model.pb"], capsys)
  assert status == 0
  assert "likely inputs (placeholders): raw, labels" in out or "raw" in out.split("likely inputs")[1]
  assert "give --input_nodes and --output_nodes" in out
  status, out, _ = _run(["inspect", "--input_frozen_graph", "model.pb", "--input_nodes", "net_in",
                         "--output_nodes", "logits/BiasAdd", "--ignore_nodes", "branch_a/Conv2D"],
                        capsys)
  assert status == 0
  rows = {line.split(" | ")[0].strip("| "): line for line in out.splitlines()
          if line.startswith("| ")}
  assert "layer: weights 8-bit, bias 8-bit" in rows["conv2/Conv2D"]
  assert "float: " in rows["branch_a/Conv2D"] and "ignore_nodes" in rows["branch_a/Conv2D"]
  assert "activation 8-bit" in rows["leaky"]
  assert "input 8-bit, method 0" in rows["net_in"]


def test_dump_writes_the_integers_of_every_quantized_tensor(workdir, capsys):
  assert _run(QUANTIZE, capsys)[0] == 0
  # quantize_eval_model.pb starts at the input node: the dump feeds net_in, not raw.
  status, out, err = _run(["dump", "--input_frozen_graph", "out/quantize_eval_model.pb",
                           "--input_fn", "calib.scaled_input_fn", "--output_dir", "dump",
                           "--dump_float", "1"], capsys)
  assert status == 0, err
  positions = {}
  for line in open("out/quantize_info.txt"):
    if line.startswith("# layer"):
      break
    if not line.startswith("#"):
      name, _, bits, pos = line.split()[:4]
      positions[name] = (int(bits), int(pos))
  weights = np.loadtxt("dump/dump_results_weights/conv1_mul_fold_wquant.txt", dtype=np.int64)
  raw = np.fromfile("dump/dump_results_weights/conv1_mul_fold_wquant.bin", np.int8)
  assert np.array_equal(weights, raw) and weights.size == 3 * 3 * 3 * 8
  assert np.abs(weights).max() <= 128
  relu = np.fromfile("dump/dump_results_0/relu1_aquant.bin", np.int8)
  relu_float = np.fromfile("dump/dump_results_0/relu1_aquant_float.bin", np.float32)
  _, pos = positions["relu1/aquant"]
  np.testing.assert_array_equal(relu, relu_float * 2.0 ** pos)
  assert relu.min() >= 0 and relu.size == 4 * 16 * 16 * 8
  assert os.path.exists("dump/dump_results_0/net_in_aquant.txt")
  assert not os.path.exists("dump/dump_results_1")


def test_dump_refuses_a_float_graph(workdir, capsys):
  status, _, err = _run(["dump", "--input_frozen_graph", "model.pb", "--input_fn",
                         "calib.input_fn", "--output_dir", "dump"], capsys)
  assert status == 1 and "no quantized tensors" in err and not os.path.exists("dump")


def test_input_shapes_parse_vai_q_spelling():
  assert cli._shapes("?,224,224,3:?,300,300,1") == [[-1, 224, 224, 3], [-1, 300, 300, 1]]
  assert dpu_models.INPUT_SHAPES == [[-1, 16, 16, 3]]


def test_quantize_for_tflite_writes_a_fully_integer_model(workdir, capsys):
  import tensorflow as tf
  status, out, err = _run(_flag(QUANTIZE, "--output_dir", "tfl") + ["--target", "tflite"], capsys)
  assert status == 0, err
  interpreter = tf.lite.Interpreter(model_path="tfl/quantized_model.tflite")
  types = {np.dtype(d["dtype"]).name for d in interpreter.get_tensor_details()}
  assert "float32" not in types and "int8" in types
  assert interpreter.get_input_details()[0]["name"] == "net_in"


def test_quantize_for_ascend_writes_the_record_and_both_models(workdir, capsys):
  status, out, err = _run(_flag(QUANTIZE, "--output_dir", "asc") + ["--target", "ascend"], capsys)
  assert status == 0, err
  assert sorted(os.listdir("asc")) == ["model_fake_quant.pb", "model_quantized.pb", "record.txt"]
  record = open("asc/record.txt").read()
  assert 'key: "conv1/Conv2D"' in record and "scale_d" in record and "offset_w" in record


def _report_rows(directory):
  with open(os.path.join(directory, "quantize_report.csv")) as f:
    return {row["quantized_tensor"]: row for row in csv.DictReader(f)}


REPORT_FILES = ["quantize_report.csv", "quantize_report.md", "quantize_report.png"]


@pytest.mark.parametrize("target, files, rows", [
    ("tflite", ["quantized_model.tflite"], ["net_in", "relu1", "concat", "logits/BiasAdd"]),
    ("ascend", ["model_fake_quant.pb", "model_quantized.pb", "record.txt"],
     ["conv1/Conv2D", "branch_b/depthwise", "avgpool", "logits/MatMul"])])
def test_report_for_every_target(workdir, capsys, target, files, rows):
  status, out, err = _run(_flag(QUANTIZE, "--output_dir", target) + ["--target", target,
                                                                       "--report"], capsys)
  assert status == 0, err
  assert sorted(os.listdir(target)) == sorted(files + REPORT_FILES)
  assert os.path.join(target, "quantize_report.md") in out
  report = _report_rows(target)
  assert set(rows) <= set(report)
  for name in rows:
    assert 20 < float(report[name]["float_sqnr_db"]) < 80, (name, report[name])
  table = (workdir / target / "quantize_report.md").read_text()
  assert "| SQNR vs float (dB) |" in table.splitlines()[0]


def test_dpu_report_points_at_the_narrow_layer(workdir, capsys):
  """relu_a on 3 bits: its grid is the weakest and the error it adds shows against the float
  graph. (8 vs 4 bits everywhere: test_error_report's DPU test.)"""
  for name, extra in (("eight", []), ("narrow", ["--nodes_bit", "relu_a:3"])):
    assert _run(_flag(QUANTIZE, "--output_dir", name) + ["--report"] + extra, capsys)[0] == 0
  eight, narrow = _report_rows("eight"), _report_rows("narrow")
  assert narrow["relu_a/aquant"]["grid"].startswith("3-bit")
  assert min(narrow.values(), key=lambda r: float(r["sqnr_db"]))["quantized_tensor"] == (
      "relu_a/aquant")
  assert float(narrow["relu_a/aquant"]["float_sqnr_db"]) < float(
      eight["relu_a/aquant"]["float_sqnr_db"]) - 10


def test_report_files_are_refused_like_the_others(workdir, capsys):
  os.makedirs("tfl")
  (workdir / "tfl" / "quantize_report.md").write_text("mine")
  argv = _flag(QUANTIZE, "--output_dir", "tfl") + ["--target", "tflite", "--report"]
  status, _, err = _run(argv, capsys)
  assert status == 1 and "tfl/quantize_report.md already exists" in err
  assert os.listdir("tfl") == ["quantize_report.md"]
  assert _run(argv + ["--overwrite"], capsys)[0] == 0
  assert sorted(os.listdir("tfl")) == sorted(["quantized_model.tflite"] + REPORT_FILES)


@pytest.fixture(scope="module")
def frozen_qat_eval_graph(tmp_path_factory):
  """A qat_rewrite.quantize eval graph of the export tests' CNN, frozen to a .pb."""
  from qat_rewrite.export import frozen as export_frozen
  from test_export_tflite import OUTPUT, qat_checkpoint
  directory = tmp_path_factory.mktemp("qat")
  graph = qat_checkpoint(str(directory), per_channel=True, steps=20)
  graph_def = graph.as_graph_def()
  quantized = export_frozen.quantized_output(graph_def, OUTPUT)
  path = directory / "eval.pb"
  path.write_bytes(export_frozen.freeze(graph_def, [quantized], str(directory))
                   .SerializeToString())
  return str(path)


EXPORT = ["export", "--input_nodes", "images", "--output_nodes", "model/logits/BiasAdd",
          "--input_ranges", "0,1"]


def test_export_to_tflite_writes_a_fully_integer_model(frozen_qat_eval_graph, tmp_path, capsys):
  from qat_rewrite.export import integer_check
  out = str(tmp_path / "model.tflite")
  argv = EXPORT + ["--input_frozen_graph", frozen_qat_eval_graph, "--to", "tflite",
                   "--output_file", out]
  status, stdout, err = _run(argv, capsys)
  assert status == 0, err
  content = open(out, "rb").read()
  assert integer_check.float_tensors(content) == [] and str(len(content)) in stdout
  status, _, err = _run(argv, capsys)
  assert status == 1 and "already exists; pass --overwrite" in err


EXPORT_INPUT_FN = '''
from test_export_tflite import data

def images(i):
  return {"images": data(8, i, split=1)[0]}
'''


def test_export_report_writes_the_model_and_the_report_beside_it(frozen_qat_eval_graph,
                                                                  tmp_path, monkeypatch, capsys):
  (tmp_path / "export_calib.py").write_text(EXPORT_INPUT_FN)
  monkeypatch.chdir(tmp_path)
  sys.modules.pop("export_calib", None)
  argv = EXPORT + ["--input_frozen_graph", frozen_qat_eval_graph, "--to", "tflite",
                   "--output_file", "out/model.tflite", "--report"]
  status, _, err = _run(argv, capsys)
  assert status == 1 and "--input_fn is required" in err and not os.path.exists("out")
  status, stdout, err = _run(argv + ["--input_fn", "export_calib.images"], capsys)
  assert status == 0, err
  assert sorted(os.listdir("out")) == sorted(["model.tflite"] + REPORT_FILES)
  assert "out/model.tflite (" in stdout
  report = _report_rows("out")
  for name in ("images", "model/Relu", "model/Relu6",
               "model/logits/act_quant/FakeQuantWithMinMaxVars"):
    assert report[name]["float_tensor"] == name + ":0"
    assert math.isfinite(float(report[name]["float_sqnr_db"]))
  unmatched = [r for r in report.values() if not r["float_tensor"]]
  assert all(r["note"] and r["float_sqnr_db"] == "nan" for r in unmatched)
  status, _, err = _run(argv + ["--input_fn", "export_calib.images"], capsys)
  assert status == 1 and "already exists; pass --overwrite" in err
  status, _, err = _run(_flag(argv, "--to", "onnx") + ["--input_fn", "export_calib.images"],
                        capsys)
  assert status == 1 and "--report is for --to tflite" in err


def test_export_to_onnx_writes_quantize_dequantize_pairs(frozen_qat_eval_graph, tmp_path, capsys):
  onnx = pytest.importorskip("onnx")
  out = str(tmp_path / "model.onnx")
  status, _, err = _run(EXPORT + ["--input_frozen_graph", frozen_qat_eval_graph, "--to", "onnx",
                                  "--output_file", out], capsys)
  assert status == 0, err
  ops = {node.op_type for node in onnx.load(out).graph.node}
  assert {"QuantizeLinear", "DequantizeLinear"} <= ops


def test_export_rejects_a_bad_range(frozen_qat_eval_graph, tmp_path, capsys):
  argv = _flag(EXPORT, "--input_ranges", "0-1") + [
      "--input_frozen_graph", frozen_qat_eval_graph, "--to", "tflite",
      "--output_file", str(tmp_path / "m.tflite")]
  status, _, err = _run(argv, capsys)
  assert status == 1 and "--input_ranges '0-1'" in err and not (tmp_path / "m.tflite").exists()


def test_ascend_range_method_changes_the_recorded_data_scale(workdir, capsys):
  scales = {}
  for method in ("min_max", "percentile"):
    argv = _flag(QUANTIZE, "--output_dir", method) + ["--target", "ascend", "--range_method",
                                                      method]
    assert _run(argv, capsys)[0] == 0
    record = open(os.path.join(method, "record.txt")).read()
    scales[method] = float(record.split("scale_d:")[1].split()[0])
  assert scales["percentile"] < scales["min_max"]
  status, _, err = _run(QUANTIZE + ["--range_method", "mse"], capsys)
  assert status == 1 and "--range_method is for --target ascend" in err


def test_inspect_for_ascend_names_the_layers_and_the_float_ops(workdir, capsys):
  status, out, _ = _run(["inspect", "--input_frozen_graph", "model.pb", "--target", "ascend"],
                        capsys)
  assert status == 0
  rows = {line.split(" | ")[0].strip("| "): line for line in out.splitlines()
          if line.startswith("| ")}
  assert "layer: int8 data" in rows["conv2/Conv2D"]
  assert "has 3 input channels (<= 16)" in rows["conv1/Conv2D"]
  assert "quantization (ascend)" in out


def test_existing_outputs_are_refused_before_calibration(workdir, capsys):
  os.makedirs("asc")
  (workdir / "asc" / "record.txt").write_text("mine")
  calls = []
  import calib
  calib_input = calib.input_fn
  calib.input_fn = lambda i: calls.append(i) or calib_input(i)
  argv = _flag(QUANTIZE, "--output_dir", "asc") + ["--target", "ascend"]
  status, _, err = _run(argv, capsys)
  assert status == 1 and "asc/record.txt already exists" in err and calls == []
  assert (workdir / "asc" / "record.txt").read_text() == "mine"


def test_the_command_line_prints_what_was_asked_and_no_tensorflow_banners(tmp_path):
  # TensorFlow's C++ start-up notices (oneDNN, CUDA driver) are dropped; help is all there is.
  done = subprocess.run([sys.executable, "-m", "qat_rewrite", "inspect", "--help"],
                        capture_output=True, text=True, check=False, cwd=tmp_path)
  assert done.returncode == 0 and done.stdout.startswith("usage: qat_rewrite inspect")
  assert done.stderr == ""


def test_quantize_for_tflite_keeps_the_converter_chatter_out(workdir, capfd):
  status = cli.main(_flag(QUANTIZE, "--output_dir", "tfl") + ["--target", "tflite"])
  out, err = capfd.readouterr()
  assert status == 0, err
  assert "fully_quantize" not in out + err
  assert "quantized_model.tflite" in out + err  # what the user asked for is still said
