"""ONNX export: QuantizeLinear/DequantizeLinear pairs and integer weights that ONNX Runtime
runs in integers and that match the eval graph; a clear ImportError without the onnx extra."""

import logging
import os
import sys

import numpy as np
import pytest
import tensorflow as tf

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")
pytest.importorskip("tf2onnx")

from onnx import numpy_helper  # noqa: E402

import test_export_tflite as models  # noqa: E402  (the small CNN and its QAT checkpoint)
from qat_rewrite import export  # noqa: E402
from qat_rewrite.export import agreement  # noqa: E402

v1 = tf.compat.v1


@pytest.fixture(scope="module", params=["per_channel", "per_tensor"])
def trained(request, tmp_path_factory):
  directory = str(tmp_path_factory.mktemp(request.param))
  return models.qat_checkpoint(directory, request.param == "per_channel"), directory


def to_onnx(trained, path, **kwargs):
  graph, checkpoint = trained
  args = dict(input_nodes=["images"], output_nodes=[models.OUTPUT], checkpoint=checkpoint,
              input_ranges={"images": (0.0, 1.0)})
  args.update(kwargs)
  return export.to_onnx(graph, str(path), **args)


def test_activations_input_and_weights_become_quantize_dequantize_pairs(trained, tmp_path):
  result = to_onnx(trained, tmp_path / "m.onnx")
  model = onnx.load(result.path)
  types = [n.op_type for n in model.graph.node]
  # input, conv1, dw2, pw3 (conv_quant), the add's ReLU, the logits
  assert types.count("QuantizeLinear") == 6
  initializers = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
  weights = [n for n in model.graph.node
             if n.op_type == "DequantizeLinear" and n.input[0] in initializers]
  # conv1, dw2, pw3 and the logits read integer weights, on the eval graph's grid
  assert types.count("DequantizeLinear") == 6 + len(weights) and len(weights) == 4
  per_channel = os.path.basename(trained[1]).startswith("per_channel")
  for dq in weights:
    ints, scale = initializers[dq.input[0]], initializers[dq.input[1]]
    zero_point = initializers[dq.input[2]]
    # per-tensor weights are asymmetric: uint8, unless the nudged zero point lands mid-grid
    assert ints.dtype == np.int8 if per_channel else ints.dtype in (np.int8, np.uint8), dq.name
    assert ints.dtype == np.uint8 or not np.any(zero_point), dq.name
    assert scale.ndim == (1 if per_channel else 0), dq.name
  readers = {i for n in model.graph.node if n.op_type in ("Conv", "MatMul") for i in n.input}
  assert {dq.output[0] for dq in weights} <= readers
  assert result.output_nodes == ["model/logits/act_quant/FakeQuantWithMinMaxVars"]
  assert [o.name for o in model.graph.output] == [result.output_nodes[0] + ":0"]


def test_the_onnx_graph_computes_what_the_eval_graph_computes(trained, tmp_path):
  result = to_onnx(trained, tmp_path / "m.onnx")
  images, _ = models.data(200, seed=0, split=1)
  (reference,) = agreement.compare_onnx(result, {"images": images}, optimized=False).values()
  assert reference.elements == 2000
  assert reference.equal_share >= 0.99 and reference.max_lsb <= 1, reference


def test_onnx_runtime_integer_kernels_match_the_eval_graph(trained, tmp_path):
  """ONNX Runtime's optimizer fuses the QDQ pairs into QLinearConv, QGemm, ...; it ran its own
  weight quantization (78% equal per-channel, 19% / 10 LSB per-tensor) until the export gave
  it the eval graph's integer weights."""
  result = to_onnx(trained, tmp_path / "m.onnx")
  images, _ = models.data(200, seed=0, split=1)
  (fused,) = agreement.compare_onnx(result, {"images": images}).values()
  assert fused.equal_share >= 0.99 and fused.max_lsb <= 1, fused


def _pool_model(training):
  images = v1.placeholder(tf.float32, [None, 8, 8, 3], name="images")
  x = v1.layers.conv2d(images, 8, 3, padding="same", activation=tf.nn.relu, name="conv",
                       kernel_initializer=v1.glorot_uniform_initializer(seed=1))
  return tf.nn.avg_pool2d(x, 2, 2, "VALID", name="pool")


