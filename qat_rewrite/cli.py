"""The `qat_rewrite` command line: quantize, inspect, dump and export frozen graphs.

Flags are spelled as `vai_q_tensorflow`'s. Progress goes to stderr as log lines. Errors print
one line on stderr and exit with 1 (2 for usage errors), with the traceback only under
--verbose; output files are written all or nothing, and existing ones are replaced only with
--overwrite.
"""

import argparse
import collections
import importlib
import os
import sys
import tempfile
import traceback

from qat_rewrite import native_output

# TensorFlow's C++ errors that matter come back as Python exceptions; the rest (a missing CUDA
# driver on a CPU machine) is noise unless --verbose asks for everything.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2" if "--verbose" in sys.argv else "3")
with native_output.dropping(2, native_output.STARTUP_BANNERS):
  import tensorflow as tf  # noqa: E402
from absl import logging  # noqa: E402

from qat_rewrite import calibration_data, error_report, files  # noqa: E402
from qat_rewrite.decent_q.config import QuantizeConfig  # noqa: E402
from qat_rewrite.graph import frozen  # noqa: E402
from qat_rewrite.targets import registry  # noqa: E402
from qat_rewrite.targets.dpu import dump  # noqa: E402

REPORT = error_report.REPORT
_REPORT_FILES = [REPORT + ext for ext in (".md", ".csv", ".png")]
_DPU_FLAGS = {  # QuantizeConfig fields that are plain integers on the command line
    "weight_bit": 8, "activation_bit": 8, "method": 1, "calib_iter": 100, "align_concat": 0,
    "align_pool": 0, "adjust_shift_bias": 1, "adjust_shift_cut": 1, "simulate_dpu": 1,
    "scale_all_avgpool": 1, "replace_relu6": 1, "replace_sigmoid": 0}
_TARGETS = registry.targets()


class CommandError(Exception):
  """A user error: printed as one line, exit status 1."""


def main(argv=None):
  parser = _parser()
  args = parser.parse_args(argv)
  logging.set_verbosity(logging.DEBUG if args.verbose else logging.INFO)  # progress lines
  tf.get_logger().setLevel("INFO" if args.verbose else "ERROR")
  try:
    args.run(args)
    return 0
  except (CommandError, ValueError, OSError, ImportError, tf.errors.OpError) as e:
    if args.verbose:
      traceback.print_exc()
    message = e.message if isinstance(e, tf.errors.OpError) else str(e)
    print("qat_rewrite %s: error: %s" % (args.verb, " ".join(message.split())), file=sys.stderr)
    return 1


# Verbs ---------------------------------------------------------------------------------------

def quantize(args):
  """Post-training quantization: calibrate, then write the target's files (and the report)."""
  target = _TARGETS[args.target]
  config = _config(args)
  _refuse_other_targets_flags(args, target)
  graph_def = frozen.load_graph_def(args.input_frozen_graph)
  input_fn = _load_input_fn(args.input_fn)
  files.check_output_dir(args.output_dir)
  report = _REPORT_FILES if args.report else []
  _refuse_existing(args.output_dir, target.output_names(args) + report,
                   args.overwrite)  # before the wait
  contents = target.calibrate(args, graph_def, input_fn, config)
  if args.report:
    contents.update(error_report.report_files(
        target.report_rows(args, graph_def, contents, input_fn, config)))
  _refuse_existing(args.output_dir, contents, args.overwrite)
  paths = files.write_all(args.output_dir, contents)
  for name in sorted(paths):
    print(paths[name])


def _refuse_other_targets_flags(args, chosen):
  """A flag of another target, set to other than its default, would be ignored: refused."""
  for target in _TARGETS.values():
    if target is chosen:
      continue
    for flag in target.flags:
      if getattr(args, flag.name) != flag.options["default"]:
        raise CommandError("--%s is for --target %s%s" % (
            flag.name, target.name, " (%s)" % flag.why if flag.why else ""))


