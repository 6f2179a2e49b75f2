"""Real model code: tf_keras applications and tf.compat.v1.layers graphs."""

import numpy as np
import pytest
import tensorflow as tf
import tf_keras

from qat_rewrite import quantize
from qat_rewrite.graph.view import is_weight_unscale
from qat_rewrite.report import LEARNING_PHASE_COPY

FAKE_QUANTS = ("FakeQuantWithMinMaxVars", "FakeQuantWithMinMaxVarsPerChannel")


def _ancestors(tensors):
  """Ops that must run to compute `tensors`: what a session.run would execute."""
  seen, stack = set(), [getattr(t, "op", t) for t in tensors]
  while stack:
    op = stack.pop()
    if op in seen:
      continue
    seen.add(op)
    stack.extend(t.op for t in op.inputs)
    stack.extend(op.control_inputs)
  return seen


def _keras_graph(app, training, size=32):
  graph = tf.Graph()
  with graph.as_default():
    images = tf.compat.v1.placeholder(tf.float32, [None, size, size, 3], name="images")
    model = getattr(tf_keras.applications, app)(weights=None, input_shape=(size, size, 3))
    logits = model(images, training=training)
  return graph, images, logits, model


def _weight_is_quantized(op):
  """Through the training fold's weight unscale, q(w·s)·1/s (fold_batch_norm.unscale_on_weights)."""
  weight = op.inputs[1]
  if is_weight_unscale(weight.op):
    weight = weight.op.inputs[0]
  return weight.op.type in FAKE_QUANTS or weight.op.name.endswith("delayed_quant")


def test_resnet50_training_graph_quantizes_all_54_layers_and_folds_53_batch_norms():
  graph, images, logits, model = _keras_graph("ResNet50", training=True)
  report = quantize.create_training_graph(graph)
  live = _ancestors([logits] + tf.compat.v1.get_collection(tf.compat.v1.GraphKeys.UPDATE_OPS)
                    + [u for u in model.get_updates_for(images)])
  live_layers = [op for op in live if op.type in ("Conv2D", "MatMul")]
  assert len(live_layers) == 54  # one convolution per layer: the fold does not run it twice
  assert all(_weight_is_quantized(op) for op in live_layers)
  assert len([n for n in report.quantized_weights if n.startswith("resnet50/")]) == 54
  assert len(report.folded_batch_norms) == 53
  assert "53 batch norms folded" in report.summary()
  live_bns = [op for op in live if op.type.startswith("FusedBatchNorm")]
  assert len(live_bns) == 53 and all("BatchNorm_Fold" in op.name for op in live_bns)
  # Keras' construction copy (reading its own Input, behind the learning-phase conditional)
  # stays float: listed in the report, one line when printed.
  copy = [f for f in report.float_ops if f.reason.startswith(LEARNING_PHASE_COPY)]
  assert len(copy) == len(report.float_ops) == 53
  assert all("resnet50/" + f.op in report.quantized_weights for f in copy)
  printed = [l for l in str(report).splitlines() if l.lstrip().startswith("float")]
  assert printed == ["  float 53 layers %s (their batch norms sit behind the training-flag "
                     "conditional), e.g. %s" % (LEARNING_PHASE_COPY, copy[0].op)]
  with tf.compat.v1.Session(graph=graph) as sess:
    sess.run(tf.compat.v1.global_variables_initializer())
    out = sess.run(logits, {images: np.random.RandomState(0).rand(2, 32, 32, 3)})
  assert out.shape == (2, 1000) and np.all(np.isfinite(out))


def test_nasnet_construction_copy_is_known_though_its_cells_nest_scopes(caplog):
  """NASNet's construction copy names a layer under its cell's scope
  (`reduction_A_block_stem_1/reduction_conv_1_stem_1/Conv2D`), the called model without it
  (`NASNet/reduction_conv_1_stem_1/Conv2D`): every float layer is still the copy, and no
  warning tells the user to pass training=, which they did."""
  graph, _, _, _ = _keras_graph("NASNetMobile", training=True)
  report = quantize.create_training_graph(graph)
  assert len(report.folded_batch_norms) > 180
  assert report.float_ops and all(f.reason.startswith(LEARNING_PHASE_COPY)
                                  for f in report.float_ops)
  assert "stay float: their batch norm is behind" not in caplog.text


