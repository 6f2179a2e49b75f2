"""What a training checkpoint must satisfy before an eval graph's variables are read from it.

A Saver restores, without a word, a checkpoint trained with other quantization settings, and
one whose ranges no training step ever updated (a loss built after the rewrite, with a train
op that does not run UPDATE_OPS); a checkpoint lacking a quantizer the eval graph holds fails
with TensorFlow's bare "Key not found". Exporters, decent_q's deploy and
`quantize.check_checkpoint` refuse all three here, naming the quantizers, the cause and the fix.
"""

import re

import numpy as np

from qat_rewrite.graph import frozen
from qat_rewrite.passes import settings_record

# A quantizer's state: contrib-style `<scope>_quant/{min,max,local_step}`, a decent_q position
# histogram `<point>/pos_histogram`, AMCT's ULQ clip.
_QUANTIZER_VARIABLE = re.compile(
    r"^(?P<scope>.*(_quant|/ULQ))/(min|max|local_step|clip_max|clip_min|initialized)$"
    r"|^(?P<point>.*)/pos_histogram$")
_UPDATE_OPS_FIX = (
    "Likely cause: the loss was built after the rewrite from the float tensor the model "
    "returned, and the train op does not run tf.GraphKeys.UPDATE_OPS, so nothing ran these "
    "quantizers' range updates. Fix: build the train op under "
    "`tf.control_dependencies(tf.compat.v1.get_collection(tf.compat.v1.GraphKeys.UPDATE_OPS))` "
    "after the rewrite (or build the loss before the rewrite), train, and save again")


def quantizer_of(variable_name):
  """The quantizer scope a range variable belongs to, or None for other variables."""
  match = _QUANTIZER_VARIABLE.match(variable_name)
  if match is None:
    return None
  return match.group("scope") or match.group("point")


def check(graph, reader, prefix, variables):
  """ValueError unless checkpoint `prefix` (read by `reader`) can feed `variables` ({name:
  shape the graph wants, or None}) of `graph` (a tf.Graph or GraphDef): same settings, same
  shapes, every variable present, every range learned. The first failure is the one named."""
  settings_record.check_checkpoint(settings_record.recorded(graph), reader, prefix)
  frozen.check_variables(reader, prefix, variables, _why_missing(reader, variables))
  check_learned(reader, prefix, variables)


def _why_missing(reader, variables):
  """Why the checkpoint lacks some of `variables`, when they are quantizers."""
  saved = reader.get_variable_to_shape_map()
  missing = sorted(name for name in variables if name not in saved)
  quantizers = sorted({quantizer_of(name) for name in missing} - {None})
  if not quantizers:
    return ""
  if not any(quantizer_of(name) for name in saved):
    return (". It holds no quantizer at all: a float checkpoint? Save it from the graph the "
            "training rewrite made")
  return (". The checkpoint holds other quantizers, so the training graph had none at %s: the "
          "eval rewrite placed quantizers the training rewrite did not. Rewrite both graphs "
          "from the same model code with the same options; if they already are, this is a bug "
          "in qat_rewrite (please report the model)" % ", ".join(quantizers[:5]))


def never_learned(reader, variable_names):
  """{quantizer scope: why} for the quantizers among `variable_names` whose range, position or
  clip no training step updated in the checkpoint."""
  found = {}
  for name in variable_names:
    scope = quantizer_of(name)
    if scope is None or scope in found:
      continue
    if name.endswith("/pos_histogram") and reader.has_tensor(name):
      if not np.sum(reader.get_tensor(name)):
        found[scope] = "no position recorded"
    elif scope.endswith("_quant") and reader.has_tensor(scope + "/local_step"):
      if not reader.get_tensor(scope + "/local_step"):
        found[scope] = "moving average never updated (local_step 0)"
    elif scope.endswith("/ULQ") and reader.has_tensor(scope + "/initialized"):
      if not reader.get_tensor(scope + "/initialized"):
        found[scope] = "clip never initialized"
  return found


def check_learned(reader, prefix, variable_names):
  """ValueError naming every quantizer whose range the checkpoint holds untrained."""
  untrained = never_learned(reader, variable_names)
  if untrained:
    listed = ", ".join("%s (%s)" % item for item in sorted(untrained.items())[:8])
    more = " and %d more" % (len(untrained) - 8) if len(untrained) > 8 else ""
    raise ValueError("checkpoint %r: %d quantizer(s) never learned their range in training: "
                     "%s%s. %s" % (prefix, len(untrained), listed, more, _UPDATE_OPS_FIX))
