"""The command line's targets come from `targets/registry.py`: each target's flags, files,
report and inspect notes reach `quantize` and `inspect` without a branch in cli.py."""

import os

from qat_rewrite import cli, error_report
from qat_rewrite.targets import registry, target
from test_cli import QUANTIZE, _flag, _run, workdir  # noqa: F401  (workdir is a fixture)


def test_the_registry_lists_one_target_per_folder():
  targets = registry.targets()
  assert list(targets) == list(registry.FOLDERS) == ["dpu", "ascend", "tflite"]
  assert {f.name for t in targets.values() for f in t.flags} == {"fixneuron_model",
                                                                  "range_method"}


def test_a_flag_of_another_target_is_refused_naming_its_target(workdir, capsys):
  argv = _flag(QUANTIZE, "--output_dir", "tfl") + ["--target", "tflite", "--fixneuron_model", "0"]
  status, _, err = _run(argv, capsys)
  assert status == 1 and "--fixneuron_model is for --target dpu" in err
  assert not os.path.exists("tfl")


def _graph_size_target():
  """A toy target: its 'model' is the frozen graph's node count, its report one row."""

  def calibrate(args, graph_def, input_fn, config):
    del input_fn, config
    return {"nodes.txt": ("%d %s" % (len(graph_def.node), args.size_unit)).encode()}

  def report_rows(args, graph_def, contents, input_fn, config):
    del args, graph_def, contents, input_fn, config
    return [error_report.Row(name="all", grid="8-bit", minimum=0.0, maximum=1.0, sqnr_db=40.0,
                             float_sqnr_db=30.0)]

  return target.Target(
      name="size", summary="the node count", output_names=lambda args: ["nodes.txt"],
      calibrate=calibrate, report_rows=report_rows,
      notes=lambda graph, args, config_of: {op.name: "counted" for op in graph.get_operations()},
      flags=(target.Flag("size_unit", dict(default="nodes")),))


def test_a_registered_target_reaches_quantize_and_inspect(workdir, capsys, monkeypatch):
  monkeypatch.setitem(cli._TARGETS, "size", _graph_size_target())
  argv = _flag(QUANTIZE, "--output_dir", "size") + ["--target", "size", "--size_unit", "ops",
                                                    "--report"]
  status, out, err = _run(argv, capsys)
  assert status == 0, err
  assert sorted(os.listdir("size")) == ["nodes.txt", "quantize_report.csv", "quantize_report.md",
                                        "quantize_report.png"]
  assert open("size/nodes.txt").read().endswith(" ops")
  assert "| all |" in open("size/quantize_report.md").read()
  status, out, _ = _run(["inspect", "--input_frozen_graph", "model.pb", "--target", "size"],
                        capsys)
  assert status == 0 and "| probs | Softmax | counted |" in out
  status, _, err = _run(QUANTIZE + ["--size_unit", "ops"], capsys)  # --target dpu
  assert status == 1 and "--size_unit is for --target size" in err
  assert not os.path.exists("out")
