"""Range quantizers, bias quantizers and DPU positions are stamped from NodeDef templates in
one import (graph/stamp.py, passes/build_quantizers.py, targets/dpu/quantizers.py). The graph must be the
one that building each op by op gives: the same nodes, attributes, inputs and collections, and
variables of their own."""

import numpy as np
import pytest
import tensorflow as tf

import builders
import dpu_models
from qat_rewrite import decent_q, quantize
from qat_rewrite.graph import stamp as graph_stamp
from qat_rewrite.passes import build_quantizers
from qat_rewrite.targets.dpu import quantizers as dpu_quantizers

v1 = tf.compat.v1


def _model(use_resource, input_kind='random'):
  """Conv + BN + ReLU6, a depthwise conv + BN + ReLU, a residual add, a pool and a dense layer:
  weights per tensor and per channel (depthwise: channels reshaped), nonnegative and signed
  activations, rank 4 and rank 2."""
  x = builders.conv_input(batch=4, size=8, kind=input_kind)
  a = builders.conv2d(x, 8, 3, normalizer='fused', scope='conv', use_resource=use_resource)
  b = builders.separable_conv2d(a, None, 3, normalizer='fused', activation=tf.nn.relu,
                                scope='dw', use_resource=use_resource)
  c = builders.conv2d(b, 8, 1, activation=None, scope='project', use_resource=use_resource)
  pooled = tf.reduce_mean(tf.add(a, c, name='residual'), [1, 2], name='gap')
  return builders.fully_connected(pooled, 3, activation=None, scope='logits',
                                  use_resource=use_resource)


CASES = {
    'contrib training': dict(training=True),
    'delay, symmetric, per-channel': dict(training=True, quant_delay=3, symmetric=True,
                                          per_channel_weights=True),
    'eval, per-channel': dict(training=False, per_channel_weights=True),
}


def _spy_on_stamps(monkeypatch):
  """The list that every copy stamped from now on joins."""
  copies, stamp = [], graph_stamp.stamp
  monkeypatch.setattr(graph_stamp, 'stamp', lambda graph, c: copies.extend(c) or stamp(graph, c))
  return copies


def _assert_same_graph(stamped, by_ops, report, by_ops_report):
  """The same nodes (attributes and inputs), collections and report; returns the nodes."""
  nodes = {n.name: n for n in stamped.as_graph_def().node}
  want = {n.name: n for n in by_ops.as_graph_def().node}
  assert sorted(nodes) == sorted(want)
  assert [name for name in want if nodes[name] != want[name]] == []
  assert _collections(stamped) == _collections(by_ops)
  assert str(report) == str(by_ops_report)
  return nodes


def _rewritten(case, use_resource, stamped, monkeypatch):
  """(graph, report) of the case's rewrite, its range and bias quantizers stamped or built op
  by op."""
  copies = _spy_on_stamps(monkeypatch) if stamped else []
  if not stamped:
    monkeypatch.setattr(build_quantizers, '_stamped_ranges', lambda *args: {})
    monkeypatch.setattr(build_quantizers, '_stamped_biases', build_quantizers._built_biases)
  options = dict(CASES[case])
  training = options.pop('training')
  with tf.Graph().as_default() as graph:
    v1.set_random_seed(0)
    _model(use_resource)
    rewrite = (quantize.experimental_create_training_graph if training
               else quantize.experimental_create_eval_graph)
    report = rewrite(graph, **options)
  monkeypatch.undo()
  assert bool(copies) == stamped
  return graph, report


def _collections(graph):
  return {key: [getattr(item, 'name', item) for item in graph.get_collection(key)]
          for key in graph.get_all_collection_keys()}


@pytest.mark.parametrize('use_resource', [True, False], ids=['resource', 'ref'])
@pytest.mark.parametrize('case', sorted(CASES))
def test_stamped_quantizers_are_the_graph_built_op_by_op(case, use_resource, monkeypatch):
  stamped, report = _rewritten(case, use_resource, True, monkeypatch)
  by_ops, by_ops_report = _rewritten(case, use_resource, False, monkeypatch)
  nodes = _assert_same_graph(stamped, by_ops, report, by_ops_report)
  assert any('/act_quant/' in name for name in nodes)
  assert any('/bias_quant/' in name for name in nodes)


def test_each_stamped_quantizer_has_range_variables_of_its_own():
  """Each copy's variables are its own resources (their shared_name renamed with the copy):
  after one training step each activation range is its own tensor's batch range."""
  images = np.random.RandomState(0).uniform(-1, 1, (4, 8, 8, 3)).astype(np.float32)
  names = ['conv/act_quant', 'dw/act_quant', 'gap/activation_Mean_quant']
  with tf.Graph().as_default() as graph:
    v1.set_random_seed(0)
    _model(use_resource=True, input_kind='placeholder')
    quantize.create_training_graph(graph)
    handles = [op for op in graph.get_operations() if op.type == 'VarHandleOp']
    assert all(op.get_attr('shared_name').decode() == op.name for op in handles)
    inputs = [graph.get_operation_by_name(n + '/FakeQuantWithMinMaxVars').inputs[0]
              for n in names]
    feed = {graph.get_tensor_by_name('input:0'): images}
    with v1.Session() as sess:
      sess.run(v1.global_variables_initializer())
      batch_max = sess.run([tf.reduce_max(t) for t in inputs] + [tf.group(
          *v1.get_collection(v1.GraphKeys.UPDATE_OPS))], feed)[:-1]
      learned = sess.run([n + '/max/Read/ReadVariableOp:0' for n in names])
  np.testing.assert_allclose(learned, batch_max, rtol=1e-3)  # the EMA's first weight, in float32
  assert len(set(np.round(learned, 5))) == 3


def _dpu_rewritten(training, stamped, monkeypatch):
  """(graph, report) of a decent_q rewrite of dpu_models, positions stamped or built op by op."""
  copies = _spy_on_stamps(monkeypatch) if stamped else []
  if not stamped:
    monkeypatch.setattr(dpu_quantizers, '_stamped_positions', dpu_quantizers._built_positions)
  with tf.Graph().as_default() as graph:
    dpu_models.build(is_training=training)
    config = decent_q.QuantizeConfig(input_nodes=dpu_models.INPUT_NODES,
                                     output_nodes=dpu_models.OUTPUT_NODES,
                                     input_shapes=dpu_models.INPUT_SHAPES)
    report = (decent_q.CreateQuantizeTrainingGraph if training
              else decent_q.CreateQuantizeEvaluationGraph)(config=config)
  monkeypatch.undo()
  assert bool(copies) == stamped
  return graph, report


@pytest.mark.parametrize('training', [True, False], ids=['training', 'eval'])
def test_stamped_dpu_positions_are_the_graph_built_op_by_op(training, monkeypatch):
  """The position search, most of a FixNeuron's ops; eval's names its histogram in a message."""
  stamped, report = _dpu_rewritten(training, True, monkeypatch)
  by_ops, by_ops_report = _dpu_rewritten(training, False, monkeypatch)
  nodes = _assert_same_graph(stamped, by_ops, report, by_ops_report)
  assert any(n.endswith('/pos_histogram') for n in nodes)
