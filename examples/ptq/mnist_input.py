"""The calibration input function for `qat_rewrite quantize --input_fn mnist_input.calib_input`.

As vai_q_tensorflow's input_fn: called with the batch number, returns {placeholder name: array}.
Calibration uses training digits only (never the test digits it is scored on).
"""

from qat_rewrite.datasets import load_mnist

BATCH = 50
_TRAIN = []


def calib_input(iteration):
  if not _TRAIN:
    _TRAIN.append(load_mnist(seed=0)[0][0])
  images = _TRAIN[0]
  start = (iteration * BATCH) % (len(images) - BATCH)
  return {"net_in": images[start:start + BATCH]}
