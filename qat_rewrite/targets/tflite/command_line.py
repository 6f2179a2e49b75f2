"""The TFLite target on the command line: a fully-integer .tflite from the TFLite converter."""

from qat_rewrite import error_report
from qat_rewrite.graph import frozen
from qat_rewrite.targets import target
from qat_rewrite.targets.tflite import ptq


def _output_names(args):
  del args  # the same file whatever the flags
  return [ptq.MODEL]


def _calibrate(args, graph_def, input_fn, config):
  del args  # the converter takes no flags of its own
  return ptq.calibrated_contents(frozen.settle_constant_switches(graph_def)[0], input_fn,
                                 config.input_nodes, config.output_nodes, config.input_shapes,
                                 config.calib_iter)


def _report_rows(args, graph_def, contents, input_fn, config):
  """The .tflite's tensors against the float graph, fed the input nodes' values."""
  del args  # unused
  graph_def, inputs = target.first_batch(graph_def, input_fn, config.input_nodes)
  return error_report.tflite_report(contents[ptq.MODEL], graph_def, inputs)


def _notes(graph, args, config_of):
  del graph, args, config_of  # the converter decides per op only while converting
  return ("tflite: the converter quantizes every op it has int8 kernels for; quantize "
          "--target tflite refuses the model, naming the tensors, if any stays float")


TARGET = target.Target(
    name="tflite", summary="a fully-integer .tflite", output_names=_output_names,
    calibrate=_calibrate, report_rows=_report_rows, notes=_notes)
