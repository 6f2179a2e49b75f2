"""contrib's quant_ops_test.py numbers on `fake_quantize`, plus the step counter, `delay_reached`
and the FakeQuant grid.

As in contrib, the ranges start at 0 (init_min = init_max = 0) and the values are fed through a
placeholder of shape (2), in training mode.
"""
import numpy as np
import pytest
import tensorflow as tf

from qat_rewrite.quant import fake_quant, pool_rounding
from qat_rewrite.quant.spec import (LAST_VALUE, MOVING_AVERAGE, QuantSpec, activation_spec,
                                    weight_spec)

v1 = tf.compat.v1


def _last_value(**kwargs):
  return QuantSpec(tracker=LAST_VALUE, init_min=0.0, init_max=0.0, **kwargs)


def _moving_average(**kwargs):
  return QuantSpec(tracker=MOVING_AVERAGE, init_min=0.0, init_max=0.0, **kwargs)


def _ranges(spec, batches, shape=(2,), training=True):
  """Feeds each batch through `fake_quantize` and returns the final (min, max)."""
  with tf.Graph().as_default() as graph:
    x = v1.placeholder(tf.float32, shape=shape)
    y = fake_quant.fake_quantize(x, spec, 'q/', training)
    variables = {v.op.name: v for v in v1.global_variables()}
    assert {'q/min', 'q/max'} <= set(variables)
    with v1.Session(graph=graph) as sess:
      sess.run(v1.global_variables_initializer())
      for batch in batches:
        sess.run(y, {x: batch})
      return sess.run([variables['q/min'], variables['q/max']])


def test_last_value():
  lo, hi = _ranges(_last_value(), [[-1.0, 1.0]])
  assert (lo, hi) == pytest.approx((-1.0, 1.0))


def test_last_value_symmetric_wide_range():
  lo, hi = _ranges(_last_value(symmetric=True), [[-0.9921875, 0.9921875]])
  assert (lo, hi) == pytest.approx((-1.0, 0.9921875))


def test_last_value_symmetric_narrow_range():
  lo, hi = _ranges(_last_value(symmetric=True, narrow_range=True), [[-1.0, 0.5]])
  assert (lo, hi) == pytest.approx((-1.0, 1.0))


def test_last_value_range_always_contains_zero():
  assert _ranges(_last_value(), [[0.5, 2.0]]) == pytest.approx((0.0, 2.0))
  assert _ranges(_last_value(), [[-3.0, -1.0]]) == pytest.approx((-3.0, 0.0))


def test_last_value_follows_the_latest_batch_only():
  lo, hi = _ranges(_last_value(), [[-4.0, 4.0], [-1.0, 1.0]])
  assert (lo, hi) == pytest.approx((-1.0, 1.0))


@pytest.mark.parametrize('shape', [(2,), None], ids=['shape_2', 'shape_none'])
def test_moving_average_is_zero_debiased(shape):
  """From 0 with decay 0.999, [-1, 1] then [0, 0] gives (-0.5, 0.5) only with zero-debiasing."""
  lo, hi = _ranges(_moving_average(), [[-1.0, 1.0], [0.0, 0.0]], shape=shape)
  assert lo == pytest.approx(-0.5, abs=1e-3)
  assert hi == pytest.approx(0.5, abs=1e-3)


def test_moving_average_first_step_takes_the_batch_range():
  lo, hi = _ranges(QuantSpec(tracker=MOVING_AVERAGE), [[-1.0, 3.0]])  # init (-6, 6)
  assert (lo, hi) == pytest.approx((-1.0, 3.0), abs=1e-4)


def test_moving_average_symmetric():
  lo, hi = _ranges(_moving_average(symmetric=True), [[-1.0, 0.5], [0.0, 0.0]])
  assert lo == pytest.approx(-0.5, abs=1e-3)
  assert hi == pytest.approx(0.5 * 0.9921875, abs=1e-3)


def test_moving_average_symmetric_narrow_range():
  lo, hi = _ranges(_moving_average(symmetric=True, narrow_range=True), [[-1.0, 0.5], [0.0, 0.0]])
  assert lo == pytest.approx(-0.5, abs=1e-3)
  assert hi == pytest.approx(0.5, abs=1e-3)
  assert hi == pytest.approx(-lo, abs=1e-6)