def inspect(args):
  """Prints every op and whether and how the target quantizes it, or why not."""
  graph_def = frozen.load_graph_def(args.input_frozen_graph)
  graph_def, settled = frozen.settle_constant_switches(graph_def)
  graph = frozen.import_graph_def(graph_def, args.input_frozen_graph)
  ops = graph.get_operations()
  print("%d ops: %s" % (len(ops), ", ".join("%s %d" % item for item in sorted(
      collections.Counter(op.type for op in ops).items()))))
  consumed = {t.op.name for op in ops for t in op.inputs}
  print("likely inputs (placeholders): %s" % ", ".join(
      op.name for op in ops if op.type == "Placeholder"))
  print("likely outputs (nothing consumes them): %s" % ", ".join(
      op.name for op in ops if op.name not in consumed and op.type not in ("Const", "NoOp")))
  if settled:
    print("%d learning-phase switches settle to their default branch" % settled)
  notes = _TARGETS[args.target].notes(graph, args, lambda g: _config(args, g))
  if isinstance(notes, str):  # the target cannot say per op
    print(notes)
    return
  print("\n| op | type | quantization (%s) |\n|---|---|---|" % args.target)
  for op in ops:
    print("| %s | %s | %s |" % (op.name, op.type, notes.get(op.name, "")))


def dump_verb(args):
  """Writes the integers of every quantized tensor of quantize_eval_model.pb for some batches."""
  if args.max_dump_batches < 1:
    raise CommandError("--max_dump_batches must be at least 1, got %d" % args.max_dump_batches)
  graph = frozen.import_graph_def(frozen.load_graph_def(args.input_frozen_graph),
                                  args.input_frozen_graph)
  input_fn = _load_input_fn(args.input_fn)
  files.check_output_dir(args.output_dir)
  contents = dump.dump_contents(graph, input_fn, args.max_dump_batches, bool(args.dump_float))
  _refuse_existing(args.output_dir, contents, args.overwrite)
  files.write_all(args.output_dir, contents)
  print("%d files written to %s" % (len(contents), args.output_dir))


def export_verb(args):
  """A frozen QAT eval graph (qat_rewrite.quantize's) to a fully-integer TFLite or ONNX model."""
  from qat_rewrite import export  # pylint: disable=import-outside-toplevel
  if args.report and args.to != "tflite":
    raise CommandError("--report is for --to tflite (the report runs the exported model)")
  input_fn = _load_input_fn(args.input_fn) if args.report else None
  ranges = None
  if args.input_ranges:
    ranges = {}
    for name, text in zip(_names(args.input_nodes), args.input_ranges.split(":")):
      try:
        low, high = (float(v) for v in text.split(","))
      except ValueError:
        raise CommandError("--input_ranges %r: one min,max per input node, ':' between them, "
                           "e.g. 0,1" % args.input_ranges) from None
      ranges[name] = (low, high)
  if os.path.exists(args.output_file) and not args.overwrite:
    raise CommandError("%s already exists; pass --overwrite to replace" % args.output_file)
  graph_def = frozen.load_graph_def(args.input_frozen_graph)
  if args.report:
    _export_with_report(args, export, graph_def, ranges, input_fn)
    return
  common = (graph_def, args.output_file, _names(args.input_nodes), _names(args.output_nodes))
  if args.to == "tflite":
    result = export.to_tflite(*common, input_ranges=ranges, inference_type=args.inference_type)
  else:
    result = export.to_onnx(*common, input_ranges=ranges)
  print("%s (%d bytes)" % (result.path, result.size_bytes))


def _export_with_report(args, export, graph_def, ranges, input_fn):
  """The .tflite and the report of it against the eval graph, written together or not at all."""
  directory, name = os.path.split(os.path.abspath(args.output_file))
  _refuse_existing(directory, _REPORT_FILES, args.overwrite)
  input_nodes = _names(args.input_nodes)
  with tempfile.TemporaryDirectory(prefix="qat_rewrite_export.") as temp:
    result = export.to_tflite(graph_def, os.path.join(temp, name), input_nodes,
                              _names(args.output_nodes), input_ranges=ranges,
                              inference_type=args.inference_type)
    with open(result.path, "rb") as f:
      model = f.read()
  (inputs,) = calibration_data.input_node_batches(graph_def, input_fn, input_nodes, 1)
  contents = {name: model}
  contents.update(error_report.report_files(error_report.tflite_report(model, graph_def, inputs)))
  paths = files.write_all(directory, contents)
  print("%s (%d bytes)" % (args.output_file, len(model)))
  for report in sorted(set(paths) - {name}):
    print(paths[report])


