"""Every example runs to its results on a fresh workdir (few steps; the figures are the README's,
from full runs). An example may end with its own accuracy verdict, "FAIL: ... below float", at
these step counts, but never with a traceback: one crashed after training once (a graph without a
seed under op determinism) and nothing noticed."""

import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run(args, cwd=ROOT):
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
  done = subprocess.run([sys.executable] + args, cwd=cwd, env=env, capture_output=True,
                        text=True, timeout=600)
  assert "Traceback" not in done.stderr, done.stderr[-3000:]
  assert done.returncode == 0 or "FAIL:" in done.stdout, (done.returncode, done.stdout[-2000:],
                                                          done.stderr[-2000:])
  return done.stdout


def test_main_example(tmp_path):
  out = run(["examples/mnist_qat.py", "--steps", "40", "--output_dir", str(tmp_path)])
  assert "QAT accuracy (quantized eval)" in out


def test_decent_q_example(tmp_path):
  workdir = ["--workdir", str(tmp_path)]
  run(["examples/decent_q/train.py", "--float_steps", "40", "--qat_steps", "20"] + workdir)
  out = run(["examples/decent_q/eval.py"] + workdir)
  assert "quantized eval graph" in out and "deploy_model.pb" in out


def test_ptq_example(tmp_path):
  run(["examples/ptq/float_model.py", "--workdir", str(tmp_path), "--steps", "40"])
  model = str(tmp_path / "float_model.pb")
  results = str(tmp_path / "quantize_results")
  run(["-m", "qat_rewrite", "quantize", "--input_frozen_graph", model, "--input_nodes", "net_in",
       "--output_nodes", "model/logits/BiasAdd", "--input_shapes", "?,28,28,1",
       "--input_fn", "mnist_input.calib_input", "--calib_iter", "2", "--output_dir", results],
      cwd=os.path.join(ROOT, "examples", "ptq"))
  out = run(["examples/ptq/evaluate.py", "--float_model", model, "--quantized_model",
             os.path.join(results, "quantize_eval_model.pb")])
  assert "quantize_eval_model.pb   :" in out


def test_amct_example(tmp_path):
  out = run(["examples/amct/retrain.py", "--workdir", str(tmp_path), "--float_steps", "40",
             "--retrain_steps", "20"])
  assert "_quantized.pb" in out and "fake-quant model (INT8)" in out


def test_tflite_example(tmp_path):
  out = run(["examples/tflite/train.py", "--workdir", str(tmp_path), "--float_steps", "40",
             "--qat_steps", "20"])
  assert "int8 TFLite accuracy" in out


def test_decompose_example(tmp_path):
  out = run(["examples/decompose/decompose.py", "--workdir", str(tmp_path), "--float_steps", "40",
             "--finetune_steps", "10", "--retrain_steps", "10"])
  assert "decomposed, AMCT INT8" in out and "_quantized.pb" in out
