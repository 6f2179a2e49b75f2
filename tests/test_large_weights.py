"""Weights over the TFLite converter's folding limit (large_weights): the layer split into slices
of output channels converts to the FakeQuant grid's int8 weights and scales, and to the outputs
of a layer the converter takes whole."""

import numpy as np
import pytest
import tensorflow as tf

from qat_rewrite.export import converter_compat, large_weights, tflite
from qat_rewrite.graph.frozen import run_graph_def

v1 = tf.compat.v1
# A 1x1 conv of 8000 x 4194 weights: under 2**30 bits alone, over with its min and max
CIN, COUT = 8000, 4194
INPUT_RANGE, OUTPUT_RANGE = (-1.0, 1.0), (0.0, 6.0)


def layer(weights, high, bias, dense=False, per_channel=True):
  """A frozen eval layer as the rewrite makes it: the weights through its per_channel_reshape
  and _restore (both to the same shape), a bias computed from constants, ReLU, the output's
  FakeQuant."""
  cin, cout = weights.shape[-2:]
  with tf.Graph().as_default() as graph:
    x = v1.placeholder(tf.float32, [1, cin] if dense else [1, 1, 1, cin], name="x")
    x = tf.quantization.fake_quant_with_min_max_vars(x, tf.constant(INPUT_RANGE[0]),
                                                     tf.constant(INPUT_RANGE[1]), name="x_quant")
    read = tf.identity(tf.constant(weights), name="weights/read")
    if per_channel:
      quantized = tf.quantization.fake_quant_with_min_max_vars_per_channel(
          tf.reshape(read, weights.shape), tf.constant(-high), tf.constant(high),
          narrow_range=True, name="weights_quant")
      quantized = tf.reshape(quantized, tf.shape(read))
    else:
      high = np.float32(high.max())
      quantized = tf.quantization.fake_quant_with_min_max_vars(
          read, tf.constant(-high), tf.constant(high), narrow_range=True, name="weights_quant")
    y = (tf.matmul(x, quantized) if dense
         else tf.nn.conv2d(x, quantized, [1, 1, 1, 1], "VALID", name="conv"))
    y = tf.nn.relu(tf.nn.bias_add(y, tf.multiply(tf.constant(bias), 1.0)))
    tf.quantization.fake_quant_with_min_max_vars(y, tf.constant(OUTPUT_RANGE[0]),
                                                 tf.constant(OUTPUT_RANGE[1]), name="act_quant")
  return graph.as_graph_def()


def random_layer(cin, cout, dense=False, seed=0):
  rng = np.random.default_rng(seed)
  weights = rng.standard_normal([cin, cout] if dense else [1, 1, cin, cout], dtype=np.float32)
  weights *= np.float32(0.05)
  # wider than the weights, so that a scale from the data would differ from the grid's
  high = np.abs(weights).reshape(-1, cout).max(0) * np.float32(1.25)
  bias = rng.standard_normal(cout, dtype=np.float32) * np.float32(0.1)
  return weights, high, bias


def convert(graph_def, dense=False):
  shape = [1, graph_def_cin(graph_def)] if dense else [1, 1, 1, graph_def_cin(graph_def)]
  return tflite._convert(graph_def, ["x"], ["act_quant"], {"x": INPUT_RANGE}, {"x": shape},
                         "int8")


def graph_def_cin(graph_def):
  placeholder = next(n for n in graph_def.node if n.name == "x")
  return placeholder.attr["shape"].shape.dim[-1].size


def run(model, x):
  interpreter = tf.lite.Interpreter(model_content=model)
  interpreter.allocate_tensors()
  interpreter.set_tensor(interpreter.get_input_details()[0]["index"], x)
  interpreter.invoke()
  return interpreter.get_tensor(interpreter.get_output_details()[0]["index"])


def weight_tensors(model):
  """[(int8 weights as [Cout, ...], scales)] of the model's CONV_2D filters (named after their
  FakeQuant), in the order of their output channels (slices are named .../split_<i>/...)."""
  interpreter = tf.lite.Interpreter(model_content=model)
  found = []
  for detail in interpreter.get_tensor_details():
    if detail["dtype"] == np.int8 and "weights_quant" in detail["name"]:
      found.append((detail["name"], interpreter.get_tensor(detail["index"]),
                    detail["quantization_parameters"]["scales"]))
  found.sort(key=lambda item: _split_index(item[0]))
  return [(values, scales) for _, values, scales in found]


def _split_index(name):
  marker = name.find("/split_")
  return int(name[marker + 7:].split("/")[0]) if marker >= 0 else -1


