"""Fuzz tests of the command line: mutated .pb files and mutated flag values.

README's contract for `qat_rewrite`: a bad flag exits with status 2 (argparse's SystemExit);
any other problem prints one line `qat_rewrite <verb>: error: ...` on stderr and returns 1,
with no traceback; outputs are written all or nothing. So whatever the bytes or the flags,
`cli.main` must return 0 with complete outputs, return 1 with one error line and nothing
written, or raise SystemExit(2) — never another exception, never a partial file.

derandomize=True and database=None make every CI run draw the same examples.
"""

import contextlib
import os
import shutil
import sys
import tempfile

import numpy as np
import pytest
import tensorflow as tf
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

import fuzz_models as fm
from qat_rewrite import cli

v1 = tf.compat.v1
SCALE = int(os.environ.get("QAT_REWRITE_FUZZ_SCALE", "1"))  # see test_fuzz_rewrite.py
MODEL = fm.Model(in_channels=2, resource=True, layers=(
    fm.Layer("conv", 3, 4, 1, "fused", False, "relu", "none"),
    fm.Layer("depthwise", 3, 4, 2, "none", True, "relu6", "none"),
))
CALIB = '''
import numpy as np

def input_fn(i):
  return {"x": np.random.RandomState(i).uniform(-1, 1, (2, 6, 6, 2)).astype(np.float32)}
'''


def fuzz(max_examples):
  return settings(max_examples=max_examples * SCALE, deadline=None, derandomize=True,
                  database=None,
                  suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                         HealthCheck.function_scoped_fixture])


@pytest.fixture(scope="module")
def workdir():
  """model.pb (the frozen MODEL), its output node, and fuzz_calib.py in one directory."""
  directory = tempfile.mkdtemp(prefix="fuzz_cli_")
  with tf.Graph().as_default() as graph:
    _, y = fm.build(MODEL, is_training=False)
    with v1.Session() as sess:
      sess.run(v1.global_variables_initializer())
      frozen = v1.graph_util.convert_variables_to_constants(sess, graph.as_graph_def(),
                                                            [y.op.name])
  with open(os.path.join(directory, "model.pb"), "wb") as f:
    f.write(frozen.SerializeToString())
  with open(os.path.join(directory, "fuzz_calib.py"), "w") as f:
    f.write(CALIB)
  names = [n.name for n in frozen.node if n.op in ("Conv2D", "DepthwiseConv2dNative", "Relu")]
  yield dict(dir=directory, pb=frozen.SerializeToString(), output=y.op.inputs[0].op.name,
             names=names)
  shutil.rmtree(directory, ignore_errors=True)


@contextlib.contextmanager
def _in(directory):
  """Runs in `directory` (the CLI finds --input_fn there), restoring the working directory."""
  before = os.getcwd()
  os.chdir(directory)
  sys.modules.pop("fuzz_calib", None)
  try:
    yield
  finally:
    os.chdir(before)


def _listing(path):
  """Every file under `path` with its bytes, or None if `path` does not exist."""
  if not os.path.exists(path):
    return None
  if os.path.isfile(path):
    return {"": open(path, "rb").read()}
  found = {}
  for root, _, names in os.walk(path):
    for name in names:
      full = os.path.join(root, name)
      found[os.path.relpath(full, path)] = open(full, "rb").read()
  return found


def _run(argv, capsys, outputs=(), record=True):
  """Runs the CLI and checks the error contract; returns (status, stderr).

  `outputs` are the paths the verb may write: on failure each must be as it was before.
  """
  capsys.readouterr()
  before = {path: _listing(path) for path in outputs}
  try:
    status = cli.main(argv)
  except SystemExit as e:  # argparse: usage errors only
    status = e.code
    assert status == 2, "SystemExit(%r) from %s" % (status, argv)
  _, err = capsys.readouterr()
  assert "Traceback" not in err, err
  if status == 1:
    errors = [line for line in err.splitlines() if line.startswith("qat_rewrite ")]
    assert len(errors) == 1 and ": error: " in errors[0], err
    assert err.strip().splitlines()[-1] == errors[0], err
  elif status == 0:
    for path in outputs:
      listing = _listing(path) or {}
      assert not [n for n in listing if n.endswith(".tmp")], listing  # no temporary files left
  else:  # argparse: the usage, then one error line
    assert status == 2, (status, err)
    assert err.strip().splitlines()[-1].startswith("qat_rewrite "), err
    assert ": error: " in err.strip().splitlines()[-1], err
  if status != 0:  # all or nothing: a failed run leaves every output as it was
    for path, listing in before.items():
      assert _listing(path) == listing, "%s changed by a failed run of %s" % (path, argv)
  lines = err.strip().splitlines()
  if record:  # hypothesis statistics (--hypothesis-show-statistics): which errors were reached
    words = [w for w in lines[-1].split()[:6] if "/" not in w] if lines and status else []
    event("exit %d: %s" % (status, " ".join(words)))
  return status, err


