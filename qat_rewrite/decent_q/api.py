"""decent_q's graph functions, on TensorFlow 2.x graphs (tf.compat.v1 Graph + Session).

Same names and arguments as `vai_q_tensorflow`; each also returns a report of what was
quantized and what stayed float. The config is never changed.
"""

import tensorflow as tf

from qat_rewrite.decent_q.config import QuantizeConfig
from qat_rewrite.passes.transaction import all_or_nothing
from qat_rewrite.targets.dpu import calibrate, deploy, rewrite


def _graph_and_config(graph, config):
  graph = graph if graph is not None else tf.compat.v1.get_default_graph()
  if not isinstance(graph, tf.Graph):
    raise ValueError("graph must be a tf.Graph or None, got %r" % (graph,))
  if not isinstance(config, QuantizeConfig):
    raise ValueError("config must be a decent_q.QuantizeConfig, got %r" % (config,))
  return graph, config


def CreateQuantizeTrainingGraph(graph=None, config=None):  # noqa: N802 (decent_q's name)
  """Rewrites the float training graph in place for quantization-aware training.

  Call it after building the model and before building the optimizer, then initialize
  variables (the rewrite adds position histograms). Batch norms after conv, depthwise,
  transpose conv and dense layers are folded; positions follow each batch.
  """
  return all_or_nothing(rewrite.rewrite)(*_graph_and_config(graph, config), training=True)


def CreateQuantizeEvaluationGraph(graph=None, config=None):  # noqa: N802
  """Rewrites the float evaluation graph (built with is_training=False) in place.

  Restore the QAT checkpoint into it: activations use their most frequent training position,
  weights and biases the position of their values, adjusted to the DPU's shift limits.
  """
  return all_or_nothing(rewrite.rewrite)(*_graph_and_config(graph, config), training=False)


def CreateQuantizeDeployGraph(graph=None, checkpoint="", config=None, fixneuron_model=True):  # noqa: N802
  """Freezes the evaluation graph with `checkpoint` and writes the deploy files.

  `checkpoint` is a directory (its latest checkpoint) or a checkpoint prefix. Writes into
  `config.output_dir`: quantize_eval_model.pb (runs in stock TensorFlow), deploy_model.pb
  (integer weights, per-node positions), quantize_info.txt, and, unless `fixneuron_model`
  is False, quantize_eval_model_fixneuron.pb (FixNeuron ops, the DPU compiler's form).
  Returns {file kind: path}.
  """
  return deploy.deploy(*_graph_and_config(graph, config), checkpoint,
                       fixneuron_model=fixneuron_model)


def quantize_frozen(input_graph_def, input_fn, q_config, s_config=None, skip_check=0,
                    fixneuron_model=True):
  """Post-training quantization of a frozen GraphDef, as `vai_q_tensorflow quantize`.

  Runs `q_config.calib_iter` batches from `input_fn(i)` (a dict {placeholder name: array})
  through the graph, takes each activation's most frequent position, and writes the same
  files as CreateQuantizeDeployGraph into `q_config.output_dir`; returns {file name: path}.
  Batch norms in inference mode (and behind learning-phase switches) fold into the weights.
  `s_config` and `skip_check` are accepted for decent_q scripts and have no effect: every
  calibration batch is checked (shapes, NaN and Inf).
  """
  if not isinstance(input_graph_def, tf.compat.v1.GraphDef):
    raise ValueError("input_graph_def must be a tf.compat.v1.GraphDef, got %r"
                     % type(input_graph_def).__name__)
  _, config = _graph_and_config(tf.Graph(), q_config)
  return calibrate.quantize_frozen(input_graph_def, input_fn, config,
                                   fixneuron_model=fixneuron_model)
