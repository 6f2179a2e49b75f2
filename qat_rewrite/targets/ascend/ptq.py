"""Post-training quantization for Ascend from a frozen graph (`qat_rewrite quantize --target
ascend`): AMCT's calibration flow (create_quant_config, quantize_model, calib_iter inference
batches, save_model) run on the user's input_fn, its files returned as bytes."""

import os
import tempfile

import tensorflow as tf
from absl import logging

from qat_rewrite import calibration_data
from qat_rewrite.graph import frozen
from qat_rewrite.targets.ascend import calibrate, config, export

RECORD = "record.txt"
SAVE_NAME = "model"


def calibrated_contents(pb_path, graph_def, input_fn, output_nodes, calib_iter,
                        range_method="min_max"):
  """{file name: bytes}: the record, `model_quantized.pb` and `model_fake_quant.pb`."""
  graph = frozen.import_graph_def(graph_def, pb_path)
  with tempfile.TemporaryDirectory(prefix="qat_rewrite_ascend.") as temp:
    config_file, record_file = os.path.join(temp, "config.json"), os.path.join(temp, RECORD)
    batch_num, offset, layers, _ = config.calibration_layer_configs(graph, None, calib_iter,
                                                                    True, None)
    config.write_json(config_file, config.calibration_json(batch_num, offset, layers))
    added, _ = calibrate.rewrite(graph, config_file, record_file, range_method)
    if not added:
      raise ValueError("%s has no layer AMCT can quantize (conv, depthwise, transpose conv, "
                       "matmul, avg pool)" % pb_path)
    with graph.as_default():
      outputs = [tf.debugging.check_numerics(graph.get_tensor_by_name(name + ":0"),
                                             "NaN or Inf in output %s" % name)
                 for name in output_nodes]
    placeholders = calibration_data.placeholders(graph)
    with tf.compat.v1.Session(graph=graph) as sess:
      every = max(1, calib_iter // 10)
      for i in range(calib_iter):
        feeds = calibration_data.feed_dict(input_fn, i, placeholders)
        try:
          sess.run(outputs, feeds)
        except tf.errors.InvalidArgumentError as e:
          raise calibration_data.batch_error(i, e) from e
        if (i + 1) % every == 0 or i + 1 == calib_iter:
          logging.info("calibration: batch %d/%d", i + 1, calib_iter)
    written = export.save_calibrated(pb_path, list(output_nodes), record_file,
                                     os.path.join(temp, SAVE_NAME))
    contents = {}
    for path in list(written.values()) + [record_file]:
      with open(path, "rb") as f:
        contents[os.path.basename(path)] = f.read()
    return contents