def _assert_graph_defs_parse(directory):
  """A successful run leaves only complete files: every .pb it wrote parses."""
  for name, data in (_listing(directory) or {}).items():
    if name.endswith(".pb"):
      v1.GraphDef.FromString(data)


# --- mutated GraphDef bytes -------------------------------------------------------------------

@st.composite
def mutated(draw, data):
  """`data` truncated, with bytes flipped, a slice deleted or random bytes inserted."""
  kind = draw(st.sampled_from(["truncate", "flip", "delete", "insert"]))
  data = bytearray(data)
  if kind == "truncate":
    return bytes(data[:draw(st.integers(0, len(data) - 1))])
  if kind == "flip":
    for _ in range(draw(st.integers(1, 4))):
      i = draw(st.integers(0, len(data) - 1))
      data[i] ^= draw(st.integers(1, 255))
    return bytes(data)
  start = draw(st.integers(0, len(data) - 1))
  if kind == "delete":
    return bytes(data[:start] + data[start + draw(st.integers(1, 64)):])
  return bytes(data[:start] + draw(st.binary(min_size=1, max_size=16)) + data[start:])


_OP_TYPES = ["Const", "Identity", "Conv2D", "Relu", "NoSuchOp", "Placeholder", "AddV2",
             "FusedBatchNormV3", "MatMul", "Reshape", ""]


@st.composite
def edited(draw, data, finite=False):
  """The GraphDef with one node edited: its op type, an input, its name, an attribute, or gone.
  These parse, so they reach the graph import and the rewrites, unlike most byte mutations."""
  graph_def = v1.GraphDef.FromString(data)
  node = graph_def.node[draw(st.integers(0, len(graph_def.node) - 1))]
  names = [n.name for n in graph_def.node]
  kind = draw(st.sampled_from(["op", "input", "name", "attr", "dtype", "remove", "duplicate",
                               "values", "values"]))
  consts = [n for n in graph_def.node if n.op == "Const"
            and n.attr["dtype"].type == tf.float32.as_datatype_enum]
  if kind == "values" and consts:  # weights of NaN, Inf, huge, zero or a wrong shape
    node = draw(st.sampled_from(consts))
    value = tf.make_ndarray(node.attr["value"].tensor)
    fills = [-1e30, 0.0, "shape"] + ([] if finite else [np.nan, np.inf])
    fill = draw(st.sampled_from(fills))
    value = np.zeros(value.size + 1, np.float32) if fill == "shape" else np.full_like(value, fill)
    node.attr["value"].tensor.CopyFrom(tf.make_tensor_proto(value))
  elif kind == "op":
    node.op = draw(st.sampled_from(_OP_TYPES))
  elif kind == "input":
    value = draw(st.sampled_from(names + ["nope", "x:3", "^x", ""]))
    if node.input and draw(st.booleans()):
      node.input[draw(st.integers(0, len(node.input) - 1))] = value
    else:
      node.input.append(value)
  elif kind == "name":
    node.name = draw(st.sampled_from(names + ["x", "renamed", ""]))
  elif kind == "attr" and node.attr:
    del node.attr[draw(st.sampled_from(sorted(node.attr)))]
  elif kind == "dtype":
    for key in ("T", "dtype"):
      if key in node.attr:
        node.attr[key].type = draw(st.sampled_from([tf.int32.as_datatype_enum,
                                                    tf.float16.as_datatype_enum,
                                                    tf.string.as_datatype_enum]))
  elif kind == "remove":
    graph_def.node.remove(node)
  else:
    graph_def.node.add().CopyFrom(node)
  return graph_def.SerializeToString()


VERBS = ["inspect", "inspect_dpu", "quantize", "quantize_ascend", "quantize_tflite"]


