"""Post-training quantization of frozen graphs for the DPU (decent_q.quantize_frozen)."""

import gc
import os
import weakref

import numpy as np
import pytest
import tensorflow as tf

import dpu_models
from qat_rewrite import decent_q
from qat_rewrite.graph import frozen
from qat_rewrite.quant import pow2
from qat_rewrite.targets.dpu import agreement

v1 = tf.compat.v1


def frozen_test_cnn(is_training=False):
  """The decent_q test CNN with random weights, frozen to constants (a .pb's content)."""
  with tf.Graph().as_default() as graph:
    dpu_models.build(is_training=is_training)
    with v1.Session() as sess:
      sess.run(v1.global_variables_initializer())
      return v1.graph_util.convert_variables_to_constants(sess, graph.as_graph_def(), ["probs"])


def _config(tmp_path, **fields):
  return decent_q.QuantizeConfig(input_nodes=dpu_models.INPUT_NODES,
                                 output_nodes=dpu_models.OUTPUT_NODES,
                                 input_shapes=dpu_models.INPUT_SHAPES,
                                 output_dir=str(tmp_path / "out"), **fields)


def _input_fn(batches):
  return lambda i: {"raw": batches[i][0]}


def _info_positions(path):
  positions = {}
  for line in open(path):
    if line.startswith("# layer"):
      break
    if not line.startswith("#"):
      name, _, _, pos = line.split()[:4]
      positions[name] = int(pos)
  return positions


@pytest.fixture(scope="module")
def test_cnn():
  return frozen_test_cnn()


def test_calibration_writes_the_deploy_files_and_they_agree(test_cnn, tmp_path):
  batches = list(dpu_models.batches(4))
  paths = decent_q.quantize_frozen(test_cnn, _input_fn(batches), _config(tmp_path, calib_iter=4))
  assert sorted(paths) == ["deploy_model.pb", "quantize_eval_model.pb",
                           "quantize_eval_model_fixneuron.pb", "quantize_info.txt"]
  for name, result in agreement.compare(paths, {"net_in": batches[0][0] / 255.0}).items():
    assert result.equal_share == 1.0, name


def test_activation_positions_are_the_most_frequent_batch_position(test_cnn, tmp_path):
  # Batches 0-2 are small images, batch 3 ten times brighter: the mode is the small one.
  images = [next(dpu_models.batches(1, seed=s))[0] * (10.0 if s == 3 else 1.0) for s in range(4)]
  paths = decent_q.quantize_frozen(test_cnn, lambda i: {"raw": images[i]},
                                   _config(tmp_path, calib_iter=4, method=0))
  positions = _info_positions(paths["quantize_info.txt"])
  per_batch = [pow2.non_overflow_pos(image / 255.0, 8) for image in images]
  assert per_batch[3] != per_batch[0]
  assert positions["net_in/aquant"] == pow2.most_frequent_pos(per_batch) == per_batch[0]


def test_calibration_holds_one_batch_at_a_time(test_cnn, tmp_path):
  """Memory does not grow with calib_iter: no batch is kept after it has run."""
  alive = []

  def input_fn(i):
    gc.collect()
    alive.append(sum(ref() is not None for ref in refs))
    images = next(dpu_models.batches(1, seed=i))[0]
    refs.append(weakref.ref(images))
    return {"raw": images}

  refs = []
  decent_q.quantize_frozen(test_cnn, input_fn, _config(tmp_path, calib_iter=6))
  assert max(alive) <= 1, alive


