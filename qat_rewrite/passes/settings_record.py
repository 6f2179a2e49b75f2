"""The settings a graph was rewritten with, saved in its checkpoints and checked on restore.

An eval graph rewritten with other settings than the training graph (4-bit training, 8-bit
eval; per-channel training, per-tensor eval) restores the training checkpoint without a word
in contrib and decent_q, and then quantizes with ranges that mean something else. Here each
rewrite records its settings as a string in the graph (`qat_rewrite/settings`); the default
`tf.compat.v1.train.Saver` writes it into the checkpoint (a SAVEABLE_OBJECTS entry) and, on
restore, fails naming both settings when they differ. Exporters reading a checkpoint directly
check it the same way. A second rewrite of one graph with other settings is refused.
"""

import tensorflow as tf
from tensorflow.python.training.saving import saveable_object

KEY = "qat_rewrite/settings"


def describe(**settings):
  """The settings as one stable string: 'activation_bits=8 symmetric=False ...'."""
  return " ".join("%s=%s" % (name, settings[name]) for name in sorted(settings))


def recorded(graph):
  """The settings string recorded in `graph` (a tf.Graph or a GraphDef), or None."""
  if isinstance(graph, tf.Graph):
    try:
      value = graph.get_operation_by_name(KEY).get_attr("value")
    except KeyError:
      return None
  else:
    node = next((n for n in graph.node if n.name == KEY), None)
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


def record(graph, settings):
  """Records `settings` (from `describe`) in `graph`, once; call after the rewrite succeeded."""
  refuse_other_settings(graph, settings)
  if recorded(graph) is None:
    with graph.as_default(), graph.name_scope(None):
      graph.add_to_collection(tf.compat.v1.GraphKeys.SAVEABLE_OBJECTS,
                              _SettingsSaveable(tf.constant(settings, name=KEY)))


def check_checkpoint(settings, reader, checkpoint):
  """ValueError if the checkpoint (a CheckpointReader) was trained with other `settings`."""
  if settings is None or not reader.has_tensor(KEY):
    return
  saved = reader.get_tensor(KEY)
  saved = saved.decode() if isinstance(saved, bytes) else str(saved)
  if saved != settings:
    raise ValueError(_mismatch(checkpoint, saved, settings))


def _mismatch(checkpoint, saved, settings):
  return ("checkpoint %s was trained with %s, but this graph was rewritten with %s: rewrite the "
          "eval graph with the training settings" % (checkpoint, saved, settings))


class _SettingsSaveable(saveable_object.SaveableObject):
  """Saves the settings string; restoring compares it with this graph's and fails if unequal."""

  def __init__(self, value):
    spec = saveable_object.SaveSpec(value, "", KEY, dtype=tf.string)
    super().__init__(value, [spec], KEY)

  def restore(self, restored_tensors, restored_shapes):
    saved = restored_tensors[0]
    return tf.debugging.Assert(
        tf.equal(saved, self.op),
        ["qat_rewrite: the checkpoint was trained with", saved, "but this graph was rewritten "
         "with", self.op, "- rewrite the eval graph with the training settings"],
        name="check_qat_rewrite_settings")
