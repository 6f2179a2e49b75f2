"""Runs the README's int8 QAT flow on every model-zoo subject (tests/zoo_models.py).

Each model runs in a fresh subprocess (memory); one line per step, pass/fail and seconds, and on
failure the exception type, its message (first 300 characters) and the root cause (the last
exception of the __cause__/__context__ chain). A table at the end.

  a. train   build(is_training=True), experimental_create_training_graph(symmetric=True,
             per_channel_weights=True, quantize_inputs=True), loss on net_out built after
             the rewrite, Adam with control deps on UPDATE_OPS, 2 steps at batch 2, save
  b. eval    build(is_training=False), experimental_create_eval_graph(same options), restore,
             quantizer variables (`*/min`) of train vs eval
  c. tflite  qat_rewrite.export.to_tflite(eval graph, ..., ["net_in"], ["net_out"],
             checkpoint=...), fully integer or not, one interpreter invoke
  d. decent_q (slim nets only) loss built before CreateQuantizeTrainingGraph, 2 steps,
             CreateQuantizeEvaluationGraph + CreateQuantizeDeployGraph

  python benchmarks/zoo_probe.py [MODEL ...] [--timeout S] [--keep DIR] [--list]
"""

import argparse
import collections
import json
import re
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import traceback

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
RESULT_TAG = "@@ZOO_RESULT "
STEP_TAG = "@@ZOO_STEP "
STEP_START_TAG = "@@ZOO_STEP_START "
QUANT_OPTIONS = dict(symmetric=True, per_channel_weights=True, quantize_inputs=True)
BATCH = 2
STEPS = 2


# Parent: one subprocess per model, then the table ------------------------------------------

