"""QAT under tf.distribute in graph mode: MirroredStrategy on two logical CPU devices, and
MultiWorkerMirroredStrategy with two local worker processes.

The logical devices must be configured before TensorFlow initialises, which the rest of the
suite has done by now, so the graphs are built and trained in fresh processes (this file run
as a script) that print their measurements as JSON; the tests check them.
"""

import json
import os
import socket
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from qat_rewrite import datasets, distribute, quantize

DEVICES = ["/cpu:0", "/cpu:1"]
STEPS = 250  # as tests/test_mnist_end_to_end.py: global batch 64, quant_delay 50


def _model(images, training):
  net = tf.compat.v1.layers.conv2d(images, 8, 5, strides=2, use_bias=False, name="conv")
  net = tf.nn.relu(tf.compat.v1.layers.batch_normalization(net, training=training, name="bn"))
  net = tf.compat.v1.layers.flatten(net)
  return tf.compat.v1.layers.dense(net, 10, name="logits")


def _replica_batch(images, labels):
  """This replica's share of the global batch (every other example)."""
  ctx = tf.distribute.get_replica_context()
  n, i = ctx.num_replicas_in_sync, ctx.replica_id_in_sync_group
  return images[i::n], labels[i::n]


def _batches(x_train, y_train, steps, seed=0):
  rng = np.random.RandomState(seed)
  for _ in range(steps):
    batch = rng.randint(0, len(x_train), 64)
    yield x_train[batch], y_train[batch]


def _range_variables(graph):
  with graph.as_default():
    return [v for v in tf.compat.v1.global_variables() if "_quant/" in v.name]


def _components(var):
  return list(var.values) if hasattr(var, "values") else [var]


def _structure(x_train, y_train):
  """The rewrite called between the towers and the optimizer, in cross-replica context."""
  graph = tf.Graph()
  with graph.as_default(), tf.distribute.MirroredStrategy(DEVICES).scope() as strategy:
    images = tf.compat.v1.placeholder(tf.float32, [None, 28, 28, 1])
    labels = tf.compat.v1.placeholder(tf.int64, [None])

    def tower_loss():
      x, y = _replica_batch(images, labels)
      return tf.compat.v1.losses.sparse_softmax_cross_entropy(y, _model(x, True))

    losses = strategy.extended.call_for_each_replica(tower_loss)
    report = quantize.create_training_graph()
    optimizer = tf.compat.v1.train.AdamOptimizer(3e-3)
    train_op = strategy.group(strategy.extended.call_for_each_replica(optimizer.minimize,
                                                                      args=(losses,)))
    fake_quants = {op.name: [t.op.name for t in op.inputs[1:]] for op in graph.get_operations()
                   if op.type.startswith("FakeQuant") and not op.name.startswith(
                       ("gradients", "replica_1/gradients"))}
    variables = _range_variables(graph)
    with tf.compat.v1.Session() as sess:
      sess.run(tf.compat.v1.global_variables_initializer())
      for x, y in _batches(x_train, y_train, 5):
        sess.run(train_op, {images: x, labels: y})
      values = {v.op.name: [sess.run(c).tolist() for c in _components(v)] for v in variables}
  return dict(layers=[layer.layer for layer in report.layers], fake_quants=fake_quants,
              variables={v.op.name: [type(v).__name__, str(v.aggregation),
                                     [c.device for c in _components(v)]] for v in variables},
              values=values)