@pytest.mark.parametrize('spec', [_last_value(), _moving_average()], ids=['last_value', 'ema'])
def test_partitioner_is_ignored(spec):
  """Under a partitioning variable scope the ranges stay single scalar variables."""
  with tf.Graph().as_default():
    x = v1.placeholder(tf.float32, [2])
    with v1.variable_scope('part', partitioner=v1.fixed_size_partitioner(2)):
      fake_quant.fake_quantize(x, spec, 'q/', True)
    ranges = [v for v in v1.global_variables() if v.op.name in ('q/min', 'q/max')]
    assert len(ranges) == 2
    assert all(v.shape.as_list() == [] for v in ranges)


def test_range_variables():
  """`<scope>min` / `<scope>max`, not trainable; last value needs nothing else (contrib: exactly 2)."""
  with tf.Graph().as_default():
    x = v1.placeholder(tf.float32, [2])
    fake_quant.fake_quantize(x, weight_spec(), 'layer/weights_quant/', True)
    weight_vars = {v.op.name for v in v1.global_variables()}
    fake_quant.fake_quantize(x, activation_spec(), 'layer/act_quant/', True)
    act_vars = {v.op.name for v in v1.global_variables()} - weight_vars
    assert not v1.trainable_variables()
  assert weight_vars == {'layer/weights_quant/min', 'layer/weights_quant/max'}
  assert {'layer/act_quant/min', 'layer/act_quant/max'} <= act_vars
  assert all(name.startswith('layer/act_quant/') for name in act_vars)


def test_eval_mode_reads_the_variables_and_never_updates_them():
  with tf.Graph().as_default() as graph:
    x = v1.placeholder(tf.float32, [4])
    y = fake_quant.fake_quantize(x, QuantSpec(init_min=-1.0, init_max=1.0), 'q/', False)
    variables = {v.op.name: v for v in v1.global_variables()}
    assert set(variables) == {'q/min', 'q/max'}
    initializers = {v.initializer for v in variables.values()}
    assert not [op for op in graph.get_operations()
                if 'Assign' in op.type and op not in initializers]
    with v1.Session() as sess:
      sess.run(v1.global_variables_initializer())
      out = sess.run(y, {x: [-5.0, -0.5, 0.5, 5.0]})
      assert sess.run([variables['q/min'], variables['q/max']]) == pytest.approx([-1.0, 1.0])
  assert out[0] == pytest.approx(-1.0, abs=0.01) and out[3] == pytest.approx(1.0, abs=0.01)


# ---------------------------------------------------------------- the FakeQuant grid

@pytest.mark.parametrize('low, high', [(-1.0, 1.0), (0.0, 2.55), (-0.3, 5.0)])
def test_eight_bit_values_land_on_the_grid(low, high):
  values = np.linspace(low, high, 1001).astype(np.float32)
  with tf.Graph().as_default():
    x = v1.placeholder(tf.float32, [1001])
    y = fake_quant.fake_quantize(x, QuantSpec(tracker=LAST_VALUE), 'q/', True)
    with v1.Session() as sess:
      sess.run(v1.global_variables_initializer())
      out = sess.run(y, {x: values})
  step = (high - low) / 255.0
  levels = out / step  # zero is exactly representable, so the grid is the multiples of the step
  np.testing.assert_allclose(levels, np.round(levels), atol=1e-3)
  assert len(np.unique(np.round(levels))) <= 256
  assert np.abs(out - values).max() <= step / 2 + 1e-5
  assert len(np.unique(out)) > 200  # the whole range is used, not a coarser grid


def test_narrow_range_weights_use_254_steps():
  values = np.linspace(-1.0, 1.0, 1001).astype(np.float32)
  with tf.Graph().as_default():
    x = v1.placeholder(tf.float32, [1001])
    y = fake_quant.fake_quantize(x, weight_spec(), 'q/', True)
    with v1.Session() as sess:
      sess.run(v1.global_variables_initializer())
      out = sess.run(y, {x: values})
  step = 2.0 / 254.0
  levels = np.round(out / step)
  np.testing.assert_allclose(out / step, levels, atol=1e-3)
  assert levels.min() == -127 and levels.max() == 127


