"""Exporters from a QAT eval graph to deployable integer models: TFLite, and ONNX (optional).

`to_onnx` needs the onnx extra (`pip install qat_rewrite[onnx]`); it is imported only when
called, so TFLite export works without onnx installed.
"""

from qat_rewrite.export.agreement import Agreement, compare_onnx, compare_tflite
from qat_rewrite.export.integer_check import NotFullyIntegerError
from qat_rewrite.export.tflite import TFLiteExport, to_tflite


def to_onnx(*args, **kwargs):
  """See qat_rewrite.export.onnx.to_onnx (imported on first use: onnx is optional)."""
  from qat_rewrite.export import onnx as onnx_export  # pylint: disable=import-outside-toplevel
  return onnx_export.to_onnx(*args, **kwargs)


__all__ = ["Agreement", "NotFullyIntegerError", "TFLiteExport", "compare_onnx", "compare_tflite",
           "to_onnx", "to_tflite"]
