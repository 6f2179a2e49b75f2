"""Calibration batches from a user's `input_fn`, checked, one batch at a time.

The contract is vai_q_tensorflow's: `input_fn(i)` returns {placeholder name: array} for batch i.
Feeds are checked against the graph's placeholders so a wrong key or shape is named here, not
deep inside a TensorFlow error.
"""

import re

import numpy as np
import tensorflow as tf


def placeholders(graph):
  """{name: output tensor} of every placeholder in `graph`."""
  return {op.name: op.outputs[0] for op in graph.get_operations()
          if op.type in ("Placeholder", "PlaceholderWithDefault")}


def feed_dict(input_fn, i, graph_placeholders):
  """input_fn(i) checked and keyed by tensor."""
  feeds = input_fn(i)
  if not isinstance(feeds, dict) or not feeds:
    raise ValueError("input_fn(%d) returned %s; it must return a non-empty dict "
                     "{placeholder name: array}" % (i, type(feeds).__name__))
  result = {}
  for name, value in feeds.items():
    op_name = name.split(":")[0] if isinstance(name, str) else None
    if op_name not in graph_placeholders:
      raise ValueError("input_fn(%d) feeds %r, which is not a placeholder of the graph; "
                       "placeholders: %s" % (i, name, ", ".join(sorted(graph_placeholders))))
    value = np.asarray(value)
    shape = graph_placeholders[op_name].shape
    if shape.rank is not None and (value.ndim != shape.rank or not shape.is_compatible_with(
        value.shape)):
      raise ValueError("input_fn(%d) feeds %r an array of shape %s; the placeholder's shape is %s"
                       % (i, name, list(value.shape), shape.as_list()))
    if np.issubdtype(value.dtype, np.floating) and not np.isfinite(value).all():
      where = tuple(int(k) for k in np.argwhere(~np.isfinite(value))[0])
      raise ValueError("input_fn(%d) feeds %r NaN or Inf (first at index %s): calibration "
                       "ranges would be meaningless" % (i, name, list(where)))
    result[graph_placeholders[op_name]] = value
  return result


def input_node_batches(graph_def, input_fn, input_nodes, count):
  """Yields, for i < count, {input node: its value} computed by the float graph from
  input_fn(i): what a model that starts at the input nodes (an eval model, a TFLite model)
  is fed. Preprocessing between the placeholders and the input nodes runs in TensorFlow."""
  with tf.Graph().as_default() as graph:
    tf.import_graph_def(graph_def, name="")
    fetches = {name: graph.get_tensor_by_name(name + ":0") for name in input_nodes}
    graph_placeholders = placeholders(graph)
    with tf.compat.v1.Session() as sess:
      for i in range(count):
        yield sess.run(fetches, feed_dict(input_fn, i, graph_placeholders))


def batch_error(i, error):
  """A ValueError for the TF error raised by calibration batch `i`: the line that says what went
  wrong (a failed check_numerics names its tensor), without TF's stack of frames."""
  bad = re.search(r"NaN or Inf in (.+?) : (.*)", error.message)
  if bad:
    reason = "NaN or Inf in %s (%s)" % (bad.group(1), bad.group(2).strip().rstrip("."))
  else:
    lines = [line for line in error.message.splitlines() if line.strip()]
    reason = lines[-2] if len(lines) > 1 and lines[-1].strip().startswith("[[") else lines[-1]
  return ValueError("calibration batch %d (input_fn(%d)): %s" % (i, i, reason))