def grid(weights, high):
  """The FakeQuant grid's integers and scales of `weights` ([..., Cout]) as TF computes them."""
  cout = weights.shape[-1]
  with tf.Graph().as_default(), v1.Session() as session:
    quantized = session.run(tf.quantization.fake_quant_with_min_max_vars_per_channel(
        weights.reshape(-1, cout), -high, high, narrow_range=True))
  scales = (high * 2 / 254).astype(np.float32)
  return np.round(quantized / scales).T.astype(np.int8), scales


def input_batch(cin, seed=1):
  return np.random.default_rng(seed).integers(-128, 128, (1, 1, 1, cin)).astype(np.int8)


@pytest.fixture(scope="module")
def large():
  weights, high, bias = random_layer(CIN, COUT)
  return weights, high, bias, layer(weights, high, bias)


def test_limit_is_the_folders_operand_size():
  assert 32 * (CIN * COUT + 2 * COUT) > large_weights.OPERAND_LIMIT_BITS > 32 * CIN * COUT


def test_small_weights_are_left_alone():
  graph_def = layer(*random_layer(64, 16))
  assert large_weights.split_large_weights(graph_def, ["act_quant"]) is graph_def


def test_a_layer_without_an_output_fake_quant_is_left_alone():
  """Its slices' outputs would have no range to share: no exact split."""
  graph_def = layer(*random_layer(64, 16))
  relu = next(n.name for n in graph_def.node if n.op == "Relu")
  cut = v1.graph_util.extract_sub_graph(graph_def, [relu])
  assert large_weights.split_large_weights(cut, [relu], limit_bits=32 * 66 * 4) is cut


def test_without_the_split_the_converter_refuses(large, monkeypatch):
  """The limit is TensorFlow's: if this starts passing, the split may no longer be needed."""
  monkeypatch.setattr(large_weights, "split_large_weights", lambda graph_def, outputs: graph_def)
  with pytest.raises(ValueError, match="FakeQuantWithMinMaxVarsPerChannel"):
    convert(large[3])


def test_large_weights_convert_to_the_grid(large):
  weights, high, bias, graph_def = large
  split = large_weights.split_large_weights(graph_def, ["act_quant"])
  model = convert(split)
  del split
  found = weight_tensors(model)
  assert len(found) == 2  # 4193 channels fit under the limit: two slices
  integers, scales = grid(weights, high)
  np.testing.assert_array_equal(np.concatenate([v.reshape(len(v), -1) for v, _ in found]),
                                integers)
  np.testing.assert_allclose(np.concatenate([s for _, s in found]), scales, rtol=1e-6)

  # output channels across the slice boundary and at both ends, against a normal conversion
  # of the same layer cut to those channels
  channels = np.r_[0:8, 2092:2102, COUT - 8:COUT]
  reference = convert(layer(weights[..., channels], high[channels], bias[channels]))
  (reference_weights, reference_scales), = weight_tensors(reference)
  np.testing.assert_array_equal(integers[channels], reference_weights.reshape(len(channels), -1))
  np.testing.assert_array_equal(np.concatenate([s for _, s in found])[channels], reference_scales)
  x = input_batch(CIN)
  np.testing.assert_array_equal(run(model, x)[..., channels], run(reference, x))


@pytest.mark.parametrize("dense, per_channel", [(False, True), (True, True), (False, False)])
def test_split_converts_as_the_whole(dense, per_channel):
  """Forced at a small size: the sliced layer computes the same floats in TF and converts to
  the whole layer's integers."""
  weights, high, bias = random_layer(96, 40, dense=dense)
  graph_def = layer(weights, high, bias, dense=dense, per_channel=per_channel)
  if dense:
    graph_def = converter_compat.dense_per_channel_as_conv(graph_def, ["act_quant"])
  # 96 weights + min + max a channel, 15 channels at most a slice: 3 slices
  split = large_weights.split_large_weights(graph_def, ["act_quant"], limit_bits=32 * 98 * 15)
  assert sum(n.op == "Conv2D" for n in split.node) == 3
  x = np.random.default_rng(2).integers(-128, 128, (1, 96)).astype(np.int8)
  x = x if dense else x.reshape(1, 1, 1, 96)
  floats = {"x": x.astype(np.float32) / 127.5}
  np.testing.assert_array_equal(run_graph_def(split, floats, ["act_quant"])["act_quant"],
                                run_graph_def(graph_def, floats, ["act_quant"])["act_quant"])
  whole, sliced = convert(graph_def, dense), convert(split, dense)
  (whole_weights, whole_scales), = weight_tensors(whole)
  found = weight_tensors(sliced)
  np.testing.assert_array_equal(np.concatenate([v for v, _ in found]), whole_weights)
  scales = np.concatenate([s for _, s in found])
  np.testing.assert_array_equal(scales, whole_scales if per_channel else whole_scales.repeat(3))
  np.testing.assert_array_equal(run(sliced, x), run(whole, x))
