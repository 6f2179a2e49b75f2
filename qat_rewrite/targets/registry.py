"""The targets `qat_rewrite quantize/inspect --target` offers: one folder name each.

A folder here has a `command_line.py` whose `TARGET` (a `targets.target.Target`) says what the
command line needs; its name is the `--target` value.
"""

import importlib

FOLDERS = ("dpu", "ascend", "tflite")


def targets():
  """{--target value: Target}, in FOLDERS' order."""
  found = [importlib.import_module("qat_rewrite.targets.%s.command_line" % folder).TARGET
           for folder in FOLDERS]
  return {target.name: target for target in found}
