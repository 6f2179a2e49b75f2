"""The README's "Model zoo" table: the int8 QAT flow (tests/zoo_flow.py) on every zoo subject.

  python benchmarks/model_zoo.py [MODEL ...] [--out DIR]   # about 45 min on 2 cores

One fresh process per model (the large nets need their memory back), with the DPU deploy on
the slim nets and the float/QAT step cost. Prints one row per model and updates
OUT/model_zoo.md: the models run replace their rows, the others keep theirs, and the run is
added to the runs it lists. Exits 1 if a model's flow failed (its row says where).
"""

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(ROOT, "tests"))

import bench_common  # noqa: E402
import zoo_flow  # noqa: E402  (sets TF_USE_LEGACY_KERAS before TensorFlow loads)
import zoo_models  # noqa: E402

HEADER = ["model", "input", "layers matched", "BN folded", "ops left float (why)",
          "QAT/float step", "TFLite fully integer", "TFLite agreement, XNNPACK",
          "TFLite agreement, builtin kernels", "the same against the float32 eval graph",
          "XNNPACK vs builtin", "DPU deploy vs eval"]
# The agreement columns: the int8 logits of each TFLite runtime against the eval graph that
# requantizes as that runtime does (requantize="xnnpack" / "tflite_builtin"), then both against
# the float32 eval graph (requantize="float", the one exported).


def run_model(name, workdir):
  """The flow's result dict for `name`, or {"error": the last lines of its output}."""
  cmd = [sys.executable, zoo_flow.__file__, name, workdir, "--step-cost"]
  if zoo_models.MODELS[name].family == "slim":
    cmd.append("--decent-q")
  done = subprocess.run(cmd, capture_output=True, text=True, check=False)
  for line in done.stdout.splitlines():
    if line.startswith(zoo_flow.RESULT_TAG):
      return json.loads(line[len(zoo_flow.RESULT_TAG):])
  tail = " ".join((done.stderr or done.stdout)[-300:].split())
  if done.returncode < 0:  # killed: its output ends mid-log and says nothing of why
    killed = signal.Signals(-done.returncode)
    tail = "killed by %s%s; its output ended: %s" % (
        killed.name, " (out of memory, most likely)" if killed == signal.SIGKILL else "", tail)
  return {"model": name, "error": tail}


def _agreement(record):
  if not record:
    return "-"
  return "%.0f%%, %d LSB" % (100 * record["equal_share"], record["max_lsb"])


def row(result):
  name = result["model"]
  if "error" in result:
    return [name] + ["failed: %s" % result["error"]] + [""] * (len(HEADER) - 2)
  train, tflite = result["train"], result["tflite"]
  left = "%d" % len(train["float_ops"])
  if train["learning_phase_copy_float_ops"]:
    left += " (+%d in the Keras learning-phase copy, never run)" % (
        train["learning_phase_copy_float_ops"])
  steps = result.get("step_s")
  integer = "yes" if tflite["fully_integer"] else "no: %d float tensors" % tflite["float_tensors"]
  if tflite["input_ranges_needed"]:
    integer += " (input_ranges given: preprocessing before the first conv)"
  dpu = result.get("decent_q")
  return [name, result["input_size"], train["layers"], train["bn_folded"], left,
          "%.2f" % (steps["qat"] / steps["float"]) if steps else "-", integer,
          _agreement(tflite.get("xnnpack")), _agreement(tflite.get("builtin")),
          " / ".join(_agreement(tflite.get("float_eval", {}).get(k))
                     for k in ("xnnpack", "builtin")),
          _agreement(tflite.get("xnnpack_vs_builtin")),
          "%.0f%%, %d LSB over %d tensors" % (100 * dpu["worst_equal_share"],
                                               dpu["worst_max_lsb"], dpu["tensors"])
          if dpu else "-"]


def merged_table(path, rows, run_line):
  """The table at `path` (if any) with `rows` in place of the same models' rows, in zoo order,
  and `run_line` added to the runs it lists: rerunning some models keeps the others' figures."""
  runs, earlier = [], {}
  if os.path.exists(path):
    with open(path) as f:
      for line in f.read().splitlines():
        if line.startswith("| ") and not line.startswith("| model |"):
          earlier[line.split("|")[1].strip()] = line
        elif line and not line.startswith(("| model |", "|---")):
          runs.append(line)
  fresh = {str(r[0]): bench_common.markdown(HEADER, [r]).splitlines()[-1] for r in rows}
  table = {**earlier, **fresh}
  order = [n for n in zoo_models.MODELS if n in table] + [n for n in table
                                                          if n not in zoo_models.MODELS]
  lines = bench_common.markdown(HEADER, []).splitlines() + [table[n] for n in order]
  return "\n\n".join(runs + [run_line, "\n".join(lines)])


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("models", nargs="*", default=list(zoo_models.MODELS))
  parser.add_argument("--out", default=os.path.join(HERE, "results"))
  args = parser.parse_args(argv)
  started = time.time()
  load = os.getloadavg()[0]
  rows, failed = [], 0
  with tempfile.TemporaryDirectory(prefix="model_zoo_") as base:
    for name in args.models:
      start = time.time()
      result = run_model(name, os.path.join(base, name))
      failed += "error" in result
      rows.append(row(result))
      print("| %s |  (%.0f s)" % (" | ".join(str(c) for c in rows[-1]), time.time() - start),
            flush=True)
  run_line = ("Model zoo, `python benchmarks/model_zoo.py %s`: %s; %s; load average %.1f at the"
              " start; %.0f min in all. Batch 2, 2 QAT steps (agreement on the logits of the 4"
              " training images), step cost the median of steps 2-4."
              % (" ".join(args.models), bench_common.machine(), time.strftime("%Y-%m-%d"), load,
                 (time.time() - started) / 60))
  os.makedirs(args.out, exist_ok=True)
  text = merged_table(os.path.join(args.out, "model_zoo.md"), rows, run_line)
  print(text)
  with open(os.path.join(args.out, "model_zoo.md"), "w") as f:
    f.write(text + "\n")
  return 1 if failed else 0


if __name__ == "__main__":
  sys.exit(main())
