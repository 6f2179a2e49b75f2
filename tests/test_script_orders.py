"""The script orders TF1 users write: the loss built before or after the rewrite, the train op
with or without UPDATE_OPS, for the contrib, decent_q and AMCT front ends.

A loss built after the rewrite reads the float tensor the model function returned, not the
quantizer behind it; the range updates still run because they are in UPDATE_OPS. A train op
that runs neither leaves the ranges untrained, and every export refuses such a checkpoint.
"""

import os

import numpy as np
import pytest
import tensorflow as tf

from qat_rewrite import amct, decent_q, quantize
from qat_rewrite.export import to_onnx, to_tflite

v1 = tf.compat.v1
STEPS = 3
ORDERS = ("loss_before", "loss_after", "loss_after_no_update_ops")


def model_fn(is_training):
  """A user's model function: returns (input, labels, the `net_out` tensor)."""
  v1.set_random_seed(5)
  images = v1.placeholder(tf.float32, [None, 8, 8, 1], name="net_in")
  labels = v1.placeholder(tf.int64, [None], name="labels")
  x = v1.layers.conv2d(images, 4, 3, use_bias=False, name="conv1")
  x = tf.nn.relu(v1.layers.batch_normalization(x, training=is_training, name="bn1"))
  x = tf.reshape(x, [-1, 6 * 6 * 4])
  logits = v1.layers.dense(x, 3, name="logits")
  return images, labels, tf.identity(logits, name="net_out")


def _batch(i):
  rng = np.random.RandomState(i)
  return rng.uniform(0.0, 1.0, (4, 8, 8, 1)).astype(np.float32), rng.randint(0, 3, 4)


def _train(order, rewrite, directory):
  """Builds the training graph in `order` around `rewrite()`, trains STEPS steps, saves;
  returns (checkpoint prefix, what `rewrite` returned)."""
  with tf.Graph().as_default():
    images, labels, out = model_fn(is_training=True)
    loss = v1.losses.sparse_softmax_cross_entropy(labels, out) if order == "loss_before" else None
    rewritten = rewrite()
    if loss is None:
      loss = v1.losses.sparse_softmax_cross_entropy(labels, out)
    update_ops = ([] if order == "loss_after_no_update_ops"
                  else v1.get_collection(v1.GraphKeys.UPDATE_OPS))
    with tf.control_dependencies(update_ops):
      train_op = v1.train.AdamOptimizer(1e-3).minimize(loss)
    with v1.Session() as sess:
      sess.run(v1.global_variables_initializer())
      for i in range(STEPS):
        x, y = _batch(i)
        sess.run(train_op, {images: x, labels: y})
      return v1.train.Saver().save(sess, os.path.join(directory, "model.ckpt")), rewritten


# contrib (qat_rewrite.quantize) ---------------------------------------------------------------

OPTIONS = dict(symmetric=True, quantize_inputs=True)


@pytest.fixture(scope="module")
def contrib(tmp_path_factory):
  return {order: _train(order, lambda: quantize.experimental_create_training_graph(**OPTIONS),
                        str(tmp_path_factory.mktemp(order)))[0]
          for order in ORDERS}


def _eval_graph():
  graph = tf.Graph()
  with graph.as_default():
    model_fn(is_training=False)
    quantize.experimental_create_eval_graph(**OPTIONS)
  return graph


@pytest.mark.parametrize("order", ORDERS[:2])
def test_contrib_output_range_learns_in_either_order(contrib, order, tmp_path):
  reader = tf.train.load_checkpoint(contrib[order])
  for quantizer in ("conv1/input_quant", "conv1/act_quant", "logits/act_quant"):
    assert reader.get_tensor(quantizer + "/local_step") == STEPS
  assert reader.get_tensor("logits/act_quant/max") not in (0.0, 6.0)  # moved off its init
  graph = _eval_graph()
  quantize.check_checkpoint(contrib[order], graph)
  exported = to_tflite(graph, str(tmp_path / "m.tflite"), ["net_in"], ["net_out"],
                       checkpoint=contrib[order])
  assert exported.output_nodes == ["logits/act_quant/FakeQuantWithMinMaxVars"]
  assert os.path.getsize(exported.path) > 0


def _refused_untrained(call, out_path):
  with pytest.raises(ValueError) as raised:
    call()
  message = str(raised.value)
  assert "1 quantizer(s) never learned their range" in message
  assert "logits/act_quant (moving average never updated (local_step 0))" in message
  assert "UPDATE_OPS" in message
  assert not os.path.exists(out_path)


@pytest.mark.parametrize("export", ["tflite", "onnx", "check_checkpoint"])
def test_contrib_untrained_output_range_is_refused(contrib, export, tmp_path):
  checkpoint = contrib["loss_after_no_update_ops"]
  graph = _eval_graph()
  out = str(tmp_path / ("m." + export))
  call = {
      "tflite": lambda: to_tflite(graph, out, ["net_in"], ["net_out"], checkpoint=checkpoint),
      "onnx": lambda: to_onnx(graph, out, ["net_in"], ["net_out"], checkpoint=checkpoint),
      "check_checkpoint": lambda: quantize.check_checkpoint(checkpoint, graph),
  }[export]
  _refused_untrained(call, out)


