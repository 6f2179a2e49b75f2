"""decent_q's `QuantizeConfig`: the same fields and defaults, checked when built, immutable after.

decent_q accepted almost anything and failed later (a `LOG(FATAL)` in C++ on a bad string, or a
silently wrong graph), and its graph functions wrote into the config. Here a bad value fails at
once with a ValueError that names the field, and nothing can change a config once built.
"""

import dataclasses
import difflib
import inspect
import numbers
import os
import re

import tensorflow as tf

_OP_NAME = re.compile(r"^[A-Za-z0-9.][A-Za-z0-9_.\\/>-]*$")  # TensorFlow's rule for op names
_NODE_LISTS = ("input_nodes", "output_nodes", "ignore_nodes")
_OVERRIDES = {"nodes_bit": ("bits", 2, 16), "nodes_method": ("method", 0, 2)}
_CHOICES = {"method": 2, "align_concat": 2, "align_pool": 2, "adjust_shift_bias": 2,
            "adjust_shift_cut": 1}  # field -> highest allowed value (lowest is 0)
_FLAGS = ("simulate_dpu", "scale_all_avgpool", "do_cle", "replace_relu6", "replace_sigmoid",
          "fold_bn_only", "fold_reshape", "replace_softmax")
_MAX_RANK = 5


