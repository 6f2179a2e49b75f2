"""The integer reference runner against TF float ops on dequantized values, op by op."""

import logging

import numpy as np
import pytest
import tensorflow as tf

from qat_rewrite.quant import pow2
from qat_rewrite.targets.dpu import arithmetic
from qat_rewrite.targets.dpu import reference_runner as runner


# Crafting deploy graphs -----------------------------------------------------------------------

def node(name, op, inputs=(), **attrs):
  """A NodeDef; ndarray attrs become tensors, lists list(int), str/bool/int/float scalars."""
  result = tf.compat.v1.NodeDef(name=name, op=op)
  result.input.extend(inputs)
  for key, value in attrs.items():
    attr = result.attr[key]
    if isinstance(value, np.ndarray):
      attr.tensor.CopyFrom(tf.make_tensor_proto(value))
    elif isinstance(value, (list, tuple)):
      attr.list.i.extend(value)
    elif isinstance(value, str):
      attr.s = value.encode()
    elif isinstance(value, bool):
      attr.b = value
    elif isinstance(value, int):
      attr.i = value
    else:
      attr.f = value
  return result


def graph(*nodes):
  graph_def = tf.compat.v1.GraphDef()
  graph_def.node.extend(nodes)
  return graph_def


def placeholder(name="x", bits=8, pos=0):
  return node(name, "Placeholder", opos=[bits, pos])


def grid_ints(rng, shape, bits=8, dtype=np.int64):
  return rng.integers(-2 ** (bits - 1), 2 ** (bits - 1), shape).astype(dtype)


def tf_float(fn, *arrays):
  """fn's float64 result on constants, in a fresh graph."""
  with tf.Graph().as_default(), tf.compat.v1.Session() as session:
    return session.run(fn(*[tf.constant(a, tf.float64) for a in arrays]))


def expected(value, bits, pos):
  """The eval graph's integers: value fake-quantized (round half up) onto (bits, pos)."""
  q = pow2.quantize(value, bits, pos, rounding=pow2.HALF_UP).astype(np.float64)
  return np.rint(q * 2.0 ** pos).astype(np.int64)


def run_one(graph_def, feeds, output, opos):
  ints, pos = runner.run(graph_def, feeds, [output])[output]
  assert pos == opos and ints.dtype == np.int64
  return ints


def value(ints, pos):
  return ints.astype(np.float64) * 2.0 ** -pos


# Weight layers --------------------------------------------------------------------------------

def layer(op, w, wpos, bias=None, bpos=None, opos=None, **attrs):
  """An 8-bit weight layer "layer" reading "x"."""
  extra = {"bias": bias.astype(np.int8), "bpos": [8, bpos]} if bias is not None else {}
  if opos is not None:
    extra["opos"] = [8, opos]
  return node("layer", op, ["x"], weights=w.astype(np.int8), wpos=[8, wpos], **extra, **attrs)


@pytest.mark.parametrize("padding, stride, dilation", [
    ("SAME", 1, 1), ("VALID", 1, 1), ("SAME", 2, 1), ("VALID", 2, 1), ("SAME", 1, 2),
    ("VALID", 1, 2)])
def test_conv2d_with_bias(padding, stride, dilation):
  rng = np.random.default_rng(stride * 10 + dilation)
  x, w, b = grid_ints(rng, (2, 9, 8, 3)), grid_ints(rng, (3, 3, 3, 4)), grid_ints(rng, (4,))
  conv = layer("Conv2D", w, 5, b, 3, opos=-2, strides=[1, stride, stride, 1],
               dilations=[1, dilation, dilation, 1], padding=padding, data_format="NHWC")
  got = run_one(graph(placeholder(pos=4), conv), {"x": x}, "layer", -2)
  ref = tf_float(lambda x, w, b: tf.nn.conv2d(x, w, stride, padding, dilations=dilation) + b,
                 value(x, 4), value(w, 5), value(b, 3))
  np.testing.assert_array_equal(got, expected(ref, 8, -2))


def test_an_all_zero_bias_at_position_127_adds_nothing():
  """A bias that stayed zero gets position 127 (found by fuzzing: the runner shifted the
  accumulator 117 bits up to meet it and refused)."""
  rng = np.random.default_rng(0)
  x, w = grid_ints(rng, (1, 4, 4, 2)), grid_ints(rng, (1, 1, 2, 3))
  conv = layer("Conv2D", w, 4, np.zeros(3), 127, opos=2, strides=[1, 1, 1, 1],
               dilations=[1, 1, 1, 1], padding="SAME", data_format="NHWC")
  got = run_one(graph(placeholder(pos=6), conv), {"x": x}, "layer", 2)
  ref = tf_float(lambda x, w: tf.nn.conv2d(x, w, 1, "SAME"), value(x, 6), value(w, 4))
  np.testing.assert_array_equal(got, expected(ref, 8, 2))


