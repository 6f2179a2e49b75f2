"""Tensor decomposition (AMCT's auto_decomposition + decompose_graph): the Tucker-2 math and
its rank rule, the files written, the graph change on tf.layers / slim / tf_keras models with
resource and ref variables, the QAT front ends on the result, and bad input."""

import json
import os

import numpy as np
import pytest
import tensorflow as tf

from qat_rewrite import amct
from qat_rewrite.amct import tensor_decompose
from qat_rewrite.compat import install_tf_slim_shim
from qat_rewrite.decompose import measure, tucker
from qat_rewrite.graph.view import variable_source

v1 = tf.compat.v1
SIZE = 12
X = np.random.RandomState(1).rand(4, SIZE, SIZE, 3).astype(np.float32)


def decaying_kernel(shape, seed=0, decay=4.0):
  """A random kernel whose channel spectra decay, as trained kernels' do."""
  rng = np.random.RandomState(seed)
  kh, kw, c_in, c_out = shape
  w = rng.standard_normal(shape).astype(np.float32)
  w *= np.exp(-np.arange(c_in) / decay)[None, None, :, None] ** 0.5
  w *= np.exp(-np.arange(c_out) / (2 * decay))[None, None, None, :] ** 0.5
  q_in = np.linalg.qr(rng.standard_normal((c_in, c_in)))[0]
  q_out = np.linalg.qr(rng.standard_normal((c_out, c_out)))[0]
  return np.einsum("hwio,ai,bo->hwab", w, q_in, q_out).astype(np.float32)


def reconstruct(t):
  return np.einsum("ia,hwab,bo->hwio", t.first[0, 0], t.core, t.last[0, 0])


# The math -----------------------------------------------------------------------------------

def test_rank_rule_bounds_the_kernel_error_and_the_output_error_follows_it():
  kernel = decaying_kernel((3, 3, 48, 64))
  for max_error in (0.1, 0.3):
    t = tucker.decompose(kernel, max_error)
    exact = np.linalg.norm(reconstruct(t) - kernel) / np.linalg.norm(kernel)
    assert t.kernel_error == pytest.approx(exact, rel=1e-3, abs=1e-5)
    assert t.kernel_error <= max_error
    out = measure.output_error(kernel, t, stride=1, size=24)
    assert out == pytest.approx(t.kernel_error, rel=0.25)
  looser = tucker.decompose(kernel, 0.3)
  tighter = tucker.decompose(kernel, 0.1)
  assert looser.core.shape[2:] < tighter.core.shape[2:] or looser.core.size < tighter.core.size
  assert looser.core.shape[2] % tucker.RANK_MULTIPLE == 0


def test_full_rank_reproduces_the_conv_within_1e_4():
  kernel = np.random.RandomState(3).standard_normal((5, 5, 16, 24)).astype(np.float32)
  t = tucker.decompose(kernel, ranks=(16, 24))
  assert t.kernel_error < 1e-4
  for stride in (1, 2):
    assert measure.output_error(kernel, t, stride=stride) < 1e-4


def test_flops_count_the_first_1x1_at_input_resolution():
  before, after = measure.flops((3, 3, 64, 64), (16, 16), (8, 8), stride=2)
  assert before == 9 * 64 * 64 * 64
  assert after == (64 * 16 * 4 + 9 * 16 * 16 + 16 * 64) * 64


# Models ---------------------------------------------------------------------------------------

