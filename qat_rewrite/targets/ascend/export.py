"""save_quant_retrain_model and save_model: a frozen .pb plus the record → the deploy files.

Writes `<save_path>_quantized.pb` (AMCT's deploy structure, for ATC) and
`<save_path>_fake_quant.pb` (the same numbers with stock TensorFlow ops, for accuracy checks),
both or neither. The user's files are only read.
"""

import os

from absl import logging

from qat_rewrite import files
from qat_rewrite.graph import frozen, roles
from qat_rewrite.passes.rewrite import fold_for_quantization
from qat_rewrite.targets.ascend import deploy
from qat_rewrite.targets.ascend import layers as ascend_layers
from qat_rewrite.targets.ascend import record
from qat_rewrite.targets.ascend.calibrate import OBSERVE_ROLE
from qat_rewrite.targets.ascend.retrain import DATA_SCOPE, ULQ_ROLE, WEIGHT_SCOPE

QUANTIZED_SUFFIX = "_quantized.pb"
FAKE_QUANT_SUFFIX = "_fake_quant.pb"


def save_retrained(pb_model, outputs, record_file, save_path):
  """From the frozen retrained eval graph (it still holds ULQ/ARQ) and the record."""
  graph, outputs, records, target = _inputs(pb_model, outputs, record_file, save_path)
  deploy.check_no_training_batch_norm(graph, "pb_model %s" % pb_model)
  sources = deploy.layer_sources_from_retrained(graph, DATA_SCOPE, WEIGHT_SCOPE)
  if not sources:
    raise ValueError("pb_model %s holds no layer quantized by create_quant_retrain_model (no "
                     "'<layer>/%s/input' op): freeze the graph rewritten by it" % (pb_model,
                                                                                  DATA_SCOPE))
  return _write(graph, sources, records, record_file, outputs, target)


def save_calibrated(pb_model, outputs, record_file, save_path):
  """From the ORIGINAL float frozen graph and the calibration record: fold, then quantize."""
  graph, outputs, records, target = _inputs(pb_model, outputs, record_file, save_path)
  deploy.check_no_training_batch_norm(graph, "pb_model %s" % pb_model)
  if any(roles.of(op) in (ULQ_ROLE, OBSERVE_ROLE) for op in graph.get_operations()):
    raise ValueError("pb_model %s already holds AMCT ops: save_model takes the original float "
                     "model" % pb_model)
  found = ascend_layers.find_layers(graph)
  with graph.as_default():
    _, _, excluded, _ = fold_for_quantization(graph, False, lambda op: True)
  sources = []
  for op in found.layers:
    if op.name in records and op not in excluded:
      kind = ascend_layers.kind(op)
      weight = None if kind.weight_input is None else op.inputs[kind.weight_input]
      sources.append(deploy.LayerSource(op, op.inputs[kind.data_input], weight))
  unknown = sorted(set(records) - {s.op.name for s in sources})
  if unknown:
    raise ValueError("record file %s: layer %r is not a quantizable layer of pb_model %s"
                     % (record_file, unknown[0], pb_model))
  return _write(graph, sources, records, record_file, outputs, target)


def _inputs(pb_model, outputs, record_file, save_path):
  target = _target(save_path)
  records = record.read(record_file)
  graph = frozen.import_graph_def(frozen.load_graph_def(pb_model), "pb_model %s" % pb_model)
  names = _output_names(outputs, graph, pb_model)
  return graph, names, records, target


def _output_names(outputs, graph, pb_model):
  if isinstance(outputs, str) or not outputs:
    raise ValueError("outputs must be a non-empty list of output names, got %r" % (outputs,))
  names = []
  for output in outputs:
    name = output.name if hasattr(output, "name") else output
    if not isinstance(name, str):
      raise ValueError("outputs: %r is not a node name" % (output,))
    name = name.split(":")[0]
    try:
      graph.get_operation_by_name(name)
    except KeyError:
      raise ValueError("outputs: node %r is not in pb_model %s" % (name, pb_model)) from None
    names.append(name)
  return names


def _target(save_path):
  if not isinstance(save_path, str) or not save_path or save_path.endswith(("/", os.sep)):
    raise ValueError("save_path must be a path prefix such as './result/model', got %r"
                     % (save_path,))
  directory, prefix = os.path.split(os.path.abspath(save_path))
  files.check_output_dir(directory)
  return directory, prefix


def _write(graph, sources, records, record_file, outputs, target):
  quantized, fake, _ = deploy.build(graph, sources, records, record_file, outputs)
  directory, prefix = target
  paths = files.write_all(directory, {prefix + QUANTIZED_SUFFIX: quantized.SerializeToString(),
                                      prefix + FAKE_QUANT_SUFFIX: fake.SerializeToString()})
  logging.info("AMCT save: %d quantized layers; wrote %s", len(sources),
               ", ".join(sorted(paths.values())))
  return paths