def test_depthwise_with_multiplier_2():
  rng = np.random.default_rng(1)
  x, w, b = grid_ints(rng, (2, 7, 7, 3)), grid_ints(rng, (3, 3, 3, 2)), grid_ints(rng, (6,))
  dw = layer("DepthwiseConv2dNative", w, 6, b, 4, opos=-1, strides=[1, 2, 2, 1],
             padding="SAME")
  got = run_one(graph(placeholder(pos=3), dw), {"x": x}, "layer", -1)
  ref = tf_float(lambda x, w, b: tf.nn.depthwise_conv2d(x, w, [1, 2, 2, 1], "SAME") + b,
                 value(x, 3), value(w, 6), value(b, 4))
  np.testing.assert_array_equal(got, expected(ref, 8, -1))


@pytest.mark.parametrize("padding, size", [("SAME", 10), ("SAME", 9), ("VALID", 11)])
def test_conv2d_transpose_stride_2(padding, size):
  rng = np.random.default_rng(size)
  x, w, b = grid_ints(rng, (2, 5, 5, 3)), grid_ints(rng, (3, 3, 4, 3)), grid_ints(rng, (4,))
  out_shape = [-1, size, size, 4]
  up = layer("Conv2DBackpropInput", w, 6, b, 5, opos=0, strides=[1, 2, 2, 1], padding=padding,
             output_shape=out_shape)
  got = run_one(graph(placeholder(pos=4), up), {"x": x}, "layer", 0)
  ref = tf_float(lambda x, w, b: tf.nn.conv2d_transpose(x, w, [2, size, size, 4], 2, padding) + b,
                 value(x, 4), value(w, 6), value(b, 5))
  np.testing.assert_array_equal(got, expected(ref, 8, 0))


def test_matmul_with_bias():
  rng = np.random.default_rng(2)
  x, w, b = grid_ints(rng, (3, 20)), grid_ints(rng, (20, 5)), grid_ints(rng, (5,))
  fc = layer("MatMul", w, 7, b, 2, opos=1, transpose_a=False, transpose_b=False)
  got = run_one(graph(placeholder(pos=5), fc), {"x": x}, "layer", 1)
  ref = tf_float(lambda x, w, b: tf.matmul(x, w) + b, value(x, 5), value(w, 7), value(b, 2))
  np.testing.assert_array_equal(got, expected(ref, 8, 1))


def test_accumulator_beyond_32_bits_is_a_warning_naming_the_node(caplog):
  w = np.full((1, 1, 4, 1), 2 ** 15 - 1, np.int16)
  conv = node("wide", "Conv2D", ["x"], weights=w, wpos=[16, 0], padding="VALID")
  x = np.full((1, 1, 1, 4), -2 ** 15, np.int64)
  with caplog.at_level(logging.WARNING):
    ints, _ = runner.run(graph(placeholder(bits=16), conv), {"x": x}, ["wide"])["wide"]
  assert ints.item() == -4 * 2 ** 15 * (2 ** 15 - 1)  # exact all the same
  assert "wide" in caplog.text and "32 bits" in caplog.text


def test_products_beyond_2_53_stay_exact():
  rng = np.random.default_rng(10)
  x = rng.integers(2 ** 30, 2 ** 31, (2, 256))
  w = rng.integers(2 ** 14, 2 ** 15, (256, 3)).astype(np.int16)
  fc = node("fc", "MatMul", ["x"], weights=w, wpos=[16, 0])
  ints = run_one(graph(placeholder(bits=32), fc), {"x": x}, "fc", 0)
  assert np.abs(ints).min() > 2 ** 53
  assert ints.tolist() != (x.astype(float) @ w.astype(float)).astype(np.int64).tolist()  # rounds
  assert ints.tolist() == (x.astype(object) @ w.astype(object)).tolist()


# Activations ----------------------------------------------------------------------------------

