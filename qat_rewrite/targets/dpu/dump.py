"""Dumps the integers of a DPU eval model (decent_q's `dump`), for bit-exact checks against a DPU.

Every quantized tensor of `quantize_eval_model.pb` is written as value·2^pos: weights and
biases once to `dump_results_weights/`, activations per batch to `dump_results_<i>/`, each as
`<name with / as _>.bin` (raw int8, int16 above 8 bits, where decent_q wrapped) and `.txt` (one
integer per line). With `dump_float`, every float op output of the batch is also written as
`<name>_float.bin` (float32) and `_float.txt`.
"""

import numpy as np
import tensorflow as tf
from absl import logging

from qat_rewrite import calibration_data
from qat_rewrite.quant import pow2
from qat_rewrite.targets.dpu.deploy_model import to_integers

_SKIPPED_FLOAT_TYPES = ("Const", "Placeholder", "Switch", "Merge", "Enter", "Exit", "NextIteration")


def dump_contents(graph, input_fn, max_dump_batches=1, dump_float=False):
  """{relative path: bytes} of the dump of `graph` (an imported quantize_eval_model.pb)."""
  points = [op for op in graph.get_operations() if "_quantize_pos" in op.node_def.attr]
  if not points:
    raise ValueError("the graph has no quantized tensors (Identity nodes tagged _quantize_pos): "
                     "dump reads quantize_eval_model.pb")
  weights = [op for op in points if op.node_def.attr["_mode"].i != 1]
  activations = [op for op in points if op.node_def.attr["_mode"].i == 1]
  placeholders = calibration_data.placeholders(graph)
  floats = [t for op in graph.get_operations() if op.type not in _SKIPPED_FLOAT_TYPES
            for t in op.outputs if t.dtype.is_floating] if dump_float else []
  contents = {}
  with tf.compat.v1.Session(graph=graph) as sess:
    values = sess.run({op.name: op.outputs[0] for op in weights})
    for op in weights:
      contents.update(_integer_files("dump_results_weights", op, values[op.name]))
    for i in range(max_dump_batches):
      feeds = calibration_data.feed_dict(input_fn, i, placeholders)
      values, float_values = sess.run(({op.name: op.outputs[0] for op in activations},
                                       {t.name: t for t in floats}), feeds)
      folder = "dump_results_%d" % i
      for op in activations:
        contents.update(_integer_files(folder, op, values[op.name]))
      for name, value in float_values.items():
        base = "%s/%s_float" % (folder, _file_name(name[:-2] if name.endswith(":0") else name))
        value = np.asarray(value, np.float32)
        contents[base + ".bin"] = value.tobytes()
        contents[base + ".txt"] = _lines(value.ravel(), "%.9g")
      logging.info("dump: batch %d/%d", i + 1, max_dump_batches)
  return contents


def _integer_files(folder, op, value):
  attr = op.node_def.attr
  bits, pos = attr["_bit_width"].i, attr["_quantize_pos"].i
  rounding = pow2.HALF_UP if attr["_mode"].i == 1 else pow2.HALF_AWAY
  ints = to_integers(value, bits, pos, rounding)
  base = "%s/%s" % (folder, _file_name(op.name))
  return {base + ".bin": ints.tobytes(), base + ".txt": _lines(ints.ravel(), "%d")}


def _file_name(name):
  return name.replace("/", "_").replace(":", "_")


def _lines(values, fmt):
  return "".join(fmt % v + "\n" for v in values.tolist()).encode()
