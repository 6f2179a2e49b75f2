"""What a rewrite did: each matched layer, each quantized tensor, each op left in float and why."""

import dataclasses
from typing import List, Optional


@dataclasses.dataclass
class LayerReport:
  """One weight layer: its op, the batch norm folded into it, the quantizers it got."""
  layer: str
  kind: str
  folded_batch_norm: Optional[str] = None
  weights_quantized: bool = False
  bias_quantized: bool = False  # rounded to the input·weight scale grid, as TFLite adds it
  quantizers: List[str] = dataclasses.field(default_factory=list)
  notes: List[str] = dataclasses.field(default_factory=list)


# The reason of every layer in Keras' construction copy: `str(report)` gives them one line.
LEARNING_PHASE_COPY = "in Keras' learning-phase copy of the model, which training never runs"


@dataclasses.dataclass
class FloatOp:
  op: str
  type: str
  reason: str


@dataclasses.dataclass
class QuantizeReport:
  """Returned by every rewrite; `str()` gives a readable table."""
  mode: str
  layers: List[LayerReport] = dataclasses.field(default_factory=list)
  other_quantizers: List[str] = dataclasses.field(default_factory=list)
  float_ops: List[FloatOp] = dataclasses.field(default_factory=list)
  notes: List[str] = dataclasses.field(default_factory=list)

  @property
  def quantized_weights(self):
    """Names of the layer ops whose weights are fake-quantized."""
    return [l.layer for l in self.layers if l.weights_quantized]

  @property
  def folded_batch_norms(self):
    return [l.folded_batch_norm for l in self.layers if l.folded_batch_norm]

  @property
  def quantizer_count(self):
    return sum(len(l.quantizers) for l in self.layers) + len(self.other_quantizers)

  def summary(self):
    return ("%s rewrite: %d layers matched, %d with quantized weights, %d batch norms folded, "
            "%d quantizers added, %d compute ops left in float"
            % (self.mode, len(self.layers), len(self.quantized_weights),
               len(self.folded_batch_norms), self.quantizer_count, len(self.float_ops)))

  def __str__(self):
    lines = [self.summary()]
    for l in self.layers:
      bn = " +BN(%s)" % l.folded_batch_norm if l.folded_batch_norm else ""
      quants = ", ".join(q.rsplit("/", 1)[-1] for q in l.quantizers) or "nothing new"
      lines.append("  %-18s %s%s: %s" % (l.kind, l.layer, bn, quants))
      lines.extend("      note: %s" % n for n in l.notes)
    for q in self.other_quantizers:
      lines.append("  %-18s %s" % ("output", q))
    copy = [f for f in self.float_ops if f.reason.startswith(LEARNING_PHASE_COPY)]
    for f in self.float_ops:
      if f not in copy:
        lines.append("  float %-12s %s: %s" % (f.type, f.op, f.reason))
    if copy:
      lines.append("  float %d layers %s (their batch norms sit behind the training-flag "
                   "conditional), e.g. %s" % (len(copy), LEARNING_PHASE_COPY, copy[0].op))
    lines.extend("  note: %s" % n for n in self.notes)
    return "\n".join(lines)
