"""What a target gives the command line: its flags, its files, calibration, report and inspect.

Each target folder describes itself in `command_line.py` as one `Target`; `targets/registry.py`
lists the folders. `cli.py` asks the chosen target and never names one, so adding a target is
its folder plus one registry line.
"""

import dataclasses
from typing import Any, Callable, Dict, List, Tuple, Union

from qat_rewrite import calibration_data
from qat_rewrite.graph import frozen


@dataclasses.dataclass(frozen=True)
class Flag:
  """A `quantize` flag only this target reads; another target refuses a value other than its
  default, naming the target it is for and `why` the others ignore it."""
  name: str
  options: Dict[str, Any]  # argparse's add_argument keywords; `default` is required
  why: str = ""


@dataclasses.dataclass(frozen=True)
class Target:
  """One deployment target on the command line. Every callable takes the parsed flags (`args`).

  output_names(args): the files `quantize` will write, known before calibration starts, so
      that an existing file is refused before the wait.
  calibrate(args, graph_def, input_fn, config): {file name: bytes} for a frozen float graph.
  report_rows(args, graph_def, contents, input_fn, config): `error_report.Row`s of the
      calibrated model (`contents`) against the float graph on batch 0.
  notes(graph, args, config_of): {op name: how the target quantizes it, or why not}, or one
      line of text when the target cannot say per op; `config_of(graph)` builds the
      QuantizeConfig of the flags and raises when the flags it needs are missing.
  """
  name: str
  summary: str
  output_names: Callable[[Any], List[str]]
  calibrate: Callable[..., Dict[str, bytes]]
  report_rows: Callable[..., list]
  notes: Callable[..., Union[Dict[str, str], str]]
  flags: Tuple[Flag, ...] = ()


def first_batch(graph_def, input_fn, input_nodes):
  """(graph_def with its constant learning-phase switches settled, {input node: batch 0}):
  what a report feeds a model that starts at the input nodes."""
  graph_def = frozen.settle_constant_switches(graph_def)[0]
  (inputs,) = calibration_data.input_node_batches(graph_def, input_fn, input_nodes, 1)
  return graph_def, inputs