def build(kind, x, training=False, width=32):
  """A small CNN: a 3-channel stem conv (not worth decomposing), a 3x3 conv + bias (or BN),
  a stride-2 3x3 conv + BN, and a 1x1 conv (not eligible)."""
  if kind == "slim":
    install_tf_slim_shim()
    import tf_slim as slim  # pylint: disable=import-outside-toplevel
    with slim.arg_scope([slim.conv2d], padding="SAME"), v1.variable_scope("net"):
      x = slim.conv2d(x, 16, 3, scope="c0")
      x = slim.conv2d(x, width, 3, scope="c1")
      x = slim.conv2d(x, width, 3, stride=2, normalizer_fn=slim.batch_norm,
                      normalizer_params={"is_training": training}, scope="c2")
      x = slim.conv2d(x, 8, 1, scope="c3")
    return v1.layers.flatten(x)
  if kind == "keras":
    import tf_keras  # pylint: disable=import-outside-toplevel
    layers = tf_keras.layers
    x = layers.Conv2D(16, 3, padding="same", activation="relu", name="c0")(x)
    x = layers.Conv2D(width, 3, padding="same", activation="relu", name="c1")(x)
    x = layers.Conv2D(width, 3, strides=2, padding="same", use_bias=False, name="c2")(x)
    x = layers.BatchNormalization(name="c2_bn")(x, training=training)
    x = layers.Conv2D(8, 1, name="c3")(tf.nn.relu(x))
    return v1.layers.flatten(x)
  with v1.variable_scope("net", use_resource=(kind != "ref")):
    x = tf.nn.relu(v1.layers.conv2d(x, 16, 3, padding="same", name="c0"))
    x = tf.nn.relu(v1.layers.conv2d(x, width, 3, padding="same", name="c1"))
    x = v1.layers.conv2d(x, width, 3, strides=2, padding="same", use_bias=False, name="c2")
    x = tf.nn.relu(v1.layers.batch_normalization(x, training=training, name="c2_bn"))
    x = v1.layers.conv2d(x, 8, 1, name="c3")
  return v1.layers.flatten(x)


def conv_names(kind):
  prefix = "" if kind == "keras" else "net/"
  return prefix + "c1/Conv2D", prefix + "c2/Conv2D"


def save_float(directory, kind, width=32, seed=0):
  """A float checkpoint (random weights, non-trivial BN statistics) and its outputs on X."""
  with tf.Graph().as_default():
    v1.set_random_seed(seed)
    x = v1.placeholder(tf.float32, [None, SIZE, SIZE, 3], name="x")
    y = tf.identity(build(kind, x, width=width), name="y")
    with v1.Session() as sess:
      sess.run(v1.global_variables_initializer())
      for var in v1.global_variables():
        if "moving_variance" in var.op.name:
          sess.run(var.assign(tf.fill(var.shape, 2.0)))
      weights = {variable_source(tf.compat.v1.get_default_graph().get_operation_by_name(n)
                                 .inputs[1]).name for n in conv_names(kind)}
      for var in v1.global_variables():
        if var.op.name in weights:  # trained kernels' spectra decay; random ones' do not
          sess.run(var.assign(0.1 * decaying_kernel(var.shape.as_list(), seed, decay=2.0)))
      ref = sess.run(y, {x: X})
      prefix = os.path.join(str(directory), "float_%s" % kind)
      v1.train.Saver().save(sess, prefix)
  return prefix, ref


def run_meta(prefix):
  with tf.Graph().as_default() as graph, v1.Session() as sess:
    v1.train.import_meta_graph(prefix + ".meta").restore(sess, prefix)
    return sess.run(graph.get_tensor_by_name("y:0"), {graph.get_tensor_by_name("x:0"): X})


def graph_state(graph):
  return (len(graph.get_operations()),
          {k: [getattr(v, "name", v) for v in graph.get_collection(k)]
           for k in graph.get_all_collection_keys()})


@pytest.fixture(scope="module")
def decomposed(tmp_path_factory):
  """auto_decomposition of the tf.layers model at full rank for c1 and the rule for c2."""
  d = tmp_path_factory.mktemp("decomposed")
  prefix, ref = save_float(d, "resource")
  save = str(d / "out" / "model")
  names = amct.auto_decomposition(prefix + ".meta", prefix, save, max_error=0.3,
                                  ranks={"net/c1/Conv2D": (16, 32)})
  return {"dir": d, "float": prefix, "ref": ref, "save": save, "names": names}


