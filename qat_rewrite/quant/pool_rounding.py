"""AvgPool's ties rounded as the target runtime rounds them, so eval graph and model agree.

A 2x2 average of values on a grid lands exactly half-way between two grid points for a quarter
of its outputs, and runtimes break those ties differently:
- TFLite's int8 AVERAGE_POOL_2D (the builtin kernel; XNNPACK did the same on the MNIST CNN but
  not always on a pool-only model) rounds the integer average half away from zero;
- ONNX Runtime's QLinearAveragePool (what its QDQ fusion makes of DequantizeLinear ->
  AveragePool -> QuantizeLinear) rounds half to even: on the MNIST CNN 100% of its ties did.
FakeQuant rounds half up, and in float32 often lands just below the half. On the MNIST CNN the
wrong rule changed 0.04% (TFLite) to 11% (ONNX Runtime) of the pool outputs, and the dense
layer reading 1,568 of them put logits 2 steps apart.

The fix moves each average a quarter of the smallest possible gap (1/(4n) of a step for an
n-element window) towards the side the rule picks, in the integer domain, before its
FakeQuant: a tie then rounds as the runtime does, and no other value crosses a rounding
boundary. Exports drop this nudge (`is_ties_nudge`): the converted model pools the integers
itself.
"""

import collections

import tensorflow as tf
from absl import logging

from qat_rewrite.graph import roles

_PREFIX = "ties_"  # the op's name: `ties_<rule>`
_ROLE = "ties"  # its role (graph/roles.py): `ties/<rule>`


def _away_from_zero(unsigned, bits):
  """+1 above the signed zero, -1 below: |x.5| rounds to |x| + 1."""
  return tf.sign(unsigned - 2.0 ** (bits - 1))


def _to_even(unsigned, bits):
  """+1 when the integer below is odd, -1 when it is even (signed and unsigned integers have
  the same parity: they differ by 2^(bits-1))."""
  del bits
  return 2.0 * tf.math.floormod(tf.floor(unsigned), 2.0) - 1.0


# direction: of the nudge (+1 up, -1 down) from the average in the unsigned integer domain;
# runtime: who rounds so. Adding a runtime's rule is one entry here.
Rule = collections.namedtuple("Rule", "direction runtime")
RULES = {"away_from_zero": Rule(_away_from_zero, "TFLite's int8 AVERAGE_POOL_2D"),
         "to_even": Rule(_to_even, "ONNX Runtime's QLinearAveragePool")}
DEFAULT_RULE = "away_from_zero"


def check_rule(rule):
  if rule not in RULES:
    raise ValueError("pool_ties must be one of %s, got %r" % (", ".join(sorted(RULES)), rule))
  return rule


def rule_of(op):
  """The rule of a ties nudge op (an Operation or a NodeDef), or None if it is not one."""
  return roles.parameter(op, _ROLE)


def is_ties_nudge(op):
  """True for an op `round_ties` returns, an Operation or a NodeDef."""
  return rule_of(op) is not None


def round_ties(average, quantizer, window, rule=DEFAULT_RULE):
  """`average` (the AvgPool output) nudged so that the FakeQuant of `quantizer`'s range, which
  follows it, rounds ties by `rule` (a RULES key) in the integer domain.

  quantizer: the per-tensor FakeQuantWithMinMaxVars op of the pool's input (same range);
  window: the number of elements the pool averages (kernel height x width).
  """
  bits = quantizer.get_attr("num_bits")
  qmin = 1 if quantizer.get_attr("narrow_range") else 0
  qmax = 2 ** bits - 1
  # The zero point as the converters compute it, in float64 and rounded half up: a range like
  # [-6, 6] puts it on a tie (127.5) that float32 division can land on either side of.
  low, high = (tf.cast(t, tf.float64) for t in quantizer.inputs[1:3])
  scale = (high - low) / (qmax - qmin)
  zero_point = tf.clip_by_value(tf.floor(qmin - low / scale + 0.5), qmin, qmax)
  unsigned = tf.cast(average, tf.float64) / scale + zero_point
  nudge = tf.cast(RULES[check_rule(rule)].direction(unsigned, bits) * scale / (4.0 * window),
                  average.dtype)
  return roles.mark(tf.add(average, nudge, name=_PREFIX + rule), "%s/%s" % (_ROLE, rule))


def warn_if_not(graph_def, rule):
  """Logs a warning if the eval graph `graph_def` rounds AvgPool ties by another rule than
  `rule`, the one of the runtime it is exported to: their integers then differ by a step."""
  others = sorted({rule_of(n) for n in graph_def.node} - {None, rule})
  if others:
    logging.warning("the eval graph rounds average-pool ties %s (%s) but %s rounds them %s: "
                    "rewrite the eval graph with pool_ties=%r to check this export against it",
                    others[0].replace("_", " "), RULES[others[0]].runtime, RULES[rule].runtime,
                    rule.replace("_", " "), rule)