# Helpers -------------------------------------------------------------------------------------

def _config(args, graph=None):
  """The QuantizeConfig of the flags; without --input_shapes, the graph's static shapes."""
  for flag in ("input_nodes", "output_nodes") + (() if graph else ("input_shapes",)):
    if not getattr(args, flag):
      raise CommandError("--%s is required" % flag)
  inputs = _names(args.input_nodes)
  shapes = _shapes(args.input_shapes) if args.input_shapes else _graph_shapes(graph, inputs)
  fields = {name: getattr(args, name) for name in _DPU_FLAGS}
  return QuantizeConfig(
      input_nodes=inputs, output_nodes=_names(args.output_nodes), input_shapes=shapes,
      ignore_nodes=_names(args.ignore_nodes), nodes_bit=_names(args.nodes_bit),
      nodes_method=_names(args.nodes_method), output_dir=args.output_dir, **fields)


def _names(text):
  return [name.strip() for name in (text or "").split(",") if name.strip()]


def _shapes(text):
  """'?,224,224,3:?,300,300,1' -> [[-1, 224, 224, 3], [-1, 300, 300, 1]]."""
  shapes = []
  for part in text.split(":"):
    try:
      shapes.append([-1 if d.strip() in ("?", "-1", "None") else int(d) for d in part.split(",")])
    except ValueError:
      raise CommandError("--input_shapes %r: each shape is comma-separated integers or ? "
                         "(shapes separated by ':'), e.g. ?,224,224,3" % text) from None
  return shapes


def _graph_shapes(graph, names):
  shapes = []
  for name in names:
    try:
      shape = graph.get_operation_by_name(name).outputs[0].shape
    except (KeyError, IndexError):
      raise CommandError("input node %r is not a node of the graph" % name) from None
    if shape.rank is None:
      raise CommandError("input node %r has no static shape: give --input_shapes" % name)
    shapes.append([-1 if d is None else d for d in shape.as_list()])
  return shapes


def _load_input_fn(spec):
  """`module.function` from the working directory or the path, as vai_q_tensorflow loads it."""
  if not spec:
    raise CommandError("--input_fn is required (module.function returning "
                       "{placeholder name: array} for a batch number)")
  module_name, _, function_name = spec.rpartition(".")
  if not module_name:
    raise CommandError("--input_fn %r must be module.function" % spec)
  if os.getcwd() not in sys.path:
    sys.path.insert(0, os.getcwd())
  try:
    function = getattr(importlib.import_module(module_name), function_name)
  except ImportError as e:
    raise CommandError("--input_fn %s: cannot import module %r: %s" % (spec, module_name, e))
  except AttributeError:
    raise CommandError("--input_fn %s: module %r has no %r" % (spec, module_name, function_name))
  if not callable(function):
    raise CommandError("--input_fn %s is not a function" % spec)

  def checked(i):
    try:
      return function(i)
    except Exception as e:  # the user's code: report it as theirs, in one line
      raise CommandError("--input_fn %s raised on batch %d: %s: %s"
                         % (spec, i, type(e).__name__, e)) from e
  return checked


def _refuse_existing(directory, names, overwrite):
  existing = [os.path.join(directory, name) for name in names
              if os.path.exists(os.path.join(directory, name))]
  if existing and not overwrite:
    more = " (and %d more)" % (len(existing) - 1) if len(existing) > 1 else ""
    raise CommandError("%s%s already exists; pass --overwrite to replace" % (existing[0], more))