@fuzz(40)
@given(data=st.data(), verb=st.sampled_from(VERBS), structural=st.booleans())
def test_mutated_graph_files_give_a_result_or_one_error_line(workdir, capsys, data, verb,
                                                             structural):
  mutation = edited(workdir["pb"]) if structural else mutated(workdir["pb"])
  content = data.draw(mutation, label="content")
  scratch = tempfile.mkdtemp(dir=workdir["dir"])
  try:
    path = os.path.join(scratch, "mutated.pb")
    with open(path, "wb") as f:
      f.write(content)
    nodes = ["--input_nodes", "x", "--output_nodes", workdir["output"], "--input_shapes",
             "?,6,6,2"]
    out = os.path.join(scratch, "out")
    quantize = ["quantize", "--input_frozen_graph", path, "--input_fn", "fuzz_calib.input_fn",
                "--calib_iter", "1", "--output_dir", out] + nodes
    argv = {"inspect": ["inspect", "--input_frozen_graph", path],
            "inspect_dpu": ["inspect", "--input_frozen_graph", path] + nodes,
            "quantize": quantize,
            "quantize_ascend": quantize + ["--target", "ascend"],
            "quantize_tflite": quantize + ["--target", "tflite"]}[verb]
    with _in(workdir["dir"]):
      status, _ = _run(argv, capsys, [out])
    if status == 0 and verb.startswith("quantize"):
      _assert_graph_defs_parse(out)
  finally:
    shutil.rmtree(scratch, ignore_errors=True)


def _with_weights(workdir, name, value):
  """model.pb's bytes with the float constant `name` filled with `value`."""
  graph_def = v1.GraphDef.FromString(workdir["pb"])
  node = next(n for n in graph_def.node if n.name == name)
  weights = tf.make_ndarray(node.attr["value"].tensor)
  node.attr["value"].tensor.CopyFrom(tf.make_tensor_proto(np.full_like(weights, value)))
  return graph_def.SerializeToString()


def _ascend_quantize(workdir, capsys, content):
  scratch = tempfile.mkdtemp(dir=workdir["dir"])
  try:
    path = os.path.join(scratch, "nan.pb")
    with open(path, "wb") as f:
      f.write(content)
    argv = ["quantize", "--input_frozen_graph", path, "--input_fn", "fuzz_calib.input_fn",
            "--calib_iter", "1", "--output_dir", os.path.join(scratch, "out"), "--input_nodes",
            "x", "--output_nodes", workdir["output"], "--input_shapes", "?,6,6,2",
            "--target", "ascend"]
    with _in(workdir["dir"]):
      return _run(argv, capsys, [os.path.join(scratch, "out")], record=False)
  finally:
    shutil.rmtree(scratch, ignore_errors=True)


def test_ascend_nan_activations_give_one_clean_error_line(workdir, capsys):
  """Found by the fuzz test: a py_func traceback ended up inside the error line."""
  _ascend_quantize(workdir, capsys, _with_weights(workdir, "l0/weights", np.nan))


def test_ascend_refuses_nan_weights(workdir, capsys):
  """Found by the fuzz test: NaN folded weights were cast into int8 with exit 0."""
  status, _ = _ascend_quantize(workdir, capsys,
                               _with_weights(workdir, "l0/BatchNorm/gamma", np.nan))
  assert status == 1


# --- mutated flag values ----------------------------------------------------------------------

_TEXT = st.text(alphabet=st.sampled_from(list("ab/_:,?-1 0x9.") + ["\u00e9", "\t"]), max_size=12)


def _names(workdir):
  """A node-list flag: real names, near misses, separators, junk."""
  real = ["x", workdir["output"]] + workdir["names"]
  return st.one_of(st.sampled_from(real), _TEXT,
                   st.lists(st.sampled_from(real + ["", " ", "nope"]), min_size=1, max_size=3)
                   .map(",".join))


def _entries(workdir):
  """nodes_bit / nodes_method entries: name:value with real or junk parts."""
  entry = st.builds("{}:{}".format, st.sampled_from(workdir["names"] + ["nope", ""]),
                    st.sampled_from(["0", "1", "2", "8", "17", "-1", "x", ""]))
  return st.one_of(_TEXT, st.lists(entry, min_size=1, max_size=2).map(",".join))


def _shapes():
  dims = st.sampled_from(["?", "-1", "None", "2", "6", "0", "-3", "x", ""])
  shape = st.lists(dims, min_size=0, max_size=5).map(",".join)
  return st.one_of(st.just("?,6,6,2"), shape, st.lists(shape, min_size=2, max_size=2).map(":".join),
                   _TEXT)


def _int_text():
  return st.one_of(st.integers(-3, 40).map(str), _TEXT)