def test_auto_decomposition_writes_the_model_and_a_json_record(decomposed):
  files = sorted(os.listdir(decomposed["dir"] / "out"))
  assert files == ["checkpoint", "model.data-00000-of-00001", "model.index", "model.json",
                   "model.meta"]
  assert decomposed["names"] == [
      "net/c%d/%s/Conv2D" % (i, c) for i in (1, 2)
      for c in ("decom_first", "decom_core", "decom_last")]
  with open(decomposed["save"] + ".json") as f:
    record = json.load(f)
  assert [layer["conv"] for layer in record["decomposed"]] == ["net/c1/Conv2D", "net/c2/Conv2D"]
  rows = {row["conv"]: row for row in record["report"]}
  assert rows["net/c0/Conv2D"]["decision"] == "left alone"
  assert "3 input and 16 output channels" in rows["net/c0/Conv2D"]["reason"]
  assert "kernel 1x1" in rows["net/c3/Conv2D"]["reason"]
  assert rows["net/c1/Conv2D"]["ranks"] == [16, 32]
  assert rows["net/c1/Conv2D"]["output_error"] < 1e-4
  c2 = rows["net/c2/Conv2D"]
  assert c2["kernel_error"] <= 0.3 and c2["flop_reduction"] >= 1.5
  assert c2["output_error"] == pytest.approx(c2["kernel_error"], rel=0.35)
  reader = tf.train.load_checkpoint(decomposed["save"])
  keys = set(reader.get_variable_to_shape_map())
  assert "net/c2/kernel" not in keys and "net/c2/decom_core/kernel" in keys
  assert reader.get_tensor("net/c1/decom_core/kernel").shape == (3, 3, 16, 32)


def test_decomposed_model_follows_the_original(decomposed):
  out = run_meta(decomposed["save"])
  ref = decomposed["ref"]
  error = np.linalg.norm(out - ref) / np.linalg.norm(ref)
  assert 0 < error < 0.5  # c2 keeps ~20 % kernel error; BN and c3 carry it to the output


def test_decomposed_conv_in_the_graph_has_the_error_the_rank_predicts(tmp_path):
  white = np.random.RandomState(5).standard_normal((8, SIZE, SIZE, 32)).astype(np.float32)
  with tf.Graph().as_default():
    x = v1.placeholder(tf.float32, [None, SIZE, SIZE, 32], name="x")
    kernel = v1.get_variable("conv/kernel", initializer=decaying_kernel((3, 3, 32, 64)))
    y = tf.nn.conv2d(x, kernel, 1, "SAME", name="conv/Conv2D")
    y = tf.identity(y, name="y")
    flat = v1.get_variable("flat/kernel", initializer=np.random.RandomState(2).standard_normal(
        (3, 3, 64, 64)).astype(np.float32))  # a white kernel: no rank saves enough
    tf.nn.conv2d(y, flat, 1, "SAME", name="flat/Conv2D")
    with v1.Session() as sess:
      sess.run(v1.global_variables_initializer())
      ref = sess.run(y, {x: white})
      v1.train.Saver().save(sess, str(tmp_path / "one"))
  names = amct.auto_decomposition(str(tmp_path / "one.meta"), str(tmp_path / "one"),
                                  str(tmp_path / "dec"), max_error=0.2)
  row, flat_row = names.report
  assert row["decision"] == "decomposed" and row["kernel_error"] <= 0.2
  assert flat_row["decision"] == "left alone"
  assert flat_row["reason"].startswith("FLOP reduction") and "below 1.50x" in flat_row["reason"]
  with tf.Graph().as_default() as graph, v1.Session() as sess:
    v1.train.import_meta_graph(str(tmp_path / "dec.meta")).restore(sess, str(tmp_path / "dec"))
    out = sess.run("y:0", {"x:0": white})
  error = np.linalg.norm(out - ref) / np.linalg.norm(ref)
  assert error == pytest.approx(row["kernel_error"], rel=0.2)