@dataclasses.dataclass(frozen=True, init=False, repr=False)
class QuantizeConfig:
  """What to quantize and how, for the decent_q graph functions (defaults of Vitis AI 3.5).

  Same fields, order and defaults as `vai_q_tensorflow.QuantizeConfig`, so existing scripts run
  unchanged, positionally or by keyword. Lists are stored as tuples; use `dataclasses.replace`
  to derive a changed config. Node names are op names (`conv1/Conv2D`, not `conv1/Conv2D:0`).

  Field              Default               Meaning
  input_nodes        ()                    ops where the quantized subgraph starts
  output_nodes       ()                    ops where it ends (deploy renames them `<name>/aquant`)
  input_shapes       ()                    one shape per input node; -1 only for the batch
  ignore_nodes       ()                    ops whose patterns stay float
  weight_bit         8                     bits for weights and biases
  activation_bit     8                     bits for activations and inputs
  nodes_bit          ()                    per-op bit overrides, "name:bits"
  nodes_method       ()                    per-op method overrides, "name:method"
  method             1                     position search: 0 non-overflow, 1 min-diffs, 2 dw
  target_type        ''                    DPU target name (only `inspect` used it)
  calib_iter         100                   calibration batches (post-training only)
  output_dir         './quantize_results'  where deploy files go
  align_concat       0                     align Concat input positions: 0 all, 1 outputs, 2 off
  align_pool         0                     the same for MaxPool / AvgPool inputs
  adjust_shift_bias  1                     fit bias shifts: 0 off, 1 static, 2 kernel-size limits
  adjust_shift_cut   1                     fit output shifts (moves weights): 0 off, 1 on
  simulate_dpu       1                     copy DPU arithmetic (LeakyReLU, AvgPool, hard-sigmoid)
  scale_all_avgpool  1                     also scale AvgPools of uncommon kernel sizes
  do_cle             0                     cross-layer equalization (post-training only)
  replace_relu6      1                     ReLU6 -> ReLU, only together with do_cle
  replace_sigmoid    0                     Sigmoid -> hard-sigmoid
  fold_bn_only       0                     optimize only by folding BN (set by convert_datatype)
  fold_reshape       0                     turn Reshape shape subgraphs into constants
  replace_softmax    0                     Softmax -> the DPU's hard-softmax
  """
  input_nodes: tuple
  output_nodes: tuple
  input_shapes: tuple
  ignore_nodes: tuple
  weight_bit: int
  activation_bit: int
  nodes_bit: tuple
  nodes_method: tuple
  method: int
  target_type: str
  calib_iter: int
  output_dir: str
  align_concat: int
  align_pool: int
  adjust_shift_bias: int
  adjust_shift_cut: int
  simulate_dpu: int
  scale_all_avgpool: int
  do_cle: int
  replace_relu6: int
  replace_sigmoid: int
  fold_bn_only: int
  fold_reshape: int
  replace_softmax: int

  def __init__(self, input_nodes=(), output_nodes=(), input_shapes=(), ignore_nodes=(),
               weight_bit=8, activation_bit=8, nodes_bit=(), nodes_method=(), method=1,
               target_type="", calib_iter=100, output_dir="./quantize_results", align_concat=0,
               align_pool=0, adjust_shift_bias=1, adjust_shift_cut=1, simulate_dpu=1,
               scale_all_avgpool=1, do_cle=0, replace_relu6=1, replace_sigmoid=0, fold_bn_only=0,
               fold_reshape=0, replace_softmax=0, **unknown):
    if unknown:
      name = sorted(unknown)[0]
      close = difflib.get_close_matches(name, _FIELDS, n=1)
      hint = "did you mean %r? " % close[0] if close else ""
      raise ValueError("unknown QuantizeConfig field %r; %sknown fields: %s"
                       % (name, hint, ", ".join(_FIELDS)))
    given = locals()

    def put(name, value):  # the one place a frozen instance is written
      object.__setattr__(self, name, value)

    for name in _NODE_LISTS:
      put(name, _node_list(name, given[name]))
    put("input_shapes", _shapes(input_shapes, self.input_nodes))
    for name, (what, low, high) in _OVERRIDES.items():
      put(name, _overrides(name, given[name], what, low, high))
    put("weight_bit", _int("weight_bit", weight_bit, 2, 16))
    put("activation_bit", _int("activation_bit", activation_bit, 2, 16))
    put("calib_iter", _int("calib_iter", calib_iter, 1, None))
    for name, high in _CHOICES.items():
      put(name, _int(name, given[name], 0, high))
    for name in _FLAGS:
      put(name, _int(name, given[name], 0, 1, allow_bool=True))
    if not isinstance(target_type, str):
      raise ValueError("QuantizeConfig.target_type must be a str, got %r" % (target_type,))
    put("target_type", target_type)
    if isinstance(output_dir, os.PathLike):
      output_dir = os.fspath(output_dir)
    if not isinstance(output_dir, str) or not output_dir:
      raise ValueError("QuantizeConfig.output_dir must be a non-empty str, got %r" % (output_dir,))
    put("output_dir", output_dir)

  @property
  def nodes_bit_map(self):
    """`nodes_bit` as {op name: bits}."""
    return _parse(self.nodes_bit)

  @property
  def nodes_method_map(self):
    """`nodes_method` as {op name: method}."""
    return _parse(self.nodes_method)

  def check_against_graph(self, graph=None):
    """Raises ValueError if a named node is not in `graph` (a tf.Graph or GraphDef).

    Done when the graph is rewritten, not when the config is built: the config comes first.
    """
    if graph is None:
      graph = tf.compat.v1.get_default_graph()
    if hasattr(graph, "get_operations"):
      names = {op.name for op in graph.get_operations()}
    else:
      names = {node.name for node in graph.node}
    problems = []
    for field in _NODE_LISTS + tuple(_OVERRIDES):
      wanted = getattr(self, field + "_map") if field in _OVERRIDES else getattr(self, field)
      for name in wanted:
        if name not in names:
          close = difflib.get_close_matches(name, names, n=3)
          hint = "; similar ops: " + ", ".join(map(repr, close)) if close else ""
          problems.append("QuantizeConfig.%s: node %r is not in the graph%s" % (field, name, hint))
    if problems:
      raise ValueError("\n".join(problems))

  def to_string(self):
    """decent_q's flat "key,value,...," string (a str here; decent_q returned bytes).

    Same order as decent_q: list fields first, each item under its own key, then the rest.
    """
    items = [(key, name) for key in ("input_nodes", "output_nodes") for name in getattr(self, key)]
    items += [("input_shapes", "*".join(map(str, shape))) for shape in self.input_shapes]
    items += [(key, entry) for key in ("ignore_nodes",) + tuple(_OVERRIDES)
              for entry in getattr(self, key)]
    items += [(key, str(getattr(self, key))) for key in _FIELDS if key not in _LIST_FIELDS]
    for key, value in items:
      if "," in value:
        raise ValueError("QuantizeConfig.%s: %r contains a comma, which the flat string cannot "
                         "carry" % (key, value))
    return "".join("%s,%s," % item for item in items)

  def __repr__(self):
    """Only the fields that differ from the defaults, written as the user would write them."""
    args = ["%s=%r" % (name, _as_lists(getattr(self, name))) for name in _FIELDS
            if getattr(self, name) != _DEFAULTS[name]]
    return "QuantizeConfig(%s)" % ", ".join(args)


