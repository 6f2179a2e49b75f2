"""Per-tensor quantization error of an eval graph, so that the weakest layers stand out.

For every quantizer it measures, on one batch, the float tensor entering it and the quantized
tensor leaving it: the float range and the signal-to-quantization-noise ratio
SQNR = 10·log10(Σx² / Σ(x − q)²) in dB (each 1-bit step is worth about 6 dB). Works on DPU
eval models (Identity `<op>/aquant|wquant` tagged `_bit_width`, `_quantize_pos`) and on
FakeQuant graphs (contrib, TFLite, Ascend), live or frozen.
"""

import csv
import dataclasses
import io
import math

import numpy as np
import tensorflow as tf

from qat_rewrite.graph.view import FAKE_QUANT_TYPES


@dataclasses.dataclass
class Quantizer:
  """One quantized tensor: its name, the tensors before and after, its grid as text."""
  name: str
  float_tensor: tf.Tensor
  quantized_tensor: tf.Tensor
  grid: str


@dataclasses.dataclass
class Row:
  name: str
  grid: str
  minimum: float
  maximum: float
  sqnr_db: float


def find_quantizers(graph):
  """Every quantizer of `graph`, in graph order."""
  found = []
  for op in graph.get_operations():
    if op.type in FAKE_QUANT_TYPES:
      found.append(Quantizer(op.name, op.inputs[0], op.outputs[0], _fake_quant_grid(op)))
    elif "_quantize_pos" in op.node_def.attr:
      attr = op.node_def.attr
      grid = "%d-bit, pos %d" % (attr["_bit_width"].i, attr["_quantize_pos"].i)
      found.append(Quantizer(op.name, _outside_input(graph, op.name), op.outputs[0], grid))
  return found


def _fake_quant_grid(op):
  if op.type == "FakeQuantWithMinMaxArgs":
    return "%d-bit, [%g, %g]" % (op.get_attr("num_bits"), op.get_attr("min"), op.get_attr("max"))
  per_channel = " per channel" if op.type.endswith("PerChannel") else ""
  return "%d-bit%s, range from %s" % (op.get_attr("num_bits"), per_channel, op.inputs[1].op.name)


def _outside_input(graph, name):
  """The float tensor a power-of-two quantizer `name` reads: the one input of its `name/` ops
  that comes from outside them."""
  scope = name + "/"
  inside = [op for op in graph.get_operations() if op.name.startswith(scope)]
  sources = {t.ref(): t for op in inside for t in op.inputs
             if not t.op.name.startswith(scope) and t.dtype.is_floating}
  if len(sources) != 1:
    raise ValueError("cannot find the float input of quantizer %s (%d candidates)"
                     % (name, len(sources)))
  return next(iter(sources.values()))


def measure(sess, quantizers, feeds):
  """A Row per quantizer from one run of `sess` on `feeds`."""
  fetches = {q.name: (q.float_tensor, q.quantized_tensor) for q in quantizers}
  values = sess.run(fetches, feeds)
  rows = []
  for q in quantizers:
    x, y = (np.asarray(v, np.float64) for v in values[q.name])
    rows.append(Row(q.name, q.grid, float(x.min(initial=0)), float(x.max(initial=0)),
                    sqnr_db(x, y)))
  return rows


def sqnr_db(x, q):
  """10·log10(Σx² / Σ(x − q)²); inf when quantization is exact, -inf for an all-zero x."""
  signal = float(np.sum(np.square(x)))
  noise = float(np.sum(np.square(np.asarray(x, np.float64) - q)))
  if noise == 0.0:
    return math.inf
  return 10.0 * math.log10(signal / noise) if signal else -math.inf


def markdown(rows):
  lines = ["| quantized tensor | grid | min | max | SQNR (dB) |", "|---|---|---|---|---|"]
  lines += ["| %s | %s | %.6g | %.6g | %.2f |" % (r.name, r.grid, r.minimum, r.maximum, r.sqnr_db)
            for r in rows]
  return "\n".join(lines) + "\n"


def csv_text(rows):
  out = io.StringIO()
  writer = csv.writer(out)
  writer.writerow(["quantized_tensor", "grid", "min", "max", "sqnr_db"])
  for r in rows:
    writer.writerow([r.name, r.grid, repr(r.minimum), repr(r.maximum), repr(r.sqnr_db)])
  return out.getvalue()


def bar_chart_png(rows, title="SQNR per quantized tensor"):
  """The PNG bytes of a horizontal bar chart, weakest tensors in red; needs matplotlib
  (`pip install qat_rewrite[report]`)."""
  try:
    import matplotlib
    matplotlib.use("Agg")
    from matplotlib import pyplot
  except ImportError as e:
    raise ImportError("the SQNR chart needs matplotlib: pip install 'qat_rewrite[report]'") from e
  finite = [r.sqnr_db for r in rows if math.isfinite(r.sqnr_db)]
  cap = max(finite, default=0.0) + 10.0
  values = [min(max(r.sqnr_db, 0.0), cap) for r in rows]
  weakest = sorted(values)[:max(1, len(values) // 10)]
  figure, axes = pyplot.subplots(figsize=(8, 0.25 * len(rows) + 1.5))
  axes.barh(range(len(rows)), values,
            color=["tab:red" if v <= weakest[-1] else "tab:blue" for v in values])
  axes.set_yticks(range(len(rows)))
  axes.set_yticklabels([r.name for r in rows], fontsize=7)
  axes.invert_yaxis()
  axes.set_xlabel("SQNR (dB); exact tensors drawn at %.0f" % cap)
  axes.set_title(title)
  figure.tight_layout()
  out = io.BytesIO()
  figure.savefig(out, format="png", dpi=100)
  pyplot.close(figure)
  return out.getvalue()