def test_conv_then_relu6_requantizes_once_from_the_exact_accumulator():
  rng = np.random.default_rng(3)
  x, w = grid_ints(rng, (1, 6, 6, 4)), grid_ints(rng, (3, 3, 4, 5))
  conv = layer("Conv2D", w, 7, padding="SAME")  # no opos: exact accumulator
  relu6 = node("relu6", "Relu6", ["layer"], opos=[8, 4])
  got = run_one(graph(placeholder(pos=5), conv, relu6), {"x": x}, "relu6", 4)
  ref = tf_float(lambda x, w: tf.nn.relu6(tf.nn.conv2d(x, w, 1, "SAME")), value(x, 5), value(w, 7))
  np.testing.assert_array_equal(got, expected(ref, 8, 4))
  assert got.max() == 96 and got.min() == 0  # clamped at 6 = 96/16


@pytest.mark.parametrize("pos, opos", [(-3, -3), (-3, 0), (0, 2)])
def test_relu_and_relu6_at_coarse_positions(pos, opos):
  x = np.arange(-4, 5, dtype=np.int64)
  for op, fn in (("Relu", tf.nn.relu), ("Relu6", tf.nn.relu6)):
    g = graph(placeholder(pos=pos), node("act", op, ["x"], opos=[8, opos]))
    got = run_one(g, {"x": x}, "act", opos)
    np.testing.assert_array_equal(got, expected(tf_float(fn, value(x, pos)), 8, opos))


def test_leaky_relu_dyadic_alpha():
  x = np.arange(-128, 128, dtype=np.int64).reshape(1, 16, 16, 1)
  g = graph(placeholder(pos=3), node("leaky", "LeakyRelu", ["x"], alpha=26 / 256, opos=[8, 5]))
  got = run_one(g, {"x": x}, "leaky", 5)
  ref = tf_float(lambda x: tf.nn.leaky_relu(x, 26 / 256), value(x, 3))
  np.testing.assert_array_equal(got, expected(ref, 8, 5))
  g = graph(placeholder(pos=3), node("exact", "LeakyRelu", ["x"], alpha=26 / 256))
  ints = run_one(g, {"x": x}, "exact", 3 + 7)  # 26/256 = 13/2^7: the position grows by 7
  np.testing.assert_array_equal(runner.to_float(ints, 10), np.where(x < 0, x * 13 / 128, x) / 8)


def test_relu6_without_output_position_is_exact_at_coarse_positions():
  g = graph(placeholder(pos=-3), node("relu6", "Relu6", ["x"]))
  ints = run_one(g, {"x": np.array([-1, 0, 1, 2], np.int64)}, "relu6", -1)  # -8 0 8 16
  np.testing.assert_array_equal(runner.to_float(ints, -1), [0, 0, 6, 6])


def test_leaky_relu_alpha_0_1_asks_for_simulate_dpu():
  g = graph(placeholder(), node("leaky", "LeakyRelu", ["x"], alpha=0.1, opos=[8, 0]))
  with pytest.raises(ValueError, match="leaky.*simulate_dpu"):
    runner.run(g, {"x": np.zeros(3, np.int64)}, ["leaky"])


# Combining positions --------------------------------------------------------------------------

def test_add_aligns_two_positions():
  rng = np.random.default_rng(4)
  a, b = grid_ints(rng, (2, 4, 4, 3)), grid_ints(rng, (2, 4, 4, 3))
  g = graph(placeholder("a", pos=2), placeholder("b", pos=6),
            node("sum", "AddV2", ["a", "b:0"], opos=[8, 1]))
  got = run_one(g, {"a": a, "b": b}, "sum", 1)
  ref = tf_float(tf.add, value(a, 2), value(b, 6))
  np.testing.assert_array_equal(got, expected(ref, 8, 1))


def test_concat_aligns_positions():
  rng = np.random.default_rng(5)
  a, b = grid_ints(rng, (1, 3, 3, 2)), grid_ints(rng, (1, 3, 3, 4))
  g = graph(placeholder("a", pos=1), placeholder("b", pos=4),
            node("cat", "ConcatV2", ["a", "b", "^a"], axis=-1, N=2, opos=[8, 2]))
  got = run_one(g, {"a": a, "b": b}, "cat", 2)
  ref = tf_float(lambda a, b: tf.concat([a, b], -1), value(a, 1), value(b, 4))
  np.testing.assert_array_equal(got, expected(ref, 8, 2))
  ints, pos = runner.run(graph(*g.node[:2], node("cat", "ConcatV2", ["a", "b"], axis=3)),
                         {"a": a, "b": b}, ["cat"])["cat"]
  assert pos == 4 and np.array_equal(ints[..., :2], a * 8)  # exact without opos


