"""Freezes a DPU evaluation graph with a checkpoint and writes decent_q's deploy files.

The user's graph and session are not touched: variables are read straight from the
checkpoint into constants, the positions are evaluated on that frozen copy, and then each
`P/pos` and each weight or bias is replaced by a constant, so the written models hold no
range-tracking machinery. Files are written all or nothing.
"""

import numpy as np
import tensorflow as tf
from absl import logging

from qat_rewrite import files
from qat_rewrite.graph import frozen
from qat_rewrite.passes import checkpoint as checkpoint_checks
from qat_rewrite.targets.dpu import deploy_model, rewrite
from qat_rewrite.targets.dpu.plan import BIAS, WEIGHTS

EVAL_MODEL = "quantize_eval_model.pb"
FIXNEURON_MODEL = "quantize_eval_model_fixneuron.pb"
DEPLOY_MODEL = "deploy_model.pb"
INFO = "quantize_info.txt"
_TENSOR_MAP_HEADER = "# eval model tensor -> deploy model node"


def deploy(graph, config, checkpoint, fixneuron_model=True):
  """Writes the deploy files of `graph` (rewritten for eval) into `config.output_dir`."""
  files.check_output_dir(config.output_dir)
  paths = files.write_all(config.output_dir,
                          deploy_contents(graph, config, checkpoint, fixneuron_model))
  logging.info("decent_q deploy: wrote %s", ", ".join(sorted(paths.values())))
  return paths


def deploy_contents(graph, config, checkpoint, fixneuron_model=True):
  """{file name: bytes} of the deploy files, for callers that write more files with them."""
  done = rewrite.rewritten(graph)
  if done is None or done.training:
    raise ValueError("CreateQuantizeDeployGraph needs the graph rewritten by "
                     "CreateQuantizeEvaluationGraph (build the float eval graph, rewrite it, "
                     "then deploy)")
  prefix = frozen.resolve_checkpoint(checkpoint)
  plan = done.plan
  outputs = [_quantized_name(plan, name) for name in config.output_nodes]
  graph_def = graph.as_graph_def()
  constant = frozen.constants_from_checkpoint(
      graph_def, prefix, outputs + [p.name + "/pos" for p in plan.points],
      check=lambda reader, variables: checkpoint_checks.check(graph_def, reader, prefix,
                                                           variables))
  positions, values = _evaluate(constant, plan)
  eval_model = _frozen_eval_model(constant, plan, positions, values, config, outputs)
  contents = {EVAL_MODEL: eval_model.SerializeToString()}
  if fixneuron_model:
    contents[FIXNEURON_MODEL] = _fixneuron_form(eval_model, plan, positions, config,
                                                outputs).SerializeToString()
  deployed, tensor_map = deploy_model.build(graph, plan, positions, values, config, outputs)
  contents[DEPLOY_MODEL] = deployed.SerializeToString()
  contents[INFO] = info_text(plan, positions, tensor_map).encode()
  return contents


def _quantized_name(plan, name):
  """decent_q's deploy outputs are the output nodes' quantizers, `<name>/aquant`."""
  return next((p.name for p in plan.points if p.name == name + "/aquant"), name)


def _evaluate(constant, plan):
  """Each point's position, and the float value of each weight and bias, from the checkpoint."""
  weights = [p for p in plan.points if p.kind in (WEIGHTS, BIAS)]
  with tf.Graph().as_default() as g:
    tf.import_graph_def(constant, name="")
    fetch = {p.name: g.get_tensor_by_name(p.name + "/pos:0") for p in plan.points}
    fetch.update({"value:" + p.name: g.get_tensor_by_name(p.tensor.name) for p in weights})
    with frozen.session_for_one_run(g) as sess:
      try:
        result = sess.run(fetch)
      except tf.errors.InvalidArgumentError as e:
        raise ValueError("cannot read the quantizer positions from the checkpoint: %s"
                         % e.message.splitlines()[0]) from e
  positions = {p.name: int(result[p.name]) for p in plan.points}
  values = {p.name: result["value:" + p.name] for p in weights}
  return positions, values


