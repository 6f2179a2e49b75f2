"""Bad input: each case fails early with an error naming the thing, and leaves the user's graph
and files as they were. Cases already covered beside their feature are listed in the README's
"Errors and guarantees"; here are the rest, and the all-or-nothing rewrite."""

import os
import sys

import numpy as np
import pytest
import tensorflow as tf

import ascend_models
import builders
import dpu_models
from qat_rewrite import amct, cli, decent_q, files, quantize
from qat_rewrite.export import to_tflite
from qat_rewrite.passes import rewrite as rewrite_pass
from qat_rewrite.targets.ascend import retrain
from qat_rewrite.targets.dpu import quantizers
from test_dpu_calibrate import frozen_test_cnn

v1 = tf.compat.v1


def _model(is_training, filters=4):
  """images -> conv + BN + relu6 -> dense logits."""
  images = v1.placeholder(tf.float32, [None, 8, 8, 3], name="images")
  x = builders.conv2d(images, filters, 3, normalizer="fused", is_training=is_training,
                      scope="conv")
  x = tf.reshape(x, [-1, 8 * 8 * filters])
  builders.fully_connected(x, 3, activation=None, scope="logits")
  return images


def _graph(build=_model, **kwargs):
  graph = tf.Graph()
  with graph.as_default():
    build(**kwargs)
  return graph


def _dpu_config(tmp_path, **changes):
  fields = dict(input_nodes=dpu_models.INPUT_NODES, output_nodes=dpu_models.OUTPUT_NODES,
                input_shapes=dpu_models.INPUT_SHAPES, output_dir=str(tmp_path / "out"))
  fields.update(changes)
  return decent_q.QuantizeConfig(**fields)


def _save_trained(directory, filters=4, quantized=True, **options):
  """A training graph (rewritten with `options` unless not `quantized`), initialised, run one
  step (its UPDATE_OPS: batch-norm statistics and ranges) and saved."""
  with tf.Graph().as_default() as graph:
    images = _model(is_training=True, filters=filters)
    if quantized:
      quantize.experimental_create_training_graph(graph, **options)
    with v1.Session() as sess:
      sess.run(v1.global_variables_initializer())
      sess.run(v1.get_collection(v1.GraphKeys.UPDATE_OPS),
               {images: np.random.RandomState(0).uniform(0, 1, (2, 8, 8, 3))})
      return v1.train.Saver().save(sess, os.path.join(str(directory), "model.ckpt"))


def _eval_graph(**options):
  graph = _graph(is_training=False)
  quantize.experimental_create_eval_graph(graph, **options)
  return graph


# ---- the rewrite functions ----

def test_a_graph_without_quantizable_layers_warns_and_reports(caplog):
  graph = tf.Graph()
  with graph.as_default():
    x = v1.placeholder(tf.float32, [None, 4], name="x")
    tf.nn.relu(x + 1.0, name="y")
  before = graph.as_graph_def()
  report = quantize.create_training_graph(graph)
  assert report.layers == [] and report.other_quantizers == []
  assert "no quantizable layer" in caplog.text
  assert graph.as_graph_def() == before


def test_rewriting_twice_with_other_settings_is_refused_and_changes_nothing():
  graph = _graph(is_training=True)
  quantize.experimental_create_training_graph(graph, weight_bits=8)
  before = graph.as_graph_def()
  quantize.experimental_create_training_graph(graph, weight_bits=8)  # contrib: a no-op
  assert graph.as_graph_def() == before
  with pytest.raises(ValueError, match="already rewritten with .*weight_bits=8.*weight_bits=4"):
    quantize.experimental_create_training_graph(graph, weight_bits=4)
  assert graph.as_graph_def() == before


def test_a_finalized_graph_is_refused():
  graph = _graph(is_training=True)
  graph.finalize()
  with pytest.raises(ValueError, match="finalized"):
    quantize.create_training_graph(graph)


def _fail_after(monkeypatch, module, name):
  """Makes `module.name` do all its work, then raise: a failure half-way through a rewrite."""
  real = getattr(module, name)

  def work_then_fail(*args, **kwargs):
    real(*args, **kwargs)
    raise RuntimeError("injected failure after %s" % name)

  monkeypatch.setattr(module, name, work_then_fail)


def _contrib(tmp_path, monkeypatch, training):
  _fail_after(monkeypatch, rewrite_pass, "insert_quantizers")
  graph = _graph(is_training=training)
  fn = quantize.create_training_graph if training else quantize.create_eval_graph
  return graph, lambda: fn(graph)