def parse_args(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("models", nargs="*", help="model names (default: all)")
  parser.add_argument("--timeout", type=float, default=1200, help="seconds per model")
  parser.add_argument("--max-rss-mb", type=int, default=11000,
                      help="kill a model's subprocess above this resident memory (MB)")
  parser.add_argument("--keep", help="keep checkpoints and exports under this directory")
  parser.add_argument("--list", action="store_true", help="list the models and exit")
  parser.add_argument("--child", help=argparse.SUPPRESS)
  parser.add_argument("--workdir", help=argparse.SUPPRESS)
  return parser.parse_args(argv)


def model_names():
  """{name: family} from tests/zoo_models.py's _SPECS, read without importing TensorFlow."""
  import ast  # pylint: disable=import-outside-toplevel
  with open(os.path.join(ROOT, "tests", "zoo_models.py")) as f:
    tree = ast.parse(f.read())
  for node in tree.body:
    if isinstance(node, ast.Assign) and getattr(node.targets[0], "id", None) == "_SPECS":
      return {spec.elts[0].value: spec.elts[1].value for spec in node.value.elts}
  raise RuntimeError("no _SPECS in tests/zoo_models.py")


def run_parent(args):
  families = model_names()
  if args.list:
    print("\n".join("%-17s %s" % item for item in families.items()))
    return 0
  unknown = [m for m in args.models if m not in families]
  if unknown:
    print("unknown model(s): %s; known: %s" % (", ".join(unknown), ", ".join(families)))
    return 2
  names = args.models or list(families)
  print(code_state(), flush=True)
  base = args.keep or tempfile.mkdtemp(prefix="zoo_probe_")
  results = []
  for name in names:
    workdir = os.path.join(base, name)
    os.makedirs(workdir, exist_ok=True)
    results.append(run_child(name, workdir, args.timeout, args.max_rss_mb))
  if not args.keep:
    shutil.rmtree(base, ignore_errors=True)
  print_table(results)
  return 0 if all(step["ok"] or step.get("skipped")
                  for r in results for step in r["steps"].values()) else 1


def code_state():
  """HEAD and the locally changed files under qat_rewrite/ (the tree may change between runs)."""
  def git(*cmd):
    try:
      return subprocess.run(["git"] + list(cmd), cwd=ROOT, capture_output=True, text=True,
                            check=False).stdout.strip()
    except OSError:
      return "?"
  changed = git("status", "--porcelain", "--", "qat_rewrite").splitlines()
  digest = git("diff", "HEAD", "--", "qat_rewrite")
  import hashlib  # pylint: disable=import-outside-toplevel
  return "code: HEAD %s, %d changed file(s) under qat_rewrite/ (diff sha1 %s), %s" % (
      git("rev-parse", "--short", "HEAD"), len(changed),
      hashlib.sha1(digest.encode()).hexdigest()[:10], time.strftime("%Y-%m-%d %H:%M:%S"))


def _rss_mb(pid):
  try:
    with open("/proc/%d/status" % pid) as f:
      for line in f:
        if line.startswith("VmRSS:"):
          return int(line.split()[1]) // 1024
  except OSError:
    pass
  return 0


def run_child(name, workdir, timeout, max_rss_mb):
  """Runs one model in a subprocess; streams its step lines; returns its result dict.

  The child reports each step as it ends, so a child killed for time or memory (RSS above
  max_rss_mb, checked twice a second: the machine is shared) keeps its finished steps, and the
  step it was in is recorded as failed."""
  env = dict(os.environ, TF_USE_LEGACY_KERAS="1", TF_CPP_MIN_LOG_LEVEL="3")
  cmd = [sys.executable, os.path.abspath(__file__), "--child", name, "--workdir", workdir]
  start = time.time()
  result = {"name": name, "steps": collections.OrderedDict(), "info": {}}
  current = {"step": "start", "since": start}
  killed = {}
  stderr_path = os.path.join(workdir, "stderr.txt")
  print("== %s" % name, flush=True)
  with open(stderr_path, "w") as stderr:
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=stderr, text=True, env=env,
                            cwd=ROOT)

    def watch():  # kills this child only
      peak = 0
      while proc.poll() is None:
        rss = _rss_mb(proc.pid)
        peak = max(peak, rss)
        killed["peak"] = peak
        if rss > max_rss_mb:
          killed["why"] = "RSS %d MB above --max-rss-mb %d" % (rss, max_rss_mb)
          proc.kill()
          return
        if time.time() - start > timeout:
          killed["why"] = "over --timeout %ds" % timeout
          proc.kill()
          return
        time.sleep(0.5)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    for line in proc.stdout:
      if line.startswith(STEP_START_TAG):
        current.update(step=line[len(STEP_START_TAG):].strip(), since=time.time())
      elif line.startswith(STEP_TAG):
        key, record, result["info"] = json.loads(line[len(STEP_TAG):])
        result["steps"][key] = record
      elif line.startswith(RESULT_TAG):
        result.update(json.loads(line[len(RESULT_TAG):]), done=True)
      else:
        print("  " + line.rstrip(), flush=True)
    proc.wait()
    watcher.join()
  if proc.returncode != 0 or not result.get("done"):
    with open(stderr_path) as f:
      tail = " ".join(f.read()[-400:].split())
    why = killed.get("why") or "exited with %s" % proc.returncode
    record = {"ok": False, "seconds": time.time() - current["since"],
              "error": "child killed in this step: %s; stderr tail: %s" % (why, tail),
              "root": "(itself)"}
    result["steps"][current["step"]] = record
    print("  %-11s FAIL %6.1fs\n      error: %s" % (current["step"], record["seconds"],
                                                   record["error"]), flush=True)
    result["info"]["rss_mb"] = max(result["info"].get("rss_mb", 0), killed.get("peak", 0))
  result["wall"] = time.time() - start
  return result


def print_table(results):
  print()
  print("| model | size | build s | a train | a2 retry | b eval | c tflite | d decent_q | rss MB "
        "| notes |")
  print("|---|---|---|---|---|---|---|---|---|---|")
  for r in results:
    info, steps = r.get("info", {}), r["steps"]

    def cell(key):
      s = steps.get(key)
      if s is None:
        return "-"
      return "%s %.0fs" % ("PASS" if s["ok"] else ("SKIP" if s.get("skipped") else "FAIL"),
                           s["seconds"])
    notes = []
    for key in steps:
      s = steps.get(key)
      if s and not s["ok"] and not s.get("skipped"):
        root = s.get("root", "(itself)")
        notes.append("%s: %s" % (key.split("_")[0], (s["error"] if root == "(itself)" else root)[:120]))
    if info.get("only_train") or info.get("only_eval"):
      notes.append("quantizers train-only %d, eval-only %d"
                   % (len(info.get("only_train", [])), len(info.get("only_eval", []))))
    print("| %s | %s | %s | %s | %s | %s | %s | %s | %s | %s |"
          % (r["name"], info.get("size", "?"), "%.1f" % info["build_s"] if "build_s" in info
             else "?", cell("a_train"), cell("a2_retry"), cell("b_eval"),
             cell("c_tflite") + ("; c2 " + cell("c2_ranges") if "c2_ranges" in steps else ""),
             cell("d_decent_q"),
             info.get("rss_mb", "?"), "; ".join(notes).replace("|", "/")))