def _parser():
  parser = argparse.ArgumentParser(prog="qat_rewrite", description=__doc__.splitlines()[0])
  verbs = parser.add_subparsers(dest="verb", required=True, metavar="VERB")

  def verb(name, function, help_text):
    sub = verbs.add_parser(name, help=help_text, description=help_text)
    sub.set_defaults(run=function)
    sub.add_argument("--input_frozen_graph", required=True, help="the frozen GraphDef (.pb)")
    sub.add_argument("--verbose", action="store_true", help="progress logs and tracebacks")
    return sub

  q = verb("quantize", quantize, "Post-training quantization of a frozen graph (calibration).")
  _node_flags(q)
  q.add_argument("--input_fn", help="module.function: batch number -> {placeholder: array}")
  q.add_argument("--target", choices=sorted(_TARGETS), default="dpu",
                 help="; ".join("%s: %s" % (t.name, t.summary) for t in _TARGETS.values())
                 + " (default dpu)")
  for name, default in _DPU_FLAGS.items():
    q.add_argument("--" + name, type=int, default=default, help="default %d" % default)
  for target in _TARGETS.values():
    for flag in target.flags:
      q.add_argument("--" + flag.name, **flag.options)
  q.add_argument("--nodes_bit", help="per-op bits, name:bits,name:bits")
  q.add_argument("--nodes_method", help="per-op method, name:method,...")
  q.add_argument("--output_dir", default="./quantize_results")
  q.add_argument("--report", action="store_true",
                 help="also write quantize_report.md/.csv/.png: per quantized tensor on batch 0, "
                 "its range, local SQNR and SQNR against the float graph")
  q.add_argument("--overwrite", action="store_true", help="replace existing output files")

  i = verb("inspect", inspect, "List the ops and how the target quantizes each, or why not.")
  _node_flags(i)
  i.add_argument("--target", choices=sorted(_TARGETS), default="dpu")
  for name, default in _DPU_FLAGS.items():
    i.set_defaults(**{name: default})
  i.set_defaults(nodes_bit=None, nodes_method=None, output_dir="./quantize_results")

  d = verb("dump", dump_verb, "Write the integers of each quantized tensor of "
           "quantize_eval_model.pb (.bin and .txt) for some batches.")
  d.add_argument("--input_fn", help="module.function: batch number -> {placeholder: array}; "
                 "quantize_eval_model.pb starts at the input nodes, so feed those")
  d.add_argument("--output_dir", default="./dump_results")
  d.add_argument("--max_dump_batches", type=int, default=1)
  d.add_argument("--dump_float", type=int, default=0, choices=[0, 1],
                 help="1: also the float output of every op")
  d.add_argument("--overwrite", action="store_true", help="replace existing output files")

  _export_flags(verb("export", export_verb, "Convert a frozen QAT eval graph "
                     "(qat_rewrite.quantize) to a fully-integer TFLite or an ONNX QDQ model."))
  return parser


def _export_flags(e):
  e.add_argument("--to", choices=["tflite", "onnx"], required=True,
                 help="tflite: fully-integer .tflite; onnx: QuantizeLinear/DequantizeLinear "
                 "pairs (pip install 'qat_rewrite[onnx]')")
  e.add_argument("--input_nodes", required=True, help="comma-separated input placeholders")
  e.add_argument("--output_nodes", required=True, help="comma-separated outputs")
  e.add_argument("--input_ranges", help="float range of each input, min,max (':' between "
                 "inputs); default: the input's FakeQuant range")
  e.add_argument("--inference_type", choices=["int8", "uint8"], default="int8",
                 help="tflite only: int8 (default) or uint8 (per-tensor weights)")
  e.add_argument("--output_file", required=True)
  e.add_argument("--report", action="store_true",
                 help="tflite only: also write quantize_report.md/.csv/.png beside the output "
                 "file: each tensor of the model against the eval graph's float twin on batch 0")
  e.add_argument("--input_fn", help="with --report: module.function: batch number -> "
                 "{input node: array}")
  e.add_argument("--overwrite", action="store_true", help="replace existing output files")


def _node_flags(sub):
  sub.add_argument("--input_nodes", help="comma-separated: where quantization starts")
  sub.add_argument("--output_nodes", help="comma-separated: where quantization ends")
  sub.add_argument("--input_shapes", help="e.g. ?,224,224,3 (':' between inputs)")
  sub.add_argument("--ignore_nodes", help="comma-separated ops that stay float")


if __name__ == "__main__":
  sys.exit(main())