def _dpu(tmp_path, monkeypatch, training):
  _fail_after(monkeypatch, quantizers, "build")
  graph = _graph(lambda: dpu_models.build(is_training=training))
  fn = (decent_q.CreateQuantizeTrainingGraph if training
        else decent_q.CreateQuantizeEvaluationGraph)
  return graph, lambda: fn(graph, _dpu_config(tmp_path))


def _amct(tmp_path, monkeypatch, training):
  config = str(tmp_path / "config.json")
  amct.create_quant_retrain_config(config, _graph(lambda: ascend_models.build(True)))
  _fail_after(monkeypatch, retrain, "_record_op")
  graph = _graph(lambda: ascend_models.build(is_training=training))
  return graph, lambda: amct.create_quant_retrain_model(graph, config,
                                                        str(tmp_path / "record.txt"))


@pytest.mark.parametrize("target", [_contrib, _dpu, _amct])
@pytest.mark.parametrize("training", [True, False], ids=["training", "eval"])
def test_a_rewrite_failing_half_way_leaves_the_graph_exactly_as_it_was(tmp_path, monkeypatch,
                                                                       target, training):
  graph, rewrite = target(tmp_path, monkeypatch, training)
  before = graph.as_graph_def()
  collections = {key: list(graph.get_collection(key)) for key in graph.get_all_collection_keys()}
  with pytest.raises(RuntimeError, match="injected failure"):
    rewrite()
  assert graph.as_graph_def() == before
  assert {key: list(graph.get_collection(key))
          for key in graph.get_all_collection_keys()} == collections
  monkeypatch.undo()
  result = rewrite()  # the same graph still rewrites
  assert getattr(result, "report", result).layers


# ---- checkpoints ----

def test_eval_settings_other_than_the_training_ones_are_detected(tmp_path):
  checkpoint = _save_trained(tmp_path, weight_bits=4)
  graph = _eval_graph(weight_bits=8)
  message = "trained with .*weight_bits=4.* rewritten with .*weight_bits=8"
  with pytest.raises(ValueError, match=message):
    quantize.check_checkpoint(checkpoint, graph)
  out = tmp_path / "model.tflite"
  with pytest.raises(ValueError, match=message):
    to_tflite(graph, str(out), ["images"], ["logits/BiasAdd"], checkpoint=checkpoint,
              input_ranges={"images": (0.0, 1.0)})
  assert not out.exists()
  quantize.check_checkpoint(checkpoint, _eval_graph(weight_bits=4))  # the same settings pass
  with tf.Graph().as_default(), v1.Session() as sess:  # a Saver still restores it
    _model(is_training=False)
    quantize.experimental_create_eval_graph(weight_bits=8)
    v1.train.Saver().restore(sess, checkpoint)


def test_dpu_deploy_refuses_a_checkpoint_trained_with_other_bits(tmp_path):
  with tf.Graph().as_default() as train:
    dpu_models.build(is_training=True)
    decent_q.CreateQuantizeTrainingGraph(train, _dpu_config(tmp_path, weight_bit=4))
    with v1.Session() as sess:
      sess.run(v1.global_variables_initializer())
      checkpoint = v1.train.Saver().save(sess, str(tmp_path / "ckpt" / "model.ckpt"))
  with tf.Graph().as_default() as evaluation:
    dpu_models.build(is_training=False)
    decent_q.CreateQuantizeEvaluationGraph(evaluation, _dpu_config(tmp_path))
    with pytest.raises(ValueError, match="trained with .*weight_bit=4.*weight_bit=8"):
      decent_q.CreateQuantizeDeployGraph(evaluation, checkpoint, _dpu_config(tmp_path))
  assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("kind, message", [
    ("float", r"lacks \d+ variable\(s\) the graph needs, e.g. .*_quant/"),
    ("other model", r"variable conv/weights has shape \[3, 3, 3, 6\], the graph wants "
                    r"\[3, 3, 3, 4\] \(a checkpoint of another model\?\)"),
])
def test_an_export_from_the_wrong_checkpoint_names_it(tmp_path, kind, message):
  checkpoint = (_save_trained(tmp_path, quantized=False) if kind == "float"
                else _save_trained(tmp_path, filters=6))
  out = tmp_path / "model.tflite"
  with pytest.raises(ValueError, match=message):
    to_tflite(_eval_graph(), str(out), ["images"], ["logits/BiasAdd"], checkpoint=checkpoint,
              input_ranges={"images": (0.0, 1.0)})
  assert not out.exists()


# ---- decent_q configs that do not fit the graph ----