def test_a_model_behind_a_conditional_beside_a_folding_one_keeps_its_warning():
  # The user's MobileNetV2 reads `images` without training=, beside a conv + BN that folds:
  # its layers are not a construction copy, so each says how to quantize it.
  graph = tf.Graph()
  with graph.as_default():
    images = tf.compat.v1.placeholder(tf.float32, [None, 32, 32, 3], name="images")
    tf_keras.applications.MobileNetV2(weights=None, input_tensor=images)
    net = tf.compat.v1.layers.conv2d(images, 4, 3, use_bias=False, name="side")
    tf.compat.v1.layers.batch_normalization(net, training=True, name="side_bn")
    report = quantize.create_training_graph(graph)
  assert report.folded_batch_norms == ["side_bn/FusedBatchNormV3"]
  conditional = [f for f in report.float_ops if "conditional" in f.reason]
  assert conditional and all("build with training=True/False" in f.reason for f in conditional)
  assert not any(f.reason.startswith(LEARNING_PHASE_COPY) for f in report.float_ops)


def test_mobilenet_v2_eval_graph_quantizes_depthwise_and_residual_adds():
  graph, images, logits, _ = _keras_graph("MobileNetV2", training=False)
  report = quantize.create_eval_graph(graph)
  rewritten = graph.as_graph_def()
  assert quantize.create_eval_graph(graph).quantizer_count == 0  # a second call changes nothing
  assert graph.as_graph_def() == rewritten
  live = _ancestors([logits])
  layers = [op for op in live if op.type in ("Conv2D", "DepthwiseConv2dNative", "MatMul")]
  assert len(layers) == 53 and all(_weight_is_quantized(op) for op in layers)
  assert len(report.folded_batch_norms) == 52
  adds = [op for op in live if op.type == "AddV2" and op.name.endswith("_add/add")]
  assert adds and all(
      any(c.type in FAKE_QUANTS for c in _consumers(graph, op.outputs[0])) for op in adds)
  assert not any("Assign" in op.type for op in live)  # eval ranges are read-only
  # Every reader of a layer output reads it quantized: a project conv's output feeds both the
  # residual add and the next block's expand conv (blocks 1, 3, 6, 10, 13).
  for op in live:
    if op.type in FAKE_QUANTS and not op.name.rpartition("/")[0].endswith("weights_quant"):
      readers = [c.name for c in _consumers(graph, op.inputs[0]) if c.type not in FAKE_QUANTS]
      assert not readers, (op.name, readers)
  net = "mobilenetv2_1.00_32/"
  expand = graph.get_operation_by_name(net + "block_2_expand/Conv2D")
  assert expand.inputs[0].op.name == net + "block_1_project/conv_quant/" + FAKE_QUANTS[0]
  mean = net + "global_average_pooling2d/Mean"
  assert report.other_quantizers == [mean + "/activation_Mean_quant"]
  classifier = graph.get_operation_by_name(net + "predictions/MatMul")
  assert classifier.inputs[0].op.name == mean + "/activation_Mean_quant/" + FAKE_QUANTS[0]


def _consumers(graph, tensor):
  return [op for op in graph.get_operations() if any(t is tensor for t in op.inputs)]


def test_keras_model_built_without_training_flag_is_refused_with_a_clear_error():
  graph = tf.Graph()
  with graph.as_default():
    images = tf.compat.v1.placeholder(tf.float32, [None, 32, 32, 3])
    tf_keras.applications.MobileNetV2(weights=None, input_tensor=images)
    before = graph.as_graph_def()
    with pytest.raises(ValueError, match=r"bn_Conv1/cond.*training=True"):
      quantize.create_training_graph(graph)
    assert graph.as_graph_def() == before


def test_v1_cond_batch_norm_is_refused_naming_the_op():
  graph = tf.Graph()
  with graph.as_default():
    tf.compat.v1.disable_control_flow_v2()
    try:
      images = tf.compat.v1.placeholder(tf.float32, [None, 8, 8, 3])
      is_training = tf.compat.v1.placeholder(tf.bool, [])
      net = tf.compat.v1.layers.conv2d(images, 4, 3, use_bias=False, name="conv")
      net = tf.cond(is_training,
                    lambda: tf.compat.v1.layers.batch_normalization(net, training=True, name="bn"),
                    lambda: tf.compat.v1.layers.batch_normalization(net, training=False, name="bn",
                                                                    reuse=True))
    finally:
      tf.compat.v1.enable_control_flow_v2()
    with pytest.raises(ValueError, match=r"bn/.*training=True"):
      quantize.create_training_graph(graph)