def _frozen_eval_model(constant, plan, positions, values, config, outputs):
  """The stock-TF eval model: constant positions and weights, input nodes as Placeholders."""
  replace = {p.name + "/pos": frozen.const_node(p.name + "/pos", np.int32(positions[p.name]))
             for p in plan.points}
  for p in plan.points:
    if p.kind in (WEIGHTS, BIAS):
      node = p.tensor.op.name
      replace[node] = frozen.const_node(node, values[p.name])
  for name, shape in zip(config.input_nodes, config.input_shapes):
    replace[name] = deploy_model.placeholder_node(name, shape)
  model = tf.compat.v1.GraphDef()
  model.versions.CopyFrom(constant.versions)
  model.library.CopyFrom(constant.library)
  for node in constant.node:
    model.node.append(replace.get(node.name, node))
  for node in model.node:
    if node.name in positions:  # the point's output Identity: tag it as decent_q's FixNeuron
      point = next(p for p in plan.points if p.name == node.name)
      _tag(node, point, positions[point.name], prefix="_")
  return tf.compat.v1.graph_util.extract_sub_graph(model, outputs)


def _tag(node, point, pos, prefix):
  """FixNeuron attributes; `_`-prefixed ones are ignored by TensorFlow when it loads the node."""
  for key, value in (("bit_width", point.bits), ("quantize_pos", pos), ("mode", point.mode),
                     ("method", point.method)):
    node.attr[prefix + key].i = value


def _fixneuron_form(frozen, plan, positions, config, outputs):
  """The DPU compiler's form: each quantizer is one FixNeuron node (phase 1, evaluation)."""
  fixed = tf.compat.v1.GraphDef()
  fixed.CopyFrom(frozen)
  points = {p.name: p for p in plan.points}
  for node in fixed.node:
    if node.name in points:
      point = points[node.name]
      node.Clear()
      node.name, node.op = point.name, "FixNeuron"
      node.input.append(_input_name(point.tensor))
      node.attr["T"].type = tf.float32.as_datatype_enum
      node.attr["phase"].i = 1
      node.attr["output_dir"].s = config.output_dir.encode()
      _tag(node, point, positions[point.name], prefix="")
  return tf.compat.v1.graph_util.extract_sub_graph(fixed, outputs)


def _input_name(tensor):
  """A NodeDef input string: `op` for output 0, `op:i` otherwise."""
  return tensor.op.name if tensor.value_index == 0 else tensor.name


def info_text(plan, positions, tensor_map):
  """The readable list of every quantized tensor, and the DPU shifts of every layer."""
  lines = ["# qat_rewrite decent_q quantize info. A tensor at (bits, pos) holds q * 2^-pos with",
           "# q in [-2^(bits-1), 2^(bits-1)-1]. mode: 0 weights, 1 activation, 2 depthwise.",
           "# name kind bit_width quantize_pos mode method"]
  for p in plan.points:
    lines.append("%s %s %d %d %d %d" % (p.name, p.kind, p.bits, positions[p.name], p.mode,
                                        p.method))
  lines.append("# layer ipos wpos bpos opos shift_cut shift_bias")
  for g in plan.groups:
    pi, pw, po = (positions[p.name] for p in (g.input, g.weights, g.output))
    pb = positions[g.bias.name] if g.bias else None
    lines.append("%s %d %d %s %d %d %s" % (g.layer.name, pi, pw, "-" if pb is None else pb, po,
                                           pw + pi - po, "-" if pb is None else pw + pi - pb))
  lines.append(_TENSOR_MAP_HEADER)
  lines.extend("%s %s" % item for item in sorted(tensor_map.items()))
  return "\n".join(lines) + "\n"


def read_tensor_map(info_path):
  """{eval model tensor: deploy model node} from a quantize info file: every output and
  quantized activation of quantize_eval_model.pb, and the deploy node that computes it."""
  with open(info_path) as f:
    text = f.read()
  if _TENSOR_MAP_HEADER not in text:
    raise ValueError("%s has no line %r: not a qat_rewrite quantize info file"
                     % (info_path, _TENSOR_MAP_HEADER))
  return dict(line.split() for line in text.split(_TENSOR_MAP_HEADER)[1].strip().splitlines())