# Pools ----------------------------------------------------------------------------------------

def test_max_pool_same():
  rng = np.random.default_rng(6)
  x = grid_ints(rng, (2, 7, 6, 3)) - 200  # all negative: zero padding would show
  g = graph(placeholder(bits=16, pos=2), node("pool", "MaxPool", ["x"], ksize=[1, 3, 3, 1],
                                              strides=[1, 2, 2, 1], padding="SAME"))
  got = run_one(g, {"x": x}, "pool", 2)
  ref = tf_float(lambda x: tf.nn.max_pool2d(x, 3, 2, "SAME"), value(x, 2))
  np.testing.assert_array_equal(got, expected(ref, 16, 2))


def test_avg_pool_valid_3x3_with_dpu_multiplier():
  k, n = arithmetic.avgpool_multiplier(3, 3)
  rng = np.random.default_rng(7)
  x = grid_ints(rng, (2, 7, 7, 4))
  g = graph(placeholder(pos=4), node("pool", "AvgPool", ["x"], ksize=[1, 3, 3, 1],
                                     strides=[1, 2, 2, 1], padding="VALID", dpu_multiplier=[k, n],
                                     opos=[8, 5]))
  got = run_one(g, {"x": x}, "pool", 5)
  scale = arithmetic.avgpool_scale(3, 3)
  ref = tf_float(lambda x: tf.nn.avg_pool2d(x, 3, 2, "VALID") * scale, value(x, 4))
  np.testing.assert_array_equal(got, expected(ref, 8, 5))
  # The DPU's sum·k/2^n: the same integers.
  sums = np.lib.stride_tricks.sliding_window_view(x, (3, 3), axis=(1, 2))[:, ::2, ::2].sum((-2, -1))
  np.testing.assert_array_equal(got, np.floor(sums * k / 2.0 ** (n + 4 - 5) + 0.5))


def test_avg_pool_same_divides_by_the_valid_count_at_borders():
  rng = np.random.default_rng(8)
  x = grid_ints(rng, (1, 5, 6, 2))
  g = graph(placeholder(pos=3), node("pool", "AvgPool", ["x"], ksize=[1, 3, 3, 1],
                                     strides=[1, 1, 1, 1], padding="SAME", opos=[8, 4]))
  got = run_one(g, {"x": x}, "pool", 4)
  ref = tf_float(lambda x: tf.nn.avg_pool2d(x, 3, 1, "SAME"), value(x, 3))
  np.testing.assert_array_equal(got, expected(ref, 8, 4))
  assert got[0, 0, 0, 0] == np.floor(x[0, :2, :2, 0].sum() * 2 / 4 + 0.5)  # corner: 4 elements


def test_mean_is_a_global_average_with_multiplier():
  k, n = arithmetic.avgpool_multiplier(7, 7)
  rng = np.random.default_rng(9)
  x = grid_ints(rng, (2, 7, 7, 5))
  g = graph(placeholder(pos=2), node("mean", "Mean", ["x"], reduction_indices=[1, 2],
                                     keep_dims=False, dpu_multiplier=[k, n], opos=[8, 5]))
  got = run_one(g, {"x": x}, "mean", 5)
  scale = arithmetic.avgpool_scale(7, 7)
  ref = tf_float(lambda x: tf.reduce_mean(x, [1, 2]) * scale, value(x, 2))
  assert got.shape == (2, 5)
  np.testing.assert_array_equal(got, expected(ref, 8, 5))


def test_average_rounds_exact_rational_ties_half_up():
  # Means 2.5 and -2.5 (at pos 0) are ties; exact arithmetic rounds them up.
  x = np.array([1, 4, 0, 0, -1, -4, 0, 0], np.int64).reshape(2, 2, 2, 1)
  g = graph(placeholder(), node("mean", "Mean", ["x"], reduction_indices=[1, 2], keep_dims=True,
                                opos=[8, 1]))
  np.testing.assert_array_equal(run_one(g, {"x": x}, "mean", 1).ravel(), [3, -2])  # 1.25 at pos 1


def test_averages_need_an_output_position():
  for op, attrs in (("AvgPool", dict(ksize=[1, 2, 2, 1], strides=[1, 2, 2, 1], padding="VALID")),
                    ("Mean", dict(reduction_indices=[1, 2]))):
    g = graph(placeholder(), node("avg", op, ["x"], **attrs))
    with pytest.raises(ValueError, match="avg.*opos"):
      runner.run(g, {"x": np.zeros((1, 2, 2, 1), np.int64)}, ["avg"])


