"""QuantSpec: everything that decides how one tensor is fake-quantized."""

import dataclasses

LAST_VALUE = "last_value"
MOVING_AVERAGE = "moving_average"


@dataclasses.dataclass(frozen=True)
class QuantSpec:
  """How to quantize one tensor.

  `tracker` says how the range follows the data in training: `last_value` (the
  batch's own min/max, for weights) or `moving_average` (zero-debiased EMA with
  `ema_decay`, for activations). The range always contains 0 so that zero is
  exactly representable. `symmetric` makes the range symmetric around 0;
  `narrow_range` drops the most negative level (weights). `per_channel` gives each
  output channel its own range.
  """
  bits: int = 8
  tracker: str = MOVING_AVERAGE
  symmetric: bool = False
  narrow_range: bool = False
  per_channel: bool = False
  ema_decay: float = 0.999
  init_min: float = -6.0
  init_max: float = 6.0

  def __post_init__(self):
    if isinstance(self.bits, bool) or not isinstance(self.bits, int) or not 2 <= self.bits <= 16:
      raise ValueError("bits must be an integer in 2..16 (FakeQuant's limits), got %r" % (self.bits,))
    if self.tracker not in (LAST_VALUE, MOVING_AVERAGE):
      raise ValueError("tracker must be %r or %r, got %r" % (LAST_VALUE, MOVING_AVERAGE, self.tracker))


def weight_spec(bits=8, symmetric=False, per_channel=False):
  return QuantSpec(bits=bits, tracker=LAST_VALUE, symmetric=symmetric, narrow_range=True,
                   per_channel=per_channel)


def activation_spec(bits=8, symmetric=False, init_min=-6.0):
  return QuantSpec(bits=bits, tracker=MOVING_AVERAGE, symmetric=symmetric, init_min=init_min)