def _v1_layers_graph(fused, training):
  layers = tf.compat.v1.layers
  images = tf.compat.v1.placeholder(tf.float32, [4, 16, 16, 3], name="images")
  net = layers.conv2d(images, 8, 3, padding="same", use_bias=False, name="conv")
  net = tf.nn.relu(layers.batch_normalization(net, training=training, fused=fused, name="conv_bn"))
  net = layers.separable_conv2d(net, 8, 3, padding="same", use_bias=False, name="sep")
  net = tf.nn.relu6(layers.batch_normalization(net, training=training, fused=fused, name="sep_bn"))
  net = layers.conv2d_transpose(net, 4, 3, strides=2, padding="same", use_bias=False, name="up")
  net = tf.nn.leaky_relu(layers.batch_normalization(net, training=training, fused=fused,
                                                    name="up_bn"))
  net = layers.dense(tf.reshape(net, [4, -1]), 10, name="logits")
  return images, net


@pytest.mark.parametrize("fused", [True, False], ids=["fused", "unfused"])
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
def test_compat_v1_layers_are_folded_and_quantized(fused, training):
  graph = tf.Graph()
  with graph.as_default():
    images, logits = _v1_layers_graph(fused, training)
    report = (quantize.create_training_graph if training else quantize.create_eval_graph)(graph)
    assert sorted(report.quantized_weights) == sorted([
        "conv/Conv2D", "sep/separable_conv2d/depthwise", "sep/separable_conv2d",
        "up/conv2d_transpose", "logits/MatMul"])
    assert sorted(report.folded_batch_norms, key=str) and len(report.folded_batch_norms) == 3
    names = {op.name for op in graph.get_operations()}
    assert "sep/separable_conv2d/act_quant/FakeQuantWithMinMaxVars" in names  # depthwise output
    assert "up/act_quant/FakeQuantWithMinMaxVars" in names  # after the LeakyRelu
    assert graph.get_operation_by_name("up/act_quant/FakeQuantWithMinMaxVars").inputs[0].op.type \
        == "LeakyRelu"
    assert "logits/act_quant/FakeQuantWithMinMaxVars" in names  # final layer without activation
    with tf.compat.v1.Session(graph=graph) as sess:
      sess.run(tf.compat.v1.global_variables_initializer())
      assert np.all(np.isfinite(sess.run(logits, {images: np.ones((4, 16, 16, 3))})))


def test_ref_variables_and_partitioned_weights():
  graph = tf.Graph()
  with graph.as_default():
    with tf.compat.v1.variable_scope("net", use_resource=False,
                                     partitioner=tf.compat.v1.fixed_size_partitioner(2)):
      images = tf.compat.v1.placeholder(tf.float32, [4, 8, 8, 3])
      weights = tf.compat.v1.get_variable("conv/weights", [3, 3, 3, 4])
      net = tf.nn.relu(tf.nn.conv2d(images, weights, 1, "SAME", name="conv/Conv2D"))
    report = quantize.create_training_graph(graph)
    conv = graph.get_operation_by_name("net/conv/Conv2D")
    assert report.quantized_weights == ["net/conv/Conv2D"]
    assert conv.inputs[1].op.name == "net/conv/weights_quant/FakeQuantWithMinMaxVars"
    assert graph.get_operation_by_name("net/conv/weights_quant/min").type == "VariableV2"


def test_nchw_convolution_stays_float_and_is_reported():
  graph = tf.Graph()
  with graph.as_default():
    images = tf.compat.v1.placeholder(tf.float32, [4, 3, 8, 8])
    weights = tf.compat.v1.get_variable("w", [3, 3, 3, 4])
    tf.nn.relu(tf.nn.conv2d(images, weights, 1, "SAME", data_format="NCHW", name="conv"))
    report = quantize.create_training_graph(graph)
    assert report.quantized_weights == []
    assert "data_format NCHW" in str(report)


def test_unsupported_compute_is_reported_as_float_and_a_lone_batch_norm_folds():
  graph = tf.Graph()
  with graph.as_default():
    images = tf.compat.v1.placeholder(tf.float32, [4, 8, 8, 3])
    net = tf.compat.v1.layers.batch_normalization(images, training=False, name="input_bn")
    net = tf.reshape(net, [4, 8, 24])
    weights = tf.compat.v1.get_variable("bmm_weights", [4, 24, 5])
    tf.linalg.matmul(net, weights, name="bmm")
    report = quantize.create_eval_graph(graph)
  reasons = {f.op: f.reason for f in report.float_ops}
  assert "not a supported layer type" in reasons["bmm"]
  assert "input_bn/FusedBatchNormV3" not in reasons
  folded = {layer.layer: layer.folded_batch_norm for layer in report.layers}
  assert folded == {"input_bn/depthwise": "input_bn/FusedBatchNormV3"}  # a unit layer