@st.composite
def quantize_flags(draw, workdir):
  """The valid quantize command with 1..3 flags replaced by drawn values."""
  flags = {"--input_nodes": "x", "--output_nodes": workdir["output"],
           "--input_shapes": "?,6,6,2", "--calib_iter": "1"}
  choices = {"--input_nodes": _names(workdir), "--output_nodes": _names(workdir),
             "--ignore_nodes": _names(workdir), "--input_shapes": _shapes(),
             "--weight_bit": _int_text(), "--activation_bit": _int_text(),
             "--method": _int_text(), "--calib_iter": st.integers(-1, 2).map(str),
             "--align_concat": _int_text(), "--adjust_shift_bias": _int_text(),
             "--simulate_dpu": _int_text(), "--nodes_bit": _entries(workdir),
             "--nodes_method": _entries(workdir),
             "--target": st.sampled_from(["dpu", "ascend", "tflite", "gpu"]),
             "--range_method": st.sampled_from(["min_max", "percentile", "mse", "max"])}
  for name in draw(st.lists(st.sampled_from(sorted(choices)), min_size=1, max_size=3,
                            unique=True)):
    flags[name] = draw(choices[name], label=name)
  argv = ["quantize", "--input_frozen_graph", "model.pb", "--input_fn", "fuzz_calib.input_fn"]
  for name, value in flags.items():
    argv += [name + "=" + value]  # '=' keeps a value starting with '-' a value
  return argv


@fuzz(30)
@given(data=st.data(), existing=st.sampled_from(["none", "file", "old_output"]))
def test_mutated_flags_give_a_result_or_one_error_line(workdir, capsys, data, existing):
  """Also with an output_dir that is a file, or that holds an earlier deploy file."""
  argv = data.draw(quantize_flags(workdir), label="argv")
  scratch = tempfile.mkdtemp(dir=workdir["dir"])
  try:
    out = os.path.join(scratch, "out")
    if existing == "file":
      with open(out, "w") as f:
        f.write("mine")
    elif existing == "old_output":
      os.makedirs(out)
      for name in ("deploy_model.pb", "record.txt", "quantized_model.tflite"):
        with open(os.path.join(out, name), "w") as f:
          f.write("old")
    with _in(workdir["dir"]):
      status, err = _run(argv + ["--output_dir", out], capsys, [out])
    if existing != "none":
      assert status != 0, "an existing output was replaced without --overwrite: " + err
    if status == 0:
      _assert_graph_defs_parse(out)
  finally:
    shutil.rmtree(scratch, ignore_errors=True)


@fuzz(12)
@given(ranges=st.one_of(st.just("0,1"), _TEXT), to=st.sampled_from(["tflite", "onnx"]),
       inference=st.sampled_from(["int8", "uint8", "int4"]), names=st.data())
def test_export_flags_give_a_result_or_one_error_line(workdir, capsys, ranges, to, inference,
                                                      names):
  """model.pb is a float graph: export must refuse it (no FakeQuant ranges) in one line."""
  scratch = tempfile.mkdtemp(dir=workdir["dir"])
  try:
    out = os.path.join(scratch, "model." + to)
    argv = ["export", "--input_frozen_graph", "model.pb", "--to", to,
            "--input_nodes=" + names.draw(_names(workdir), label="input_nodes"),
            "--output_nodes=" + names.draw(_names(workdir), label="output_nodes"),
            "--input_ranges=" + ranges, "--inference_type", inference, "--output_file", out]
    with _in(workdir["dir"]):
      _run(argv, capsys, [out])
  finally:
    shutil.rmtree(scratch, ignore_errors=True)


def test_the_unmutated_command_succeeds(workdir, capsys):
  """The fuzzed commands start from one that works, so failures above come from the mutation."""
  scratch = tempfile.mkdtemp(dir=workdir["dir"])
  try:
    out = os.path.join(scratch, "out")
    argv = ["quantize", "--input_frozen_graph", "model.pb", "--input_fn", "fuzz_calib.input_fn",
            "--input_nodes", "x", "--output_nodes", workdir["output"], "--input_shapes",
            "?,6,6,2", "--calib_iter", "1", "--output_dir", out]
    with _in(workdir["dir"]):
      status, err = _run(argv, capsys, [out], record=False)
    assert status == 0, err
    assert sorted(os.listdir(out)) == ["deploy_model.pb", "quantize_eval_model.pb",
                                       "quantize_eval_model_fixneuron.pb", "quantize_info.txt"]
    _assert_graph_defs_parse(out)
  finally:
    shutil.rmtree(scratch, ignore_errors=True)
