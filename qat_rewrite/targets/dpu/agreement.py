"""Checks that deploy_model.pb means what quantize_eval_model.pb means.

The eval model runs in TensorFlow (float fake quantization), the deploy model in the integer
reference runner; each eval output, times 2^pos, must be the runner's integers.
"""

import collections

import numpy as np

from qat_rewrite.graph import frozen
from qat_rewrite.targets.dpu import deploy, reference_runner

Agreement = collections.namedtuple("Agreement", "equal_share max_lsb elements")


def compare(files, feeds):
  """{eval model tensor: Agreement}, for every output and quantized activation, for the deploy files `files` ({file name: path}, as returned by
  CreateQuantizeDeployGraph) fed `feeds` ({input node name: array})."""
  got = run_deploy_model(files, feeds)
  expected = frozen.run_graph_def(frozen.load_graph_def(files[deploy.EVAL_MODEL]), feeds,
                                  list(got))
  results = {}
  for name, (ints, pos) in got.items():
    want = expected[name].astype(np.float64) * 2.0 ** pos
    if not np.array_equal(want, np.round(want)):
      raise ValueError("eval model tensor %s is not on the deploy grid 2^-%d" % (name, pos))
    diff = np.abs(ints - want)
    results[name] = Agreement(float(np.mean(diff == 0)), float(diff.max(initial=0)), diff.size)
  return results


def run_deploy_model(files, feeds):
  """{eval model tensor: (ints, pos)}: deploy_model.pb run by the integer reference runner,
  its outputs and quantized activations named after the eval model's tensors."""
  tensor_map = deploy.read_tensor_map(files[deploy.INFO])
  got = reference_runner.run(frozen.load_graph_def(files[deploy.DEPLOY_MODEL]), feeds,
                             sorted(set(tensor_map.values())))
  return {name: got[node] for name, node in tensor_map.items()}
