"""Post-training quantization to a fully-integer TFLite model (`qat_rewrite quantize --target
tflite`).

The TFLite converter calibrates on the batches it is given (min/max per tensor, per-channel
int8 weights); what this adds is the vai_q_tensorflow input contract (input_fn, input nodes
inside the graph) and the check, after conversion, that no computation stayed float.
"""

import tensorflow as tf
from absl import logging

from qat_rewrite import calibration_data, native_output
from qat_rewrite.export import integer_check

MODEL = "quantized_model.tflite"


def calibrated_contents(graph_def, input_fn, input_nodes, output_nodes, input_shapes,
                        calib_iter):
  """{MODEL: bytes}: `graph_def` converted to int8 TFLite, calibrated on calib_iter batches."""

  input_errors = []  # raised in the converter's calibration: re-raised as they are

  def representative_dataset():
    try:
      batches = calibration_data.input_node_batches(graph_def, input_fn, input_nodes, calib_iter)
      for i, values in enumerate(batches):
        yield [values[name] for name in input_nodes]
        if (i + 1) % max(1, calib_iter // 10) == 0 or i + 1 == calib_iter:
          logging.info("calibration: batch %d/%d", i + 1, calib_iter)
    except Exception as e:
      input_errors.append(e)
      raise

  shapes = [(name, [1 if d == -1 else d for d in shape])
            for name, shape in zip(input_nodes, input_shapes)]
  converter = tf.compat.v1.lite.TFLiteConverter(graph_def, None, None,
                                                input_arrays_with_shape=shapes,
                                                output_arrays=list(output_nodes))
  converter.optimizations = [tf.lite.Optimize.DEFAULT]
  converter.representative_dataset = representative_dataset
  converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
  converter.inference_input_type = tf.int8
  converter.inference_output_type = tf.int8
  try:
    with native_output.dropping(2, native_output.CONVERTER_CHATTER):
      model = converter.convert()
  except Exception as e:  # the converter's own error types vary between releases
    if input_errors:
      raise input_errors[0]
    raise ValueError("the TFLite converter refused the graph (outputs %s): %s"
                     % (", ".join(output_nodes), " ".join(str(e).split())[-1000:])) from e
  integer_check.check_fully_integer(model)
  return {MODEL: model}