@pytest.mark.parametrize("ties, min_equal", [("to_even", 0.999), ("away_from_zero", 0.8)])
def test_average_pool_ties_round_as_onnx_runtime_rounds_them(tmp_path, caplog, ties, min_equal):
  """ONNX Runtime's QLinearAveragePool rounds exact halves to even; an eval graph rewritten
  with pool_ties="to_even" does too. The TFLite rule (the default) is warned about."""
  images = np.random.RandomState(0).uniform(0, 1, (64, 8, 8, 3)).astype(np.float32)
  graph, checkpoint = models.short_qat(str(tmp_path), _pool_model, images, steps=30,
                                       eval_options=dict(pool_ties=ties), symmetric=True,
                                       per_channel_weights=True)
  with caplog.at_level(logging.WARNING):
    result = export.to_onnx(graph, str(tmp_path / "pool.onnx"), ["images"], ["pool"],
                            checkpoint=checkpoint, input_ranges={"images": (0.0, 1.0)})
  warned = "rewrite the eval graph with pool_ties='to_even'" in caplog.text
  assert warned == (ties != "to_even"), caplog.text
  (fused,) = agreement.compare_onnx(result, {"images": images}).values()
  assert fused.elements == 64 * 4 * 4 * 8
  assert fused.equal_share >= min_equal and fused.max_lsb <= 1, fused
  if ties == "away_from_zero":
    assert fused.equal_share < 0.99, fused  # a quarter of the averages are ties


def test_the_mnist_cnn_matches_the_eval_graph(tmp_path):
  """The examples' MNIST CNN (average pool included), ties rounded as ONNX Runtime rounds them."""
  graph, checkpoint, input_node, output_node, images = models.mnist_cnn_eval_graph(
      str(tmp_path), pool_ties="to_even")
  pool = "model/pool/AvgPool/activation_AvgPool_quant/FakeQuantWithMinMaxVars"
  result = export.to_onnx(graph, str(tmp_path / "mnist.onnx"), [input_node], [pool, output_node],
                          checkpoint=checkpoint)
  logits = result.output_nodes[1]  # the output's quantizer
  fused = agreement.compare_onnx(result, {input_node: images})
  assert fused[pool].equal_share >= 0.99 and fused[pool].max_lsb <= 1, fused
  assert fused[logits].equal_share >= 0.99 and fused[logits].max_lsb <= 1, fused
  # Unfused, ONNX Runtime pools in float32, which lands beside some of the ties: the pool
  # stays within 1 LSB. The 1,568-wide dense layer after it sums those flipped ties, so its
  # logits may part by more; only the fused integer model is held to the logits.
  reference = agreement.compare_onnx(result, {input_node: images}, optimized=False)
  assert reference[pool].max_lsb <= 1 and reference[pool].equal_share >= 0.9, reference


@pytest.mark.skipif(os.environ.get("QAT_REWRITE_FAST_TESTS") == "1", reason="slow model")
def test_mobilenet_v2_matches_the_eval_graph(tmp_path):
  eval_graph, checkpoint, images, output = models.mobilenet_v2_eval_graph(str(tmp_path))
  result = export.to_onnx(eval_graph, str(tmp_path / "mobilenet.onnx"), ["images"], [output],
                          checkpoint=checkpoint, input_ranges={"images": (-1.0, 1.0)})
  for optimized in (True, False):
    (result_agreement,) = agreement.compare_onnx(result, {"images": images},
                                                 optimized=optimized).values()
    assert result_agreement.equal_share >= 0.99 and result_agreement.max_lsb <= 1, (
        optimized, result_agreement)


@pytest.mark.parametrize("change, message", [
    (dict(output_nodes=["model/nope"]), "'model/nope' not in the graph"),
    (dict(checkpoint=None), "pass the checkpoint"),
    (dict(opset=11), "opset"),
])
def test_bad_arguments_write_nothing(trained, tmp_path, change, message):
  with pytest.raises(ValueError, match=message):
    to_onnx(trained, tmp_path / "out" / "m.onnx", **change)
  assert not (tmp_path / "out").exists()


def test_without_tf2onnx_the_error_says_what_to_install(trained, tmp_path, monkeypatch):
  monkeypatch.setitem(sys.modules, "tf2onnx", None)  # as if not installed
  with pytest.raises(ImportError, match=r"pip install qat_rewrite\[onnx\]"):
    to_onnx(trained, tmp_path / "m.onnx")
  assert not os.listdir(tmp_path)