# Child: the flow for one model -------------------------------------------------------------

def _progress(what):
  print("      .. %s (peak so far %d MB)" % (what, _peak_rss_mb()), flush=True)


def _placeholders_needed(op_or_tensor):
  """Names of the Placeholder ops that running `op_or_tensor` needs (inputs and control deps)."""
  start = getattr(op_or_tensor, "op", op_or_tensor)
  seen, stack, found = set(), [start], set()
  while stack:
    op = stack.pop()
    if op.name in seen:
      continue
    seen.add(op.name)
    if op.type in ("Placeholder", "PlaceholderV2"):
      found.add(op.name)
    stack.extend(t.op for t in op.inputs)
    stack.extend(op.control_inputs)
  return found


def _peak_rss_mb():
  import resource  # pylint: disable=import-outside-toplevel
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024


def _chain_root(err):
  root, seen = err, {id(err)}
  while True:
    nxt = root.__cause__ or root.__context__
    if nxt is None or id(nxt) in seen:
      return root
    seen.add(id(nxt))
    root = nxt


def _describe(err):
  text = "%s: %s" % (type(err).__name__, str(err)[:300])
  root = _chain_root(err)
  root_text = "%s: %s" % (type(root).__name__, str(root)[:300]) if root is not err else "(itself)"
  return text.replace("\n", " "), root_text.replace("\n", " ")


