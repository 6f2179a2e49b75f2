"""TensorBoard scalars for every quantizer's learned range, for a user's own merge_all.

contrib-era users watched QAT in TensorBoard; a rewrite's ranges live in variables, so
`add_range_summaries()` after any front end's training rewrite adds, under `quant_ranges/`:

  <quantizer>/min, /max     contrib, TFLite, ONNX (qat_rewrite.quantize): the moving-average
                            range (per-channel weights: the lowest min and the highest max)
  <quantizer>/position      DPU (decent_q): the most frequent power-of-two position so far;
                            NaN until the first step counted one
  <quantizer>/clip_min, /clip_max   Ascend (amct retrain): the learned clipping range

They go to `tf.compat.v1.GraphKeys.SUMMARIES`, so the script's existing
`tf.compat.v1.summary.merge_all()` and FileWriter write them with everything else.
"""

import tensorflow as tf

from qat_rewrite.quant.pow2 import MIN_TRACKED_POS

FAMILY = "quant_ranges"
_ROLES = {"min": tf.reduce_min, "max": tf.reduce_max, "clip_min": tf.reduce_min,
          "clip_max": tf.reduce_max}


def add_range_summaries(graph=None):
  """Adds the scalars above for every quantizer variable of `graph` (default: the default
  graph); returns their tags. Raises ValueError if the graph holds no quantizer."""
  graph = graph or tf.compat.v1.get_default_graph()
  variables = graph.get_collection(tf.compat.v1.GraphKeys.GLOBAL_VARIABLES)
  tags = []
  with graph.as_default(), graph.name_scope(None):
    for variable in sorted(variables, key=lambda v: v.op.name):
      scope, _, role = variable.op.name.rpartition("/")
      if role in _ROLES:
        value = _ROLES[role](variable)
      elif role == "pos_histogram":
        value = _most_frequent_position(variable)
        role = "position"
      else:
        continue
      summary = tf.compat.v1.summary.scalar("%s/%s/%s" % (FAMILY, scope, role), value)
      tags.append(summary.op.name)  # the tag the scalar writes
  if not tags:
    raise ValueError("no quantizer variables in the graph: call add_range_summaries after the "
                     "training rewrite (create_training_graph, CreateQuantizeTrainingGraph or "
                     "create_quant_retrain_model)")
  return tags


def _most_frequent_position(histogram):
  counts = tf.convert_to_tensor(histogram)
  mode = tf.cast(tf.argmax(counts), tf.float32) + MIN_TRACKED_POS
  return tf.where(tf.reduce_sum(counts) > 0, mode, float("nan"))

