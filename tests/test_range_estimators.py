"""Affine calibration ranges: min/max, percentile and MSE on tensors with a known outlier."""

import numpy as np
import pytest

from qat_rewrite.quant import range_estimators


def _batch_with_outlier():
  x = np.random.RandomState(0).uniform(-1.0, 1.0, 100000)
  x[0] = 50.0  # one activation spike
  return x


def test_min_max_keeps_the_outlier_percentile_clips_it():
  x = _batch_with_outlier()
  assert range_estimators.batch_range(x, "min_max") == (pytest.approx(x.min()), 50.0)
  low, high = range_estimators.batch_range(x, "percentile")
  assert -1.0 <= low < -0.99 and 0.99 < high <= 1.0


def test_mse_range_has_the_least_error_of_the_three_on_heavy_tails():
  """Laplace activations: the rare large values cost less clipped than a coarse grid costs
  every value. (One spike in 100,000 uniform values is cheaper to keep: MSE keeps it.)"""
  x = np.random.RandomState(1).laplace(0.0, 1.0, 100000)

  def error(low, high):
    scale = (high - low) / 255
    q = np.clip(np.round((x - low) / scale), 0, 255) * scale + low
    return np.mean((x - q) ** 2)

  errors = {m: error(*range_estimators.batch_range(x, m)) for m in range_estimators.METHODS}
  assert errors["mse"] <= min(errors.values()) and errors["mse"] < 0.95 * errors["min_max"]
  assert range_estimators.batch_range(_batch_with_outlier(), "mse")[1] == 50.0


def test_batches_combine_by_extremes_or_by_mean():
  ranges = [(-1.0, 2.0), (-3.0, 4.0)]
  assert range_estimators.combine(ranges, "min_max") == (-3.0, 4.0)
  assert range_estimators.combine(ranges, "percentile") == (-2.0, 3.0)
  with pytest.raises(ValueError, match="range method must be one of"):
    range_estimators.check("entropy")
