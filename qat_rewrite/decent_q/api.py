"""decent_q's graph functions, on TensorFlow 2.x graphs (tf.compat.v1 Graph + Session).

Same names and arguments as `vai_q_tensorflow`; each also returns a report of what was
quantized and what stayed float. The config is never changed.
"""

import tensorflow as tf

from qat_rewrite.decent_q.config import QuantizeConfig
from qat_rewrite.targets.dpu import deploy, rewrite


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
  return rewrite.rewrite(*_graph_and_config(graph, config), training=True)


def CreateQuantizeEvaluationGraph(graph=None, config=None):  # noqa: N802
  """Rewrites the float evaluation graph (built with is_training=False) in place.

  Restore the QAT checkpoint into it: activations use their most frequent training position,
  weights and biases the position of their values, adjusted to the DPU's shift limits.
  """
  return rewrite.rewrite(*_graph_and_config(graph, config), training=False)


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
