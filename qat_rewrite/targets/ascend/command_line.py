"""The Ascend target on the command line: AMCT's calibration record and models."""

import tensorflow as tf

from qat_rewrite import calibration_data, error_report
from qat_rewrite.graph import frozen
from qat_rewrite.targets import target
from qat_rewrite.targets.ascend import export, layers, ptq

_FAKE_QUANT_MODEL = ptq.SAVE_NAME + export.FAKE_QUANT_SUFFIX


def _output_names(args):
  del args  # the same files whatever the flags
  return [ptq.RECORD, ptq.SAVE_NAME + export.QUANTIZED_SUFFIX, _FAKE_QUANT_MODEL]


def _calibrate(args, graph_def, input_fn, config):
  return ptq.calibrated_contents(args.input_frozen_graph, graph_def, input_fn,
                                 config.output_nodes, config.calib_iter, args.range_method)


def _report_rows(args, graph_def, contents, input_fn, config):
  """model_fake_quant.pb (stock TensorFlow; the deploy model needs AMCT's ops) against the float
  graph. It keeps the whole graph, so it is fed the placeholders, not the input nodes."""
  del config  # unused
  graph = frozen.import_graph_def(graph_def, args.input_frozen_graph)
  feeds = calibration_data.feed_dict(input_fn, 0, calibration_data.placeholders(graph))
  fake_quant = tf.compat.v1.GraphDef.FromString(contents[_FAKE_QUANT_MODEL])
  return error_report.ascend_report(fake_quant, graph_def,
                                    {t.name: value for t, value in feeds.items()})


def _notes(graph, args, config_of):
  """{op name: how AMCT's calibration quantizes it, or why it stays float}."""
  del args, config_of  # AMCT finds its layers without input or output nodes
  found = layers.find_layers(graph)
  weights = {True: ", int8 weights", False: " (no weights: average pool)"}
  notes = {op.name: "layer: int8 data (scale, offset)" + weights[layers.has_weights(op)]
           for op in found.layers}
  notes.update((name, notes[name] + "; warning: " + text) for name, text in found.warnings.items())
  notes.update((f.op, "float: " + f.reason) for f in found.float_ops)
  return notes


TARGET = target.Target(
    name="ascend", summary="AMCT's record and models", output_names=_output_names,
    calibrate=_calibrate, report_rows=_report_rows, notes=_notes,
    flags=(target.Flag("range_method", dict(
        choices=["min_max", "percentile", "mse"], default="min_max",
        help="ascend: data ranges by min/max over all batches, or the 0.01-99.99th "
        "percentiles, or the least-MSE clip, averaged over batches"),
        why="dpu chooses positions by --method; tflite's converter uses min/max"),))
