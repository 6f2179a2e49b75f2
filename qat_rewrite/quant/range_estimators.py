"""Calibration ranges of an affine (scale, offset) quantizer, chosen per batch and combined.

min_max: the extremes, so nothing clips (outliers stretch the grid). percentile: the 0.01th and
99.99th percentiles, so rare outliers clip. mse: the range whose 8-bit grid gives the least mean
squared error on the batch, each end chosen among percentiles from 95 to 100. The last two
average their batch ranges; min_max takes the extremes over all batches. One batch is looked at
at a time, so memory does not grow with the number of batches.
"""

import numpy as np

METHODS = ("min_max", "percentile", "mse")
PERCENTILE = 99.99
_MSE_PERCENTILES = (100.0, 99.999, 99.99, 99.9, 99.0, 97.0, 95.0)


def check(method):
  if method not in METHODS:
    raise ValueError("range method must be one of %s, got %r" % (", ".join(METHODS), method))
  return method


def batch_range(x, method, levels=255):
  """(low, high) of one batch `x` by `method`."""
  x = np.asarray(x, np.float64).ravel()
  if not x.size:
    return 0.0, 0.0
  if method == "min_max":
    return float(x.min()), float(x.max())
  if method == "percentile":
    return (float(np.percentile(x, 100.0 - PERCENTILE)), float(np.percentile(x, PERCENTILE)))
  highs = np.percentile(x, _MSE_PERCENTILES)
  lows = np.percentile(x, [100.0 - p for p in _MSE_PERCENTILES])
  candidates = [(min(float(lo), 0.0), max(float(hi), 0.0)) for lo in lows for hi in highs]
  errors = [_quantization_mse(x, lo, hi, levels) for lo, hi in candidates]
  return candidates[int(np.argmin(errors))]


def combine(ranges, method):
  """One (low, high) from the batch ranges."""
  lows, highs = zip(*ranges)
  if method == "min_max":
    return min(lows), max(highs)
  return float(np.mean(lows)), float(np.mean(highs))


def _quantization_mse(x, low, high, levels):
  if high <= low:
    return float(np.mean(x * x))
  scale = (high - low) / levels
  q = np.clip(np.round((x - low) / scale), 0, levels) * scale + low
  return float(np.mean((x - q) ** 2))