_FIELDS = tuple(f.name for f in dataclasses.fields(QuantizeConfig))
_LIST_FIELDS = _NODE_LISTS + ("input_shapes",) + tuple(_OVERRIDES)
_DEFAULTS = {name: p.default for name, p in inspect.signature(QuantizeConfig).parameters.items()
             if name in _FIELDS}


def _int(field, value, low, high, allow_bool=False):
  """`value` as an int in low..high (high None: no limit). bool passes only for 0/1 flags."""
  ok = isinstance(value, numbers.Integral) and (allow_bool or not isinstance(value, bool))
  if not ok or value < low or (high is not None and value > high):
    limits = "%d..%d" % (low, high) if high is not None else ">= %d" % low
    raise ValueError("QuantizeConfig.%s must be an int in %s, got %r" % (field, limits, value))
  return int(value)


def _sequence(field, value):
  """A list or tuple, as a tuple; a str is refused rather than split into characters."""
  if not isinstance(value, (list, tuple)):
    tip = "; write [%r]" % value if isinstance(value, str) else ""
    raise ValueError("QuantizeConfig.%s must be a list, got %s %r%s"
                     % (field, type(value).__name__, value, tip))
  return tuple(value)


def _op_name(field, name):
  if not isinstance(name, str) or not _OP_NAME.match(name):
    tip = " (give the op name, without ':0')" if isinstance(name, str) and ":" in name else ""
    raise ValueError("QuantizeConfig.%s: %r is not a valid op name%s" % (field, name, tip))
  return name


def _node_list(field, value):
  return tuple(_op_name(field, name) for name in _sequence(field, value))


def _shapes(value, input_nodes):
  """One shape per input node, rank 1..5, every dim a positive int except a -1 batch."""
  shapes = []
  for i, shape in enumerate(_sequence("input_shapes", value)):
    dims = _sequence("input_shapes", shape)
    ints = all(isinstance(d, numbers.Integral) and not isinstance(d, bool) for d in dims)
    if not (1 <= len(dims) <= _MAX_RANK and ints
            and all(d >= 1 or (k == 0 and d == -1) for k, d in enumerate(dims))):
      node = " (input node %r)" % input_nodes[i] if i < len(input_nodes) else ""
      raise ValueError("QuantizeConfig.input_shapes: bad shape %r%s; want rank 1..%d, positive "
                       "dims, -1 only for the batch" % (shape, node, _MAX_RANK))
    shapes.append(tuple(int(d) for d in dims))
  if len(shapes) != len(input_nodes):
    raise ValueError("QuantizeConfig.input_shapes: %d shape(s) for %d input_nodes; give one per "
                     "input node" % (len(shapes), len(input_nodes)))
  return tuple(shapes)


def _overrides(field, value, what, low, high):
  """Entries "name:value" with value in low..high, normalised; each name at most once."""
  entries, seen = [], set()
  for entry in _sequence(field, value):
    name, _, number = entry.partition(":") if isinstance(entry, str) else ("", "", "")
    try:
      number = int(number)
    except ValueError:
      number = None
    if not _OP_NAME.match(name) or number is None or not low <= number <= high:
      raise ValueError("QuantizeConfig.%s: bad entry %r; want \"op_name:%s\" with %s in %d..%d"
                       % (field, entry, what, what, low, high))
    if name in seen:
      raise ValueError("QuantizeConfig.%s: entry %r repeats node %r" % (field, entry, name))
    seen.add(name)
    entries.append("%s:%d" % (name, number))
  return tuple(entries)


def _parse(entries):
  return {name: int(number) for name, number in (entry.split(":") for entry in entries)}


def _as_lists(value):
  return [_as_lists(v) for v in value] if isinstance(value, tuple) else value
