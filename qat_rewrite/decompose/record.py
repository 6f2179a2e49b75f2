"""The record of graph changes that auto_decomposition writes and decompose_graph reads.

AMCT keeps it in a `.pkl`; loading a pickle can run arbitrary code, so this is JSON:
`<save_path>.json`, holding per decomposed conv its name, weight variable, kernel shape and
ranks (enough to rebuild the change on the user's graph), and the per-layer report.
"""

import json
import os

from qat_rewrite.decompose.graph_edit import Plan

FORMAT = "qat_rewrite.tensor_decompose/1"


def path_of(save_path):
  return save_path + ".json"


def to_bytes(plans, report):
  layers = [{"conv": p.conv, "weight": p.weight, "kernel_shape": list(p.kernel_shape),
             "ranks": list(p.ranks), "new_convs": p.child_convs(),
             "new_variables": p.child_kernels()} for p in plans]
  return (json.dumps({"format": FORMAT, "decomposed": layers, "report": report}, indent=1)
          + "\n").encode()


def load(save_path):
  """The plans in `<save_path>.json`; ValueError naming the file if it is missing or malformed."""
  path = path_of(save_path)
  if not os.path.isfile(path):
    pickle = save_path + ".pkl"
    hint = (" (%s is AMCT's pickle, which is never loaded because loading a pickle can run "
            "code: run qat_rewrite's auto_decomposition to get the JSON record)" % pickle
            if os.path.exists(pickle) else "")
    raise ValueError("decomposition record %r does not exist%s" % (path, hint))
  try:
    with open(path, encoding="utf-8") as f:
      data = json.load(f)
  except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
    raise ValueError("decomposition record %r is not readable JSON: %s" % (path, e)) from e
  if not isinstance(data, dict) or data.get("format") != FORMAT:
    raise ValueError("%r is not a decomposition record (format %r expected)" % (path, FORMAT))
  plans = []
  for i, layer in enumerate(data.get("decomposed", ())):
    try:
      plan = Plan(str(layer["conv"]), str(layer["weight"]),
                  tuple(int(d) for d in layer["kernel_shape"]),
                  tuple(int(r) for r in layer["ranks"]))
    except (KeyError, TypeError, ValueError) as e:
      raise ValueError("decomposition record %r: entry %d is malformed (%s)" % (path, i, e)) from e
    if len(plan.kernel_shape) != 4 or len(plan.ranks) != 2 or min(plan.ranks) < 1:
      raise ValueError("decomposition record %r: entry %d (%s) has a bad kernel shape or ranks"
                       % (path, i, plan.conv))
    plans.append(plan)
  return plans, data.get("report", [])