# Structure, rounding, saturation --------------------------------------------------------------

def test_reshape_squeeze_pad_are_exact():
  x = np.arange(24, dtype=np.int64).reshape(2, 1, 3, 4)
  g = graph(placeholder(pos=3),
            node("pad", "Pad", ["x"], paddings=[0, 0, 0, 0, 1, 2, 0, 1]),
            node("squeeze", "Squeeze", ["pad"], squeeze_dims=[1]),
            node("flat", "Reshape", ["squeeze"], shape=[-1, 30]),
            node("copy", "Identity", ["flat"], opos=[8, 2]))
  out = runner.run(g, {"x": x}, ["pad", "squeeze", "flat", "copy"])
  padded = np.pad(x, [(0, 0), (0, 0), (1, 2), (0, 1)])
  assert out["pad"][1] == 3 and np.array_equal(out["pad"][0], padded)
  assert np.array_equal(out["squeeze"][0], padded[:, 0])
  assert np.array_equal(out["flat"][0], padded.reshape(2, 30))
  assert np.array_equal(out["copy"][0], expected(padded.reshape(2, 30) / 8.0, 8, 2))


def test_values_beyond_the_grid_saturate():
  g = graph(placeholder(pos=4), node("sum", "Add", ["x", "x"], opos=[8, 4]))
  out = runner.run(g, {"x": np.array([-20.0, 7.0, 9.0, -7.0, 0.5])}, ["x", "sum"])
  np.testing.assert_array_equal(out["x"][0], [-128, 112, 127, -112, 8])
  np.testing.assert_array_equal(out["sum"][0], [-128, 127, 127, -128, 16])


def test_exact_halves_round_up():
  g = graph(placeholder(pos=1), node("out", "Identity", ["x"], opos=[8, 0]))
  ints = run_one(g, {"x": np.array([5, -5, 3, -3], np.int64)}, "out", 0)  # 2.5 -2.5 1.5 -1.5
  np.testing.assert_array_equal(ints, [3, -2, 2, -1])
  ints, _ = runner.run(g, {"x": np.array([1.25, -1.25, 0.75])}, ["x"])["x"]  # fed floats too
  np.testing.assert_array_equal(ints, [3, -2, 2])
  np.testing.assert_array_equal(runner.to_float(ints, 1), [1.5, -1.0, 1.0])


def test_long_chains_need_no_recursion():
  nodes = [placeholder()] + [node("n%d" % i, "Identity", ["x" if i == 0 else "n%d" % (i - 1)])
                             for i in range(3000)]
  ints, pos = runner.run(graph(*nodes), {"x": np.array([7], np.int64)}, ["n2999"])["n2999"]
  assert ints.tolist() == [7] and pos == 0


def test_only_needed_nodes_run():
  g = graph(placeholder("a"), placeholder("b"), node("unused", "Bogus", ["b"]),
            node("out", "Relu", ["a"]))
  assert runner.run(g, {"a": np.array([-1, 2], np.int64)}, ["out"])["out"][0].tolist() == [0, 2]


# Errors ---------------------------------------------------------------------------------------

def test_missing_feed_names_the_placeholder():
  g = graph(placeholder("image"), node("out", "Relu", ["image"]))
  with pytest.raises(ValueError, match="image"):
    runner.run(g, {}, ["out"])


def test_unknown_op_names_the_node_and_lists_supported_ops():
  g = graph(placeholder(), node("odd", "Softplus", ["x"]))
  with pytest.raises(ValueError, match="odd.*Softplus.*supported.*Conv2D"):
    runner.run(g, {"x": np.zeros(2, np.int64)}, ["odd"])


def test_unknown_output_is_named():
  with pytest.raises(ValueError, match="nowhere"):
    runner.run(graph(placeholder()), {"x": np.zeros(2, np.int64)}, ["nowhere"])


def test_nchw_is_refused():
  conv = layer("Conv2D", np.ones((1, 1, 1, 1)), 0, padding="VALID", data_format="NCHW")
  with pytest.raises(ValueError, match="layer.*NCHW"):
    runner.run(graph(placeholder(), conv), {"x": np.zeros((1, 1, 1, 1), np.int64)}, ["layer"])