@pytest.mark.parametrize('bits', [4, 8])
def test_num_bits_sets_the_number_of_levels(bits):
  values = np.linspace(0.0, 1.0, 4001).astype(np.float32)
  with tf.Graph().as_default():
    x = v1.placeholder(tf.float32, [4001])
    y = fake_quant.fake_quantize(x, QuantSpec(tracker=LAST_VALUE, bits=bits), 'q/', True)
    with v1.Session() as sess:
      sess.run(v1.global_variables_initializer())
      out = sess.run(y, {x: values})
  assert len(np.unique(out)) == 2 ** bits


@pytest.mark.parametrize('bits', [1, 17, 8.0, True, '8'])
def test_spec_rejects_bad_bits(bits):
  with pytest.raises(ValueError, match='bits'):
    QuantSpec(bits=bits)


# ---------------------------------------------------------------- the step counter

@pytest.mark.parametrize('use_resource', [None, True, False], ids=['default', 'resource', 'ref'])
def test_quantization_step(use_resource):
  with tf.Graph().as_default() as graph:
    step = fake_quant.quantization_step(graph, use_resource)
    count = len(graph.get_operations())
    assert count > 0
    assert fake_quant.quantization_step(graph) is step
    assert len(graph.get_operations()) == count
    assert step.dtype == tf.int64
    assert [v.op.name for v in v1.global_variables()] == ['fake_quantization_step']
    handle_type = 'VariableV2' if use_resource is False else 'VarHandleOp'
    assert graph.get_operation_by_name('fake_quantization_step').type == handle_type
    twice = step + step  # uses the step twice in one run
    with v1.Session() as sess:
      sess.run(v1.global_variables_initializer())
      assert sess.run(step) == 1
      assert sess.run([twice, step]) == [4, 2]
      assert sess.run(twice) == 6


def test_quantization_step_ignores_the_current_name_scope():
  with tf.Graph().as_default() as graph:
    with tf.name_scope('model'), v1.variable_scope('vars'):
      step = fake_quant.quantization_step(graph)
    assert step.name == 'fake_quantization_step/Identity:0'
    assert [v.op.name for v in v1.global_variables()] == ['fake_quantization_step']


# ---------------------------------------------------------------- delay_reached

@pytest.mark.parametrize('spec', [weight_spec(), activation_spec()], ids=['weights', 'activations'])
def test_delay_reached(spec):
  values = np.linspace(-1.0, 1.0, 7).astype(np.float32) * np.float32(0.987)
  with tf.Graph().as_default() as graph:
    x = v1.placeholder(tf.float32, [7])
    reached = v1.placeholder(tf.bool, [])
    y = fake_quant.fake_quantize(x, spec, 'q/', True, delay_reached=reached)
    assert graph.get_operation_by_name('q/delayed_quant').type == 'SelectV2'
    quantized = graph.get_tensor_by_name('q/FakeQuantWithMinMaxVars:0')
    variables = {v.op.name: v for v in v1.global_variables()}
    with v1.Session() as sess:
      sess.run(v1.global_variables_initializer())
      before, q_before = sess.run([y, quantized], {x: values, reached: False})
      # The range learns during the delay, so it is ready when quantization switches on.
      lo, hi = sess.run([variables['q/min'], variables['q/max']])
      after, q_after = sess.run([y, quantized], {x: values, reached: True})
  np.testing.assert_array_equal(before, values)
  assert np.abs(q_before - values).max() > 1e-4  # so the check above could have failed
  np.testing.assert_array_equal(after, q_after)
  assert np.abs(after - values).max() > 1e-4
  assert lo == pytest.approx(values.min(), abs=1e-3) and hi == pytest.approx(values.max(), abs=1e-3)


