"""One row of the report and the signal-to-quantization-noise ratio it carries."""

import dataclasses
import math

import numpy as np


@dataclasses.dataclass
class Row:
  """One quantized tensor of a model, measured on one batch.

  sqnr_db: local, the float tensor entering this tensor's quantizer vs the quantized tensor
    leaving it: the noise this one grid adds. float_sqnr_db: accumulated, the float graph's
    same tensor (`float_tensor`) vs this tensor: every quantizer upstream counts. NaN where the
    value cannot be measured (see `note`).
  """
  name: str
  grid: str
  minimum: float
  maximum: float
  sqnr_db: float
  float_sqnr_db: float = math.nan
  float_tensor: str = ""
  note: str = ""


def sqnr_db(x, q):
  """10·log10(Σx² / Σ(x − q)²); inf when quantization is exact, -inf for an all-zero x."""
  x = np.asarray(x, np.float64)
  signal = float(np.sum(np.square(x)))
  noise = float(np.sum(np.square(x - np.asarray(q, np.float64))))
  if noise == 0.0:
    return math.inf
  return 10.0 * math.log10(signal / noise) if signal else -math.inf


def value_range(x):
  x = np.asarray(x, np.float64)
  return float(x.min(initial=0)), float(x.max(initial=0))
