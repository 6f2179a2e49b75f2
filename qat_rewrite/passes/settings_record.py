"""The settings a graph was rewritten with, saved in training checkpoints and checked against.

An eval graph rewritten with other settings than the training graph (4-bit training, 8-bit
eval; per-channel training, per-tensor eval) restores the training checkpoint without a word
in contrib and decent_q, and then quantizes with ranges that mean something else. Here each
rewrite records its settings as a string constant, `qat_rewrite/settings_value`. The training
rewrite also adds a variable, `qat_rewrite/quant_settings`, which every Saver of the global
variables writes into the checkpoint. Exporters and deploy steps that read a checkpoint compare
the two and refuse a mismatch naming both; `check_checkpoint` does it on request.

Why not check in `Saver.restore`: a key the restore requires would break restoring checkpoints
written without it (contrib-era ones, or saved from a var_list), so the eval graph adds none.
The variable name holds "quant" so var_list filters for float checkpoints skip it.
"""

import numpy as np
import tensorflow as tf

VALUE = "qat_rewrite/settings_value"
VARIABLE = "qat_rewrite/quant_settings"


def describe(**settings):
  """The settings as one stable string: 'activation_bits=8 symmetric=False ...'."""
  return " ".join("%s=%s" % (name, settings[name]) for name in sorted(settings))


def recorded(graph):
  """The settings string recorded in `graph` (a tf.Graph or a GraphDef), or None."""
  if isinstance(graph, tf.Graph):
    try:
      value = graph.get_operation_by_name(VALUE).get_attr("value")
    except KeyError:
      return None
  else:
    node = next((n for n in graph.node if n.name == VALUE), None)
    if node is None:
      return None
    value = node.attr["value"].tensor
  return value.string_val[0].decode() if value.string_val else None


def refuse_other_settings(graph, settings):
  """ValueError if `graph` was already rewritten with settings other than `settings`."""
  before = recorded(graph)
  if before is not None and before != settings:
    raise ValueError("the graph was already rewritten with %s; this call asks for %s. A graph "
                     "is rewritten with one set of settings: build the float graph again"
                     % (before, settings))


def record(graph, settings, training, use_resource):
  """Records `settings` (from `describe`) in `graph`, once; call after the rewrite succeeded."""
  refuse_other_settings(graph, settings)
  if recorded(graph) is not None:
    return
  with graph.as_default(), graph.name_scope(None):
    tf.constant(settings, name=VALUE)
    if training:  # int32 character codes: tf.distribute and GPUs have no string variables
      tf.compat.v1.Variable(_codes(settings), trainable=False, name=VARIABLE,
                            use_resource=use_resource)


def _codes(text):
  return np.array([ord(c) for c in text], np.int32)


def check_checkpoint(settings, reader, checkpoint):
  """ValueError if the checkpoint (a CheckpointReader) was trained with other `settings`.

  A checkpoint without the record (float, contrib-era) passes: nothing to compare.
  """
  if settings is None or not reader.has_tensor(VARIABLE):
    return
  saved = "".join(map(chr, reader.get_tensor(VARIABLE)))
  if saved != settings:
    raise ValueError("checkpoint %s was trained with %s, but this graph was rewritten with %s: "
                     "rewrite it with the training settings" % (checkpoint, saved, settings))
