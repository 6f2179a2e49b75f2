"""Per-layer quantization error against the float graph: which layer hurts the accuracy.

For each quantized tensor of a model, on one batch of the user's data:

- local SQNR: the float tensor entering its quantizer vs the quantized tensor leaving it, the
  noise this one grid adds (a range too tight for the data shows here);
- SQNR vs float: the same tensor of the float graph vs the quantized model's, the error of every
  quantizer upstream together: where it drops is the layer that hurts.

SQNR = 10·log10(Σx² / Σ(x − q)²) in dB; each bit is worth about 6 dB. One call per model kind:

- `eval_graph_report(sess, feeds)`: a live `qat_rewrite.quantize` (contrib) or decent_q eval
  graph in its session; `frozen_graph_report(graph_def, feeds)` for a frozen one (FakeQuant eval
  graph, DPU `quantize_eval_model.pb`). The float graph is the eval graph with every quantizer
  bypassed (`float_reference`), so every row has a float twin of the same name.
- `tflite_report(model, float_graph_def, feeds)`: an integer .tflite, each tensor dequantized
  against the float graph it came from (or the eval graph it was exported from).
- `ascend_report(fake_quant_graph_def, float_graph_def, feeds)`: AMCT's
  `<save_path>_fake_quant.pb` against the float graph.

Each returns a list of `Row`; `markdown`, `csv_text`, `bar_chart_png` and `report_files` format
them (the chart needs `pip install qat_rewrite[report]`).
"""

from qat_rewrite.error_report.ascend import ascend_report
from qat_rewrite.error_report.formats import (REPORT, bar_chart_png, csv_text, markdown,
                                              report_files)
from qat_rewrite.error_report.quantizers import (Quantizer, eval_graph_report, find_quantizers,
                                                 float_reference, frozen_graph_report, measure)
from qat_rewrite.error_report.rows import Row, sqnr_db
from qat_rewrite.error_report.tflite import tflite_report

__all__ = ["REPORT", "Quantizer", "Row", "ascend_report", "bar_chart_png", "csv_text",
           "eval_graph_report", "find_quantizers", "float_reference", "frozen_graph_report",
           "markdown", "measure", "report_files", "sqnr_db", "tflite_report"]