@pytest.mark.parametrize("kind", ["resource", "ref", "slim", "keras"])
def test_decompose_graph_and_restore_gives_the_written_models_outputs(tmp_path, kind):
  prefix, ref = save_float(tmp_path, kind)
  save = str(tmp_path / "dec")
  first, second = conv_names(kind)
  names = amct.auto_decomposition(prefix + ".meta", prefix, save, max_error=0.3,
                                  ranks={first: (16, 32)})
  assert {n.rsplit("/", 2)[0] + "/Conv2D" for n in names} == {first, second}
  written = run_meta(save)
  with tf.Graph().as_default() as graph:
    x = v1.placeholder(tf.float32, [None, SIZE, SIZE, 3], name="x")
    y = build(kind, x)
    weight = graph.get_operation_by_name(first).inputs[1]
    old_type = weight.op.inputs[0].op.type
    assert amct.decompose_graph(save) == names
    new_var = graph.get_operation_by_name(names[0]).inputs[1].op.inputs[0].op
    assert new_var.type == old_type  # VarHandleOp stays resource, VariableV2 stays ref
    saved = {v.op.name for v in v1.global_variables()}
    assert first.replace("Conv2D", "decom_core/kernel") in saved
    assert first.replace("Conv2D", "kernel" if kind != "slim" else "weights") not in saved
    with v1.Session() as sess:
      v1.train.Saver().restore(sess, save)
      out = sess.run(y, {x: X})
  np.testing.assert_allclose(out, written, rtol=1e-5, atol=1e-6)
  assert 0 < np.linalg.norm(out - ref) / np.linalg.norm(ref) < 0.5


# QAT front ends on the decomposed training graph ---------------------------------------------

def _training_graph(save):
  graph = tf.Graph()
  with graph.as_default():
    v1.set_random_seed(0)
    x = v1.placeholder(tf.float32, [None, SIZE, SIZE, 3], name="x")
    y = build("resource", x, training=True)
    names = amct.decompose_graph(save)
  return graph, names, y


def _check_new_convs_quantized(graph, names):
  for name in names:
    conv = graph.get_operation_by_name(name)
    assert variable_source(conv.inputs[1]) is None, name  # a quantizer reads the kernel


def _restore_and_train_one_step(graph, y, save):
  """Init, restore the decomposed weights by name, one optimizer step: nothing may read the
  replaced (uninitialised, unsaved) kernels."""
  with graph.as_default():
    keys = set(tf.train.load_checkpoint(save).get_variable_to_shape_map())
    model_vars = [v for v in v1.global_variables() if v.op.name in keys]
    train = v1.train.AdamOptimizer(1e-3).minimize(tf.reduce_mean(tf.square(y)))
    with v1.Session() as sess:
      sess.run(v1.global_variables_initializer())
      v1.train.Saver(model_vars).restore(sess, save)
      before = sess.run(y, {"x:0": X})
      sess.run([train, v1.get_collection(v1.GraphKeys.UPDATE_OPS)], {"x:0": X})
  assert np.isfinite(before).all()


def test_contrib_quantize_runs_on_the_decomposed_graph(decomposed):
  from qat_rewrite import quantize  # pylint: disable=import-outside-toplevel
  graph, names, y = _training_graph(decomposed["save"])
  quantize.create_training_graph(graph)
  _check_new_convs_quantized(graph, names)
  _restore_and_train_one_step(graph, y, decomposed["save"])


def test_decent_q_runs_on_the_decomposed_graph(decomposed):
  from qat_rewrite import decent_q  # pylint: disable=import-outside-toplevel
  graph, names, y = _training_graph(decomposed["save"])
  output = graph.get_operation_by_name("flatten/Reshape").name
  decent_q.CreateQuantizeTrainingGraph(graph, decent_q.QuantizeConfig(
      input_nodes=["x"], output_nodes=[output], input_shapes=[[-1, SIZE, SIZE, 3]]))
  _check_new_convs_quantized(graph, names)
  _restore_and_train_one_step(graph, y, decomposed["save"])