def test_batch_norm_behind_a_learning_phase_switch_folds(tmp_path):
  """A TF1-style Keras graph: both BN branches behind Switch/Merge on a learning-phase
  PlaceholderWithDefault(False). decent_q failed on it; here it settles to inference."""
  with tf.Graph().as_default() as graph:
    v1.disable_control_flow_v2()
    try:
      x = v1.placeholder(tf.float32, [None, 8, 8, 3], name="net_in")
      phase = v1.placeholder_with_default(False, [], name="keras_learning_phase")
      w = v1.get_variable("w", [3, 3, 3, 4])
      y = tf.nn.conv2d(x, w, 1, "SAME", name="conv")
      scale, offset = tf.ones([4]), tf.zeros([4])
      mean, var = tf.constant([0.1] * 4), tf.constant([2.0] * 4)
      bn = v1.cond(phase,
                   lambda: tf.compat.v1.nn.fused_batch_norm(y, scale, offset, is_training=True)[0],
                   lambda: tf.compat.v1.nn.fused_batch_norm(y, scale, offset, mean, var,
                                                            is_training=False)[0])
      tf.nn.relu(bn, name="relu")
    finally:
      v1.enable_control_flow_v2()
    with v1.Session() as sess:
      sess.run(v1.global_variables_initializer())
      graph_def = v1.graph_util.convert_variables_to_constants(sess, graph.as_graph_def(),
                                                               ["relu"])
      images = np.random.RandomState(0).uniform(-1, 1, (2, 8, 8, 3)).astype(np.float32)
      want = sess.run("relu:0", {"net_in:0": images})
  assert {"Switch", "Merge"} <= {n.op for n in graph_def.node}
  settled, count = frozen.settle_constant_switches(graph_def)
  assert count >= 1 and not {"Switch", "Merge"} & {n.op for n in settled.node}
  with tf.Graph().as_default():
    tf.import_graph_def(settled, name="")
    with v1.Session() as sess:
      np.testing.assert_allclose(sess.run("relu:0", {"net_in:0": images}), want, atol=1e-5)
  config = decent_q.QuantizeConfig(input_nodes=["net_in"], output_nodes=["relu"],
                                   input_shapes=[[-1, 8, 8, 3]], output_dir=str(tmp_path / "o"),
                                   calib_iter=2)
  paths = decent_q.quantize_frozen(graph_def, lambda i: {"net_in": images}, config)
  info = open(paths["quantize_info.txt"]).read()
  assert "\nconv " in info.split("# layer")[1]  # the conv is a quantized layer
  deploy = frozen.load_graph_def(paths["deploy_model.pb"])
  assert not {"Switch", "Merge", "FusedBatchNormV3"} & {n.op for n in deploy.node}


def test_nan_in_calibration_data_names_the_tensor_and_writes_nothing(test_cnn, tmp_path):
  images = next(dpu_models.batches(1))[0]
  images[0, 2, 3, 1] = np.nan
  with pytest.raises(ValueError, match=r"input_fn\(0\) feeds 'raw' NaN or Inf .*\[0, 2, 3, 1\]"):
    decent_q.quantize_frozen(test_cnn, lambda i: {"raw": images}, _config(tmp_path, calib_iter=1))
  assert not os.path.exists(tmp_path / "out")


@pytest.mark.parametrize("feeds, message", [
    (lambda i: None, "must return a non-empty dict"),
    (lambda i: {"images": np.zeros((1, 16, 16, 3))}, "'images', which is not a placeholder"),
    (lambda i: {"raw": np.zeros((1, 16, 3))}, r"shape \[1, 16, 3\]; the placeholder's shape"),
])
def test_bad_input_fn_results_are_named(test_cnn, tmp_path, feeds, message):
  with pytest.raises(ValueError, match=message):
    decent_q.quantize_frozen(test_cnn, feeds, _config(tmp_path, calib_iter=1))
  assert not os.path.exists(tmp_path / "out")


def test_load_graph_def_names_a_bad_file(tmp_path):
  truncated = tmp_path / "truncated.pb"
  truncated.write_bytes(frozen_test_cnn().SerializeToString()[:300])
  text = tmp_path / "notes.pb"
  text.write_text("not a graph")
  for path in (truncated, text):
    with pytest.raises(ValueError, match=str(path)):
      frozen.load_graph_def(str(path))
  with pytest.raises(ValueError, match="cannot read graph file"):
    frozen.load_graph_def(str(tmp_path / "missing.pb"))