def _train(strategy, x_train, y_train, x_test, y_test, checkpoint):
  """Single-device code, unchanged, as the replica function: the rewrite runs once for all."""
  graph = tf.Graph()
  with graph.as_default():
    tf.compat.v1.set_random_seed(0)
    images = tf.compat.v1.placeholder(tf.float32, [None, 28, 28, 1])
    labels = tf.compat.v1.placeholder(tf.int64, [None])

    def step():
      x, y = _replica_batch(images, labels) if strategy else (images, labels)
      loss = tf.compat.v1.losses.sparse_softmax_cross_entropy(y, _model(x, True))
      quantize.create_training_graph(quant_delay=50)
      with tf.control_dependencies(tf.compat.v1.get_collection(tf.compat.v1.GraphKeys.UPDATE_OPS)):
        return tf.compat.v1.train.AdamOptimizer(3e-3).minimize(loss)

    if strategy is None:
      train_op = step()
    else:
      with strategy.scope():
        train_op = strategy.group(strategy.extended.call_for_each_replica(step))
    with tf.compat.v1.Session() as sess:
      sess.run(tf.compat.v1.global_variables_initializer())
      for x, y in _batches(x_train, y_train, STEPS):
        sess.run(train_op, {images: x, labels: y})
      spread = max(float(np.max(np.abs(sess.run(c) - sess.run(_components(v)[0]))))
                   for v in _range_variables(graph) for c in _components(v))
      tf.compat.v1.train.Saver().save(sess, checkpoint)

  eval_graph = tf.Graph()  # one device, as a model is evaluated and exported
  with eval_graph.as_default():
    images = tf.compat.v1.placeholder(tf.float32, [None, 28, 28, 1])
    predictions = tf.argmax(_model(images, False), 1)
    quantize.create_eval_graph()
    with tf.compat.v1.Session() as sess:
      tf.compat.v1.train.Saver().restore(sess, checkpoint)
      accuracy = float(np.mean(sess.run(predictions, {images: x_test}) == y_test))
  return dict(accuracy=accuracy, spread=spread)


def _worker(index, ports):
  """One worker of a two-process MultiWorkerMirroredStrategy job: ten steps, then its ranges."""
  cluster = {"worker": ["localhost:%s" % port for port in ports]}
  os.environ["TF_CONFIG"] = json.dumps({"cluster": cluster,
                                        "task": {"type": "worker", "index": index}})
  tf.compat.v1.disable_eager_execution()
  strategy = tf.compat.v1.distribute.experimental.MultiWorkerMirroredStrategy()
  config = strategy.update_config_proto(tf.compat.v1.ConfigProto())
  server = tf.distribute.Server(tf.train.ClusterSpec(cluster), job_name="worker",
                                task_index=index, config=config)
  (x_train, y_train), _ = datasets.load_mnist()
  graph = tf.Graph()
  with graph.as_default():
    images = tf.compat.v1.placeholder(tf.float32, [None, 28, 28, 1])
    labels = tf.compat.v1.placeholder(tf.int64, [None])

    def step():
      loss = tf.compat.v1.losses.sparse_softmax_cross_entropy(labels, _model(images, True))
      distribute.run_once(quantize.create_training_graph)
      with tf.control_dependencies(tf.compat.v1.get_collection(tf.compat.v1.GraphKeys.UPDATE_OPS)):
        return tf.compat.v1.train.AdamOptimizer(3e-3).minimize(loss)

    with strategy.scope():
      train_op = strategy.group(strategy.extended.call_for_each_replica(step))
    with tf.compat.v1.Session(target=server.target, config=config) as sess:
      sess.run(tf.compat.v1.global_variables_initializer())
      for x, y in _batches(x_train, y_train, 10, seed=index):  # each worker its own data
        sess.run(train_op, {images: x, labels: y})
      print("RESULT " + json.dumps({v.op.name: sess.run(v).tolist()
                                    for v in _range_variables(graph)}))


def main(workdir):
  cpu = tf.config.list_physical_devices("CPU")[0]
  tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
  tf.compat.v1.disable_eager_execution()
  (x_train, y_train), (x_test, y_test) = datasets.load_mnist()
  result = dict(structure=_structure(x_train, y_train))
  result["single"] = _train(None, x_train, y_train, x_test, y_test,
                            os.path.join(workdir, "single"))
  result["mirrored"] = _train(tf.distribute.MirroredStrategy(DEVICES), x_train, y_train, x_test,
                              y_test, os.path.join(workdir, "mirrored"))
  print("RESULT " + json.dumps(result))


@pytest.fixture(scope="module")
def measured(tmp_path_factory):
  workdir = tmp_path_factory.mktemp("distribute")
  env = dict(os.environ, TF_USE_LEGACY_KERAS="1", TF_CPP_MIN_LOG_LEVEL="2")
  done = subprocess.run([sys.executable, __file__, str(workdir)], capture_output=True,
                        text=True, env=env, timeout=300, check=False)
  lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
  assert done.returncode == 0 and lines, done.stderr[-3000:]
  return json.loads(lines[-1][len("RESULT "):])