def test_a_checkpoint_missing_one_quantizer_names_it(contrib, tmp_path):
  """The eval graph holds a quantizer the training graph did not: the error names it and says
  why, instead of TensorFlow's bare 'Key not found'."""
  graph = tf.Graph()
  with graph.as_default():
    images, _, out = model_fn(is_training=False)
    tf.nn.softmax(out, name="probs")
    quantize.experimental_create_eval_graph(**OPTIONS)
  reader = tf.train.load_checkpoint(contrib["loss_before"])
  variables = {name: reader.get_tensor(name) for name in reader.get_variable_to_shape_map()
               if not name.startswith("logits/act_quant/")}
  with tf.Graph().as_default():
    saved = [tf.compat.v1.Variable(value, name=name) for name, value in variables.items()]
    with v1.Session() as sess:
      sess.run(v1.variables_initializer(saved))
      checkpoint = v1.train.Saver(saved).save(sess, str(tmp_path / "partial.ckpt"))
  with pytest.raises(ValueError, match=r"lacks 2 variable\(s\) the graph needs, e.g. "
                                       r"logits/act_quant/max, logits/act_quant/min. The "
                                       r"checkpoint holds other quantizers, so the training "
                                       r"graph had none at logits/act_quant"):
    quantize.check_checkpoint(checkpoint, graph)


# decent_q ------------------------------------------------------------------------------------

def _dpu_config(directory):
  return decent_q.QuantizeConfig(input_nodes=["net_in"], output_nodes=["net_out"],
                                 input_shapes=[[-1, 8, 8, 1]],
                                 output_dir=os.path.join(directory, "quantize_results"))


@pytest.mark.parametrize("order", ORDERS)
def test_decent_q_deploys_only_a_trained_output_position(order, tmp_path):
  config = _dpu_config(str(tmp_path))
  checkpoint, _ = _train(order, lambda: decent_q.CreateQuantizeTrainingGraph(config=config),
                         str(tmp_path))
  with tf.Graph().as_default():
    model_fn(is_training=False)
    decent_q.CreateQuantizeEvaluationGraph(config=config)
    if order == "loss_after_no_update_ops":
      with pytest.raises(ValueError, match=r"never learned their range in training: "
                                           r"net_out/aquant \(no position recorded\).*UPDATE_OPS"):
        decent_q.CreateQuantizeDeployGraph(checkpoint=checkpoint, config=config)
      assert not os.path.exists(config.output_dir)
      return
    paths = decent_q.CreateQuantizeDeployGraph(checkpoint=checkpoint, config=config)
  reader = tf.train.load_checkpoint(checkpoint)
  assert reader.get_tensor("net_out/aquant/pos_histogram").sum() == STEPS
  graph_def = v1.GraphDef()
  with open(paths["quantize_eval_model.pb"], "rb") as f:
    graph_def.ParseFromString(f.read())
  assert "net_out/aquant" in {n.name for n in graph_def.node}


def test_decent_q_identity_output_after_a_reshape_is_named_after_the_output(tmp_path):
  """slim's nets end in a squeeze; the user's `net_out` Identity names the output quantizer."""
  config = _dpu_config(str(tmp_path))
  with tf.Graph().as_default() as graph:
    images, _, out = model_fn(is_training=False)
    graph.get_operation_by_name("net_out")._update_input(  # pylint: disable=protected-access
        0, tf.reshape(out.op.inputs[0], [-1, 3], name="logits_squeeze"))
    decent_q.CreateQuantizeEvaluationGraph(config=config)
    names = {op.name for op in graph.get_operations()}
  assert "net_out/aquant" in names and "logits_squeeze/aquant" not in names
  assert graph.get_operation_by_name("net_out").inputs[0].op.name == "net_out/aquant"


# AMCT retrain ---------------------------------------------------------------------------------

@pytest.mark.parametrize("order", ORDERS)
def test_amct_retrain_learns_its_clips_in_every_order(order, tmp_path):
  """ULQ sits on each layer's input, which the loss reads in any order; the clip initialises
  in the backward pass, which needs no UPDATE_OPS."""
  config, record_file = str(tmp_path / "config.json"), str(tmp_path / "record.txt")
  with tf.Graph().as_default() as graph:
    model_fn(is_training=True)
  amct.create_quant_retrain_config(config, graph)
  checkpoint, _ = _train(order, lambda: amct.create_quant_retrain_model(
      v1.get_default_graph(), config, record_file), str(tmp_path))
  reader = tf.train.load_checkpoint(checkpoint)
  for layer in ("conv1/Conv2D", "logits/MatMul"):
    assert reader.get_tensor(layer + "/ULQ/initialized")
  with tf.Graph().as_default() as evaluation:
    model_fn(is_training=False)
    ops = amct.create_quant_retrain_model(evaluation, config, record_file)
    with v1.Session() as sess:
      v1.train.Saver().restore(sess, checkpoint)
      sess.run(ops[-1])
  assert os.path.exists(record_file)