def test_input_shapes_that_contradict_the_input_node_are_refused(tmp_path):
  graph = _graph(lambda: dpu_models.build(is_training=True))
  before = graph.as_graph_def()
  config = _dpu_config(tmp_path, input_shapes=[[-1, 16, 17, 3]])
  with pytest.raises(ValueError, match=r"\[-1, 16, 17, 3\] does not fit input node 'net_in'"):
    decent_q.CreateQuantizeTrainingGraph(graph, config)
  assert graph.as_graph_def() == before


def test_inf_inside_the_graph_during_calibration_names_the_tensor(tmp_path):
  with tf.Graph().as_default() as graph:
    raw = v1.placeholder(tf.float32, [None, 4, 4, 3], name="raw")
    x = tf.identity(raw * 1e30, name="net_in")  # finite input, infinite after scaling
    tf.nn.conv2d(x, tf.ones([1, 1, 3, 2]), 1, "SAME", name="out")
  config = _dpu_config(tmp_path, calib_iter=1, output_nodes=["out"], input_shapes=[[-1, 4, 4, 3]])
  images = np.full((2, 4, 4, 3), 1e10, np.float32)
  with pytest.raises(ValueError, match=r"calibration batch 0 .*NaN or Inf in net_in:0"):
    decent_q.quantize_frozen(graph.as_graph_def(), lambda i: {"raw": images}, config)
  assert not (tmp_path / "out").exists()


# ---- the command line ----

@pytest.fixture
def cli_dir(tmp_path, monkeypatch):
  """A directory with model.pb, as the working directory; this module is the CLI's
  `--input_fn` module `bad_input_data`."""
  (tmp_path / "model.pb").write_bytes(frozen_test_cnn().SerializeToString())
  monkeypatch.chdir(tmp_path)
  monkeypatch.setitem(sys.modules, "bad_input_data", sys.modules[__name__])
  return tmp_path


def _quantize_argv(target, graph="model.pb", input_fn="nan_input"):
  return ["quantize", "--target", target, "--input_frozen_graph", graph, "--input_nodes",
          "net_in", "--output_nodes", "logits/BiasAdd", "--input_shapes", "?,16,16,3",
          "--input_fn", "bad_input_data." + input_fn, "--calib_iter", "2", "--output_dir", "out"]


def nan_input(i):
  """Calibration batches with one NaN pixel."""
  images = good_input(i)["raw"]
  images[1, 2, 3, 0] = np.nan
  return {"raw": images}


def good_input(i):
  return {"raw": np.random.RandomState(i).uniform(0, 255, (4, 16, 16, 3)).astype(np.float32)}


def _one_line_error(capsys, argv):
  status = cli.main(argv)
  err = capsys.readouterr().err
  assert status == 1 and len(err.strip().splitlines()) == 1 and "Traceback" not in err
  return err


@pytest.mark.parametrize("target", ["dpu", "ascend", "tflite"])
def test_nan_in_calibration_data_is_named_for_every_target(cli_dir, capsys, target):
  err = _one_line_error(capsys, _quantize_argv(target))
  assert "input_fn(0) feeds 'raw' NaN or Inf (first at index [1, 2, 3, 0])" in err
  assert not (cli_dir / "out").exists()


def test_a_graph_with_ops_this_tensorflow_does_not_know_is_named(cli_dir, capsys):
  graph_def = frozen_test_cnn()
  relu = next(n for n in graph_def.node if n.op == "Relu")
  relu.op = "MyCustomRelu"
  (cli_dir / "custom.pb").write_bytes(graph_def.SerializeToString())
  for argv in (_quantize_argv("dpu", "custom.pb"), ["inspect", "--input_frozen_graph",
                                                    "custom.pb"]):
    err = _one_line_error(capsys, argv)
    assert "'custom.pb' uses op types TensorFlow" in err
    assert "MyCustomRelu (node %r)" % relu.name in err
  assert not (cli_dir / "out").exists()


def test_a_full_disk_leaves_no_partial_output(cli_dir, capsys, full_disk):
  full_disk(2)  # the second file
  err = _one_line_error(capsys, _quantize_argv("dpu", input_fn="good_input"))
  assert "No space left on device" in err and "nothing was written" in err
  assert not (cli_dir / "out").exists()


def test_an_output_dir_without_write_permission_is_refused(tmp_path, monkeypatch):
  monkeypatch.setattr(files.os, "access", lambda path, mode: False)  # tests may run as root
  with pytest.raises(OSError, match="output_dir .*out' is not writable"):
    files.write_all(str(tmp_path / "out"), {"model.pb": b"bytes"})
  assert os.listdir(tmp_path) == []