def test_rewrite_quantizes_every_tower_with_one_shared_set_of_range_variables(measured):
  structure = measured["structure"]
  assert structure["layers"] == ["conv/Conv2D", "logits/MatMul",
                                 "replica_1/conv/Conv2D", "replica_1/logits/MatMul"]
  variables = structure["variables"]
  assert sorted(variables) == sorted(_range_variable_names())
  for kind, aggregation, devices in variables.values():
    assert kind == "MirroredVariable" and aggregation.endswith("ONLY_FIRST_REPLICA")
    assert [d[-5:] for d in devices] == ["CPU:0", "CPU:1"]
  # Each tower has its FakeQuant ops; the second tower's read the first tower's ranges.
  fake_quants = structure["fake_quants"]
  assert len(fake_quants) == 8
  for name, ranges in fake_quants.items():
    assert ranges == fake_quants[name.replace("replica_1/", "")]
    assert all(r.startswith(("conv/", "logits/")) for r in ranges)


def test_ranges_agree_across_replicas_after_training_steps(measured):
  for name, copies in measured["structure"]["values"].items():
    assert copies[0] == copies[1], name
  values = measured["structure"]["values"]
  assert values["conv/act_quant/local_step"][0] == 5.0  # one update per step, not per replica
  assert values["conv/act_quant/max"][0] not in (0.0, 6.0)  # learned, not the initial value
  assert measured["mirrored"]["spread"] == 0.0  # after the whole training run too


def test_mirrored_training_gives_single_device_accuracy(measured):
  single, mirrored = measured["single"]["accuracy"], measured["mirrored"]["accuracy"]
  assert single > 0.85 and mirrored > 0.85, (single, mirrored)
  assert abs(single - mirrored) <= 0.04, (single, mirrored)  # measured: within 0.02 over seeds


def test_run_once_outside_tf_distribute_is_a_plain_call():
  assert distribute.run_once(lambda a, b=0: a + b, 1, b=2) == 3


def _free_port():
  with socket.socket() as sock:
    sock.bind(("localhost", 0))
    return sock.getsockname()[1]


def test_multi_worker_ranges_agree_across_workers_fed_different_data():
  env = dict(os.environ, TF_USE_LEGACY_KERAS="1", TF_CPP_MIN_LOG_LEVEL="2")
  ports = "%d,%d" % (_free_port(), _free_port())
  workers = [subprocess.Popen([sys.executable, __file__, "worker", str(i), ports], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for i in range(2)]
  try:
    outputs = [w.communicate(timeout=300) for w in workers]
  finally:
    for w in workers:
      w.kill()
  ranges = []
  for (stdout, stderr), w in zip(outputs, workers):
    lines = [line for line in stdout.splitlines() if line.startswith("RESULT ")]
    assert w.returncode == 0 and lines, stderr[-3000:]
    ranges.append(json.loads(lines[-1][len("RESULT "):]))
  assert sorted(ranges[0]) == sorted(_range_variable_names())
  assert ranges[0] == ranges[1]  # averaged over workers before each update: bit-identical
  assert ranges[0]["conv/act_quant/max"] not in (0.0, 6.0)


def _range_variable_names():
  return ["%s/%s_quant/%s" % (layer, kind, name) for layer in ("conv", "logits")
          for kind, names in (("weights", ("min", "max")), ("act", ("min", "max", "local_step")))
          for name in names]


if __name__ == "__main__":
  if sys.argv[1] == "worker":
    _worker(int(sys.argv[2]), sys.argv[3].split(","))
  else:
    main(sys.argv[1])


def test_replica_named_scopes_share_ranges_only_under_a_strategy(caplog):
  """A user's own `replica_1/` scope, with no tf.distribute strategy active, is a layer like any
  other: its quantizers get range variables of their own, and the log says why."""
  graph = tf.Graph()
  with graph.as_default():
    images = tf.compat.v1.placeholder(tf.float32, [None, 28, 28, 1])
    first = _model(images, True)
    with tf.compat.v1.variable_scope("replica_1"):
      second = _model(images, True)
    tf.compat.v1.losses.mean_squared_error(first, second)
    quantize.create_training_graph()
    names = {v.op.name for v in _range_variables(graph)}
  assert {"conv/act_quant/min", "replica_1/conv/act_quant/min"} <= names
  assert "no strategy is active" in caplog.text
