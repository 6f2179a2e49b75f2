"""The per-tensor error report: SQNR on crafted tensors whose noise is known."""

import math

import numpy as np
import pytest
import tensorflow as tf

from qat_rewrite import error_report

v1 = tf.compat.v1


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
      rows = {r.name: r for r in error_report.measure(sess, error_report.find_quantizers(graph),
                                                      {inp: x})}
  assert rows["q8"].sqnr_db - rows["q4"].sqnr_db == pytest.approx(24.0, abs=1.0)
  table = error_report.markdown(list(rows.values()))
  assert table.splitlines()[0].startswith("| quantized tensor | grid |") and "| q4 |" in table
  assert error_report.csv_text(list(rows.values())).splitlines()[0] == (
      "quantized_tensor,grid,min,max,sqnr_db")