def test_delay_counted_in_quantization_steps():
  """`step_reached` (what quant_delay uses): a delay of 3 keeps the first 3 runs float."""
  values = np.linspace(-1.0, 1.0, 7).astype(np.float32) * np.float32(0.987)
  with tf.Graph().as_default() as graph:
    x = v1.placeholder(tf.float32, [7])
    reached = fake_quant.step_reached(graph, 3, 'q/activate_quant')
    y = fake_quant.fake_quantize(x, weight_spec(), 'q/', True, delay_reached=reached)
    delay = graph.get_operation_by_name('q/activate_quant/delay')
    assert delay.type == 'Const' and delay.get_attr('dtype') == tf.int64
    with v1.Session() as sess:
      sess.run(v1.global_variables_initializer())
      quantized = [np.abs(sess.run(y, {x: values}) - values).max() > 1e-4 for _ in range(4)]
  assert quantized == [False, False, False, True]


@pytest.mark.parametrize("low, high", [(0.0, 2.55), (-1.28, 1.27), (-6.0, 6.0)])
@pytest.mark.parametrize("rule", sorted(pool_rounding.RULES))
def test_pool_ties_round_by_the_rule_and_nothing_else_moves(rule, low, high):
  """Every 2x2 average an 8-bit grid allows (quarter steps) lands on the integer the runtime
  gives: ties by `rule`, in the signed domain; other values to the nearest."""
  scale = (high - low) / 255.0
  zero_point = np.floor(-low / scale + 0.5)
  unsigned = np.arange(0.0, 255.0, 0.25)  # every sum of four integers, divided by 4
  averages = ((unsigned - zero_point) * scale).astype(np.float32)
  with tf.Graph().as_default():
    level = tf.compat.v1.placeholder(tf.float32, [None])
    quantizer = tf.quantization.fake_quant_with_min_max_vars(level, low, high).op
    nudged = pool_rounding.round_ties(level, quantizer, 4, rule)
    out = tf.quantization.fake_quant_with_min_max_vars(nudged, low, high)
    assert pool_rounding.rule_of(nudged.op) == rule
    with tf.compat.v1.Session() as sess:
      got = np.round(sess.run(out, {level: averages}) / scale + zero_point)
  signed = unsigned - 128
  if rule == "to_even":
    want = np.round(signed)  # numpy rounds half to even
  else:
    want = np.sign(signed) * np.floor(np.abs(signed) + 0.5)
  np.testing.assert_array_equal(got - 128, want)
  ties = unsigned % 1 == 0.5
  np.testing.assert_array_equal((got - 128)[~ties], np.floor(signed + 0.5)[~ties])


def test_pool_ties_rule_must_be_known():
  with pytest.raises(ValueError, match="pool_ties must be one of away_from_zero, to_even"):
    pool_rounding.check_rule("half_up")


def test_a_bias_near_a_tie_rounds_as_the_converter_does():
  """A bias 10^5 steps long within 0.01 of a tie (squeeze-excite convs on small maps): its
  integer is round(bias / (s_in·s_w)) with the converter's double steps, which float32
  arithmetic misses."""
  w_max = np.array([0.0253, 0.0311, 0.0187], np.float32)
  s_in = (np.float64(np.float32(0.7)) - np.float64(np.float32(-0.7))) / 255
  s_exact = s_in * (2 * w_max.astype(np.float64) / 254)
  bias = (np.array([104838.4966, -87445.4929, 65551.5018]) * s_exact).astype(np.float32)
  want = np.round(bias.astype(np.float64) / s_exact)
  float32_scale = np.float32(1.4) / np.float32(255) * (2 * w_max / np.float32(254))
  float32_steps = np.round(bias / float32_scale)
  assert (float32_steps != want).any()  # the case the double arithmetic is for
  with tf.Graph().as_default(), v1.Session() as sess:
    in_q = tf.quantization.fake_quant_with_min_max_vars(tf.zeros([2]), -0.7, 0.7).op
    w_q = tf.quantization.fake_quant_with_min_max_vars_per_channel(
        tf.zeros([1, 3]), -w_max, w_max, narrow_range=True).op
    quantized = sess.run(fake_quant.quantize_bias(tf.constant(bias), in_q, w_q))
  assert np.round(quantized.astype(np.float64) / s_exact).tolist() == want.tolist()
