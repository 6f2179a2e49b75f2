"""What a caller asks of one contrib-style rewrite: one checked value, passed down as it is.

`quantize.py` builds it from the user's arguments; `passes/rewrite.py` and
`passes/insert_quantizers.py` read its fields and the specs it makes. A bad value is refused
when the options are made, before anything looks at the graph.
"""

import dataclasses
from typing import Optional

from qat_rewrite.quant import integer_requantize, pool_rounding
from qat_rewrite.quant.spec import QuantSpec, activation_spec, weight_spec


@dataclasses.dataclass(frozen=True)
class RewriteOptions:
  """The options of `experimental_create_{training,eval}_graph` (see quantize.py for each)."""
  training: bool
  weight_bits: int = 8
  activation_bits: int = 8
  symmetric: bool = False
  quant_delay: Optional[int] = None
  freeze_bn_delay: Optional[int] = None
  scope: Optional[str] = None
  per_channel: bool = False
  quantize_inputs: bool = False
  pool_ties: str = pool_rounding.DEFAULT_RULE
  requantize: str = integer_requantize.DEFAULT_MODE

  def __post_init__(self):
    pool_rounding.check_rule(self.pool_ties)
    integer_requantize.check_mode(self.requantize)
    if self.training and self.requantize != integer_requantize.DEFAULT_MODE:
      raise ValueError("requantize=%r is for eval graphs only (it emulates a runtime's integer "
                       "arithmetic, which has no gradient): rewrite the training graph with "
                       "requantize='float'" % (self.requantize,))
    _check_bits("weight_bits", self.weight_bits)
    _check_bits("activation_bits", self.activation_bits)
    _check_delay("quant_delay", self.quant_delay)
    _check_delay("freeze_bn_delay", self.freeze_bn_delay)
    if self.scope is not None and not isinstance(self.scope, str):
      raise ValueError("scope must be a string or None, got %r" % (self.scope,))

  def weight_spec(self, per_channel=None) -> QuantSpec:
    """Weights' spec; `per_channel` overrides the option (a layer that cannot have it)."""
    return weight_spec(self.weight_bits, self.symmetric,
                       self.per_channel if per_channel is None else per_channel)

  def activation_spec(self) -> QuantSpec:
    return activation_spec(self.activation_bits, self.symmetric)

  def in_scope(self, op) -> bool:
    """Whether `op` is inside `scope` (every op when scope is None or empty)."""
    if not self.scope:
      return True
    return op.name.startswith(self.scope if self.scope.endswith("/") else self.scope + "/")


def _check_bits(name, value):
  if isinstance(value, bool) or not isinstance(value, int) or not 2 <= value <= 16:
    raise ValueError("%s must be an integer in 2..16 (FakeQuant's limits), got %r" % (name, value))


def _check_delay(name, value):
  if value is None:
    return
  if isinstance(value, bool) or not isinstance(value, int) or value < 0:
    raise ValueError("%s must be a non-negative integer number of steps or None, got %r"
                     % (name, value))