def test_amct_retrain_runs_on_the_decomposed_graph(decomposed, tmp_path):
  graph, names, y = _training_graph(decomposed["save"])
  config, record = str(tmp_path / "config.json"), str(tmp_path / "record.txt")
  amct.create_quant_retrain_config(config, graph)
  with open(config) as f:
    text = f.read()
  assert all(n in text for n in names) and '"net/c1/Conv2D"' not in text
  amct.create_quant_retrain_model(graph, config, record)
  _check_new_convs_quantized(graph, names)
  _restore_and_train_one_step(graph, y, decomposed["save"])


# Bad input ---------------------------------------------------------------------------------------

def test_checkpoint_of_another_model_is_refused_and_nothing_is_written(tmp_path):
  prefix, _ = save_float(tmp_path, "resource")
  other, _ = save_float(tmp_path / "other", "resource", width=24)
  with pytest.raises(ValueError, match="does not belong.*net/c1/kernel has shape"):
    amct.auto_decomposition(prefix + ".meta", other, str(tmp_path / "out" / "m"))
  assert not (tmp_path / "out").exists()
  with pytest.raises(ValueError, match="meta_path .*missing.meta.* does not exist"):
    amct.auto_decomposition(str(tmp_path / "missing.meta"), prefix, str(tmp_path / "m"))
  with pytest.raises(ValueError, match="not a checkpoint prefix"):
    amct.auto_decomposition(prefix + ".meta", prefix + "_x", str(tmp_path / "m"))


def _check_refused(save, build_fn, match):
  with tf.Graph().as_default() as graph:
    x = v1.placeholder(tf.float32, [None, SIZE, SIZE, 3], name="x")
    build_fn(x)
    before = graph_state(graph)
    with pytest.raises(ValueError, match=match):
      tensor_decompose.decompose_graph(save, graph)
    assert graph_state(graph) == before


def test_record_that_does_not_fit_leaves_the_graph_as_it_was(decomposed):
  save = decomposed["save"]
  _check_refused(save, lambda x: build("resource", x, width=24),
                 r"kernel of conv 'net/c1/Conv2D' has shape \[3, 3, 16, 24\]")
  def renamed(x):
    with v1.variable_scope("other"):
      build("resource", x)
  _check_refused(save, renamed, "conv 'net/c1/Conv2D' of the record is not in the graph")
  def twice(x):
    build("resource", x)
    amct.decompose_graph(save)
  _check_refused(save, twice, "was decomposed already")
  def with_optimizer(x):
    loss = tf.reduce_mean(build("resource", x))
    v1.train.GradientDescentOptimizer(0.1).minimize(loss)
  _check_refused(save, with_optimizer, "before building the optimizer")


def test_missing_or_pickle_record_is_refused(tmp_path):
  (tmp_path / "m.pkl").write_bytes(b"not loaded")
  with tf.Graph().as_default():
    with pytest.raises(ValueError, match="never loaded"):
      amct.decompose_graph(str(tmp_path / "m"))
    with pytest.raises(ValueError, match="does not exist"):
      amct.decompose_graph(str(tmp_path / "n"))
    (tmp_path / "bad.json").write_text("{")
    with pytest.raises(ValueError, match="not readable JSON"):
      amct.decompose_graph(str(tmp_path / "bad"))


def test_a_saver_made_before_decompose_graph_cannot_restore_the_decomposed_checkpoint(decomposed):
  """The documented order: decompose_graph, then the Saver (the early one lists the replaced
  kernels, which the decomposed checkpoint does not hold)."""
  with tf.Graph().as_default():
    x = v1.placeholder(tf.float32, [None, SIZE, SIZE, 3], name="x")
    build("resource", x)
    early = v1.train.Saver()
    amct.decompose_graph(decomposed["save"])
    late = v1.train.Saver()
    with v1.Session() as sess:
      with pytest.raises(tf.errors.NotFoundError, match="net/c1/kernel"):
        early.restore(sess, decomposed["save"])
      late.restore(sess, decomposed["save"])