class Child:
  """Runs the steps for one model; `steps` and `info` go back to the parent as JSON."""

  def __init__(self, name, workdir):
    # Environment first: tf_keras, not Keras 3; quiet logs.
    os.environ["TF_USE_LEGACY_KERAS"] = "1"
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import warnings  # pylint: disable=import-outside-toplevel
    warnings.filterwarnings("ignore")
    import numpy as np  # pylint: disable=import-outside-toplevel
    import tensorflow as tf  # pylint: disable=import-outside-toplevel
    from absl import logging as absl_logging  # pylint: disable=import-outside-toplevel
    tf.get_logger().setLevel("ERROR")
    absl_logging.set_verbosity(absl_logging.ERROR)
    tf.compat.v1.disable_eager_execution()
    sys.path.insert(0, ROOT)
    sys.path.insert(0, os.path.join(ROOT, "tests"))
    import zoo_models  # pylint: disable=import-outside-toplevel
    self.np, self.tf, self.v1 = np, tf, tf.compat.v1
    self.spec = zoo_models.MODELS[name]
    self.workdir = workdir
    self.steps = collections.OrderedDict()
    self.info = {"size": self.spec.input_size, "family": self.spec.family}
    self.ckpt = None
    self.eval_graph = None
    self.restored = False
    rng = np.random.RandomState(0)
    size = self.spec.input_size
    self.batches = [(rng.uniform(0, 1, (BATCH, size, size, 3)).astype(np.float32),
                     rng.randint(0, self.spec.num_classes, BATCH).astype(np.int64))
                    for _ in range(STEPS)]

  def step(self, key, func):
    print(STEP_START_TAG + key, flush=True)
    start = time.time()
    record = {"ok": False}
    try:
      detail = func()
      record.update(ok=True, detail=detail or "")
    except SkipStep as skip:
      record.update(skipped=True, error=str(skip))
    except Exception as err:  # pylint: disable=broad-except  (the probe reports everything)
      record["error"], record["root"] = _describe(err)
      record["where"] = "".join(traceback.format_tb(err.__traceback__)[-2:])[-600:]
    record["seconds"] = time.time() - start
    record["peak_rss_mb"] = _peak_rss_mb()
    self.steps[key] = record
    status = "PASS" if record["ok"] else ("SKIP" if record.get("skipped") else "FAIL")
    line = "%-11s %s %6.1fs peak %5d MB" % (key, status, record["seconds"], record["peak_rss_mb"])
    if record["ok"]:
      line += "  " + record["detail"]
    elif record.get("skipped"):
      line += "  " + record["error"]
    else:
      line += "\n      error: %s\n      root:  %s" % (record["error"], record["root"])
    print(line, flush=True)
    self.info["rss_mb"] = record["peak_rss_mb"]
    print(STEP_TAG + json.dumps([key, record, self.info]), flush=True)

  # helpers

  def _op_count(self, graph):
    return len(graph.get_operations())

  def _quantizer_names(self, graph):
    return sorted(v.op.name for v in graph.get_collection(self.v1.GraphKeys.GLOBAL_VARIABLES)
                  if v.op.name.endswith("/min"))

  def _report_text(self, report):
    reasons = collections.Counter(re.sub(r"(?<![\w.:-])(?!True/False)[\w.:-]+/[\w/.:-]+", "<op>",
                                         f.reason)
                                  for f in report.float_ops)
    types = collections.Counter(f.type for f in report.float_ops)
    text = "layers %d, weights quantized %d, BN folded %d, quantizers %d, float ops %d" % (
        len(report.layers), len(report.quantized_weights), len(report.folded_batch_norms),
        report.quantizer_count, len(report.float_ops))
    if types:
      text += " (types: %s)" % ", ".join("%s %d" % kv for kv in types.most_common(6))
    if reasons:
      text += "\n      float reasons (%d distinct): " % len(reasons) + "; ".join(
          "%dx %s" % (n, r[:140]) for r, n in reasons.most_common(4))
    return text

  # a

  def train(self, filter_updates=False):
    """Step a. With filter_updates, the train op's control dependencies leave out the
    UPDATE_OPS that need a placeholder other than net_in (a retry after a 'must feed' error)."""
    tf, v1 = self.tf, self.v1
    from qat_rewrite import quantize  # pylint: disable=import-outside-toplevel
    graph = tf.Graph()
    with graph.as_default():
      t = time.time()
      images, out, _ = self.spec.build(is_training=True)
      self.info["build_s"] = time.time() - t
      before = self._op_count(graph)
      _progress("a: built, rewriting")
      t = time.time()
      report = quantize.experimental_create_training_graph(**QUANT_OPTIONS)
      rewrite_s = time.time() - t
      after = self._op_count(graph)
      labels = v1.placeholder(tf.int64, [None], name="labels")
      loss = v1.losses.sparse_softmax_cross_entropy(labels, out)
      updates = v1.get_collection(v1.GraphKeys.UPDATE_OPS)
      dropped = []
      if filter_updates:
        kept = []
        for update in updates:
          others = _placeholders_needed(update) - {images.op.name}
          (dropped if others else kept).append(update)
        updates = kept
        if not dropped:
          raise SkipStep("no UPDATE_OPS need another placeholder; nothing to retry")
      with tf.control_dependencies(updates):
        train_op = v1.train.AdamOptimizer(1e-4).minimize(loss)
      self.info["train_quantizers"] = self._quantizer_names(graph)
      params = sum(int(v.shape.num_elements()) for v in v1.trainable_variables())
      t = time.time()
      losses = []
      with v1.Session(graph=graph) as sess:
        _progress("a: rewritten, optimizer built, initializing")
        sess.run(v1.global_variables_initializer())
        _progress("a: training")
        step_s = []
        for x, y in self.batches:
          t_step = time.time()
          losses.append(float(sess.run([train_op, loss], {images: x, labels: y})[1]))
          step_s.append(time.time() - t_step)
        self.ckpt = v1.train.Saver().save(sess, os.path.join(self.workdir, "train", "model.ckpt"))
      train_s = time.time() - t
    if not all(self.np.isfinite(losses)):
      raise FloatingPointError("non-finite loss %s" % losses)
    self.info.update(train_ops_before=before, train_ops_after=after, train_rewrite_s=rewrite_s,
                     params_m=round(params / 1e6, 1))
    prefix = ""
    if dropped:
      names = [getattr(u, "name", str(u)) for u in dropped]
      prefix = ("left %d UPDATE_OPS out of the train op (they need another placeholder): %s%s\n"
                "      " % (len(names), ", ".join(names[:6]), " ..." if len(names) > 6 else ""))
    return prefix + ("build %.1fs, params %.1fM, ops %d -> %d, rewrite %.1fs, init+2 steps+save %.1fs "
            "(steps %s), loss %s\n      %s"
            % (self.info["build_s"], params / 1e6, before, after, rewrite_s, train_s,
               " + ".join("%.1fs" % x for x in step_s), ", ".join("%.3f" % l for l in losses),
               self._report_text(report)))

  # b

  def eval(self):
    tf, v1 = self.tf, self.v1
    from qat_rewrite import quantize  # pylint: disable=import-outside-toplevel
    graph = tf.Graph()
    with graph.as_default():
      t = time.time()
      images, out, _ = self.spec.build(is_training=False)
      build_s = time.time() - t
      before = self._op_count(graph)
      t = time.time()
      report = quantize.experimental_create_eval_graph(**QUANT_OPTIONS)
      rewrite_s = time.time() - t
      after = self._op_count(graph)
      eval_q = self._quantizer_names(graph)
      self.eval_graph = graph
      train_q = self.info.get("train_quantizers")
      diff = ""
      if train_q is not None:
        only_train = sorted(set(train_q) - set(eval_q))
        only_eval = sorted(set(eval_q) - set(train_q))
        self.info.update(only_train=only_train, only_eval=only_eval)
        diff = "quantizers train %d, eval %d, train-only %d, eval-only %d" % (
            len(train_q), len(eval_q), len(only_train), len(only_eval))
        for label, names in (("train-only", only_train), ("eval-only", only_eval)):
          if names:
            diff += "\n      %s: %s%s" % (label, ", ".join(names[:8]),
                                          " ... (+%d)" % (len(names) - 8) if len(names) > 8 else "")
      text = ("build %.1fs, ops %d -> %d, rewrite %.1fs, %s\n      %s"
              % (build_s, before, after, rewrite_s, diff, self._report_text(report)))
      print("      (eval rewrite done) " + text, flush=True)
      if self.ckpt is None:
        raise SkipStep("no training checkpoint to restore")
      with v1.Session(graph=graph) as sess:
        try:
          v1.train.Saver().restore(sess, self.ckpt)
        except tf.errors.NotFoundError as err:
          raise RestoreError("restore: key not found: %s" % str(err)[:600]) from err
        value = sess.run(out, {images: self.batches[0][0]})
      if not self.np.all(self.np.isfinite(value)):
        raise FloatingPointError("non-finite eval output")
      self.restored = True
      return "restored %s, eval output finite" % os.path.basename(os.path.dirname(self.ckpt))

  # c

  def tflite_input_range(self):
    """Step c again with input_ranges={"net_in": (0, 1)} (what the probe feeds), after c
    failed for want of a FakeQuant range on the input."""
    return self.tflite(input_ranges={"net_in": (0.0, 1.0)})

  def tflite(self, input_ranges=None):
    if self.eval_graph is None:
      raise SkipStep("needs the eval graph")
    from qat_rewrite import export  # pylint: disable=import-outside-toplevel
    path = os.path.join(self.workdir, "model.tflite")
    checkpoint, note = self.ckpt, ""
    if checkpoint is None or not self.restored:
      # Export coverage even when training or the restore failed: the eval graph's own
      # initial values (ranges [0, 0]... whatever the initializers give) in a fresh checkpoint.
      with self.eval_graph.as_default(), self.v1.Session(graph=self.eval_graph) as sess:
        sess.run(self.v1.global_variables_initializer())
        checkpoint = self.v1.train.Saver().save(
            sess, os.path.join(self.workdir, "eval_init", "model.ckpt"))
      note = " [checkpoint: the eval graph's initial values, the training one did not restore]"
      self.info["tflite_from_init"] = True
    try:
      result = export.to_tflite(self.eval_graph, path, ["net_in"], ["net_out"],
                                checkpoint=checkpoint, input_ranges=input_ranges)
    except export.NotFullyIntegerError as err:
      self.info["fully_integer"] = "no"
      raise NotFullyInteger("fully integer: no%s: %s" % (note, err)) from err
    except Exception as err:
      if note:
        raise ExportError("%s %s: %s" % (note.strip(), type(err).__name__, err)) from err
      raise
    self.info["fully_integer"] = "yes"
    invoke = self._invoke(path)
    return "fully integer: yes, %.2f MB, outputs %s, %s%s" % (
        result.size_bytes / 1e6, result.output_nodes, invoke, note)

  def _invoke(self, path):
    try:
      from ai_edge_litert.interpreter import Interpreter  # pylint: disable=import-outside-toplevel
    except ImportError:
      Interpreter = self.tf.lite.Interpreter  # pylint: disable=invalid-name
    interp = Interpreter(model_path=path, num_threads=1)
    interp.allocate_tensors()
    inp, outp = interp.get_input_details()[0], interp.get_output_details()[0]
    scale, zero = inp["quantization"]
    x = self.batches[0][0][:1]
    q = self.np.clip(self.np.round(x / scale + zero), -128, 127).astype(inp["dtype"])
    interp.set_tensor(inp["index"], q)
    interp.invoke()
    y = interp.get_tensor(outp["index"])
    return "invoke ok (in %s %s, out %s %s)" % (
        inp["dtype"].__name__, [int(d) for d in inp["shape"]], outp["dtype"].__name__,
        [int(d) for d in y.shape])

  # d

  def decent_q(self):
    if self.spec.family != "slim":
      raise SkipStep("not a slim net")
    tf, v1 = self.tf, self.v1
    from qat_rewrite import decent_q  # pylint: disable=import-outside-toplevel
    size = self.spec.input_size
    config = decent_q.QuantizeConfig(input_nodes=["net_in"], output_nodes=["net_out"],
                                     input_shapes=[[-1, size, size, 3]],
                                     output_dir=os.path.join(self.workdir, "decent_q"))
    times = {}
    graph = tf.Graph()
    with graph.as_default():
      images, out, _ = self.spec.build(is_training=True)
      labels = v1.placeholder(tf.int64, [None], name="labels")
      loss = v1.losses.sparse_softmax_cross_entropy(labels, out)  # before the rewrite
      _progress("d: CreateQuantizeTrainingGraph")
      t = time.time()
      report = decent_q.CreateQuantizeTrainingGraph(config=config)
      times["train rewrite"] = time.time() - t
      with tf.control_dependencies(v1.get_collection(v1.GraphKeys.UPDATE_OPS)):
        train_op = v1.train.AdamOptimizer(1e-4).minimize(loss)
      _progress("d: 2 training steps")
      t = time.time()
      losses = []
      with v1.Session(graph=graph) as sess:
        sess.run(v1.global_variables_initializer())
        for x, y in self.batches:
          losses.append(float(sess.run([train_op, loss], {images: x, labels: y})[1]))
        ckpt = v1.train.Saver().save(sess, os.path.join(self.workdir, "dq_train", "model.ckpt"))
      times["2 steps"] = time.time() - t
    stage = "eval"
    try:
      graph = tf.Graph()
      with graph.as_default():
        self.spec.build(is_training=False)
        _progress("d: CreateQuantizeEvaluationGraph")
        t = time.time()
        decent_q.CreateQuantizeEvaluationGraph(config=config)
        times["eval rewrite"] = time.time() - t
        stage = "deploy"
        _progress("d: CreateQuantizeDeployGraph")
        t = time.time()
        paths = decent_q.CreateQuantizeDeployGraph(checkpoint=ckpt, config=config)
        times["deploy"] = time.time() - t
    except Exception as err:
      raise StageError("decent_q %s stage failed after training (loss %s): %s: %s"
                       % (stage, losses, type(err).__name__, str(err)[:200])) from err
    return ("%s; loss %s; files %s\n      train %s" % (
        ", ".join("%s %.1fs" % kv for kv in times.items()),
        ", ".join("%.3f" % l for l in losses), sorted(os.path.basename(p) for p in paths.values()),
        report.summary() if hasattr(report, "summary") else str(report).splitlines()[0]))

  def run(self):
    self.step("a_train", self.train)
    if "must feed a value for placeholder" in self.steps["a_train"].get("root", ""):
      self.step("a2_retry", lambda: self.train(filter_updates=True))
    self.step("b_eval", self.eval)
    self.step("c_tflite", self.tflite)
    if "has no FakeQuant range" in self.steps["c_tflite"].get("error", ""):
      self.step("c2_ranges", self.tflite_input_range)
    if self.spec.family == "slim":
      self.step("d_decent_q", self.decent_q)
    self.info["rss_mb"] = _peak_rss_mb()
    print(RESULT_TAG + json.dumps({"info": self.info}), flush=True)  # the child finished


class SkipStep(Exception):
  pass


class RestoreError(RuntimeError):
  pass


class NotFullyInteger(RuntimeError):
  pass


class ExportError(RuntimeError):
  pass


class StageError(RuntimeError):
  pass


def main(argv=None):
  args = parse_args(argv)
  if args.child:
    Child(args.child, args.workdir).run()
    return 0
  return run_parent(args)


if __name__ == "__main__":
  sys.exit(main())
