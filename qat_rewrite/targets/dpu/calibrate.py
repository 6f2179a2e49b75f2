"""Post-training quantization of a frozen graph for the DPU (vai_q_tensorflow's quantize_frozen).

Calibration is the QAT position tracking without training: the frozen graph gets the training
rewrite (its batch norms are in inference mode, so they fold with their moving statistics),
`calib_iter` batches from `input_fn` run through it, and each activation's position histogram
counts the batch positions. The histograms go to a temporary checkpoint, and the eval rewrite
and deploy freeze of the QAT path write the same files from it. Only one batch is held at a
time, so memory does not grow with `calib_iter`.
"""

import os
import tempfile
import time

import tensorflow as tf
from absl import logging

from qat_rewrite import calibration_data, files
from qat_rewrite.graph import frozen
from qat_rewrite.targets.dpu import deploy, rewrite

v1 = tf.compat.v1


def quantize_frozen(graph_def, input_fn, config, fixneuron_model=True):
  """Calibrates `graph_def` on `input_fn(0..calib_iter-1)` and writes the deploy files into
  `config.output_dir`; returns {file name: path}. Nothing is written if anything fails."""
  files.check_output_dir(config.output_dir)
  return files.write_all(config.output_dir, calibrated_contents(graph_def, input_fn, config,
                                                                fixneuron_model))


def calibrated_contents(graph_def, input_fn, config, fixneuron_model=True):
  """{file name: bytes} of the deploy files after calibration (see quantize_frozen)."""
  if not callable(input_fn):
    raise ValueError("input_fn must be a function of the batch number returning "
                     "{placeholder name: array}, got %r" % (input_fn,))
  graph_def, settled = frozen.settle_constant_switches(graph_def)
  if settled:
    logging.info("calibration: %d learning-phase switches settled to their default branch",
                 settled)
  with tempfile.TemporaryDirectory(prefix="qat_rewrite_calib.") as temp:
    checkpoint = _calibrate(graph_def, input_fn, config, os.path.join(temp, "positions"))
    graph = frozen.import_graph_def(graph_def)
    with graph.as_default():
      rewrite.rewrite(graph, config, training=False)
      return deploy.deploy_contents(graph, config, checkpoint, fixneuron_model)


def _calibrate(graph_def, input_fn, config, prefix):
  """Runs the calibration batches; returns the checkpoint prefix holding the histograms."""
  graph = frozen.import_graph_def(graph_def)
  with graph.as_default():
    rewrite.rewrite(graph, config, training=True)
    plan = rewrite.rewritten(graph).plan
    with tf.name_scope("calibration"):
      checks = []
      for p in plan.points:  # one after another, so the first bad tensor in graph order is named
        with tf.control_dependencies(checks[-1:]):
          checks.append(tf.raw_ops.CheckNumerics(tensor=p.tensor,
                                                 message="NaN or Inf in " + p.tensor.name))
      step = tf.group([graph.get_tensor_by_name(p.name + ":0").op for p in plan.points] + checks)
    placeholders = calibration_data.placeholders(graph)
    saver = v1.train.Saver()
    with v1.Session(graph=graph) as sess:
      sess.run(v1.global_variables_initializer())
      started, every = time.time(), max(1, config.calib_iter // 10)
      for i in range(config.calib_iter):
        feeds = calibration_data.feed_dict(input_fn, i, placeholders)
        try:
          sess.run(step, feeds)
        except tf.errors.InvalidArgumentError as e:
          raise calibration_data.batch_error(i, e) from e
        del feeds
        if (i + 1) % every == 0 or i + 1 == config.calib_iter:
          logging.info("calibration: batch %d/%d (%.1f s)", i + 1, config.calib_iter,
                       time.time() - started)
      return saver.save(sess, prefix, write_meta_graph=False)
