"""The one place that mutates existing ops: rerouting consumers, adding control inputs,
changing an attribute.

TensorFlow has no public API to change an existing op's input or attribute, so this module
wraps the private `Operation._update_input`, `_add_control_inputs` and `_set_attr` once, and
`Graph._names_in_use` and `_py_funcs_used_in_graph` for grafted ops. Everything else in the package
only adds new ops. (A few read-only private calls remain, each marked where it is made: a
dtype's `_is_ref_dtype`, the TFLite interpreter's op list, a graph-mode strategy's
distribute-values helper.)
"""


def replace_input(op, index, new_tensor):
  """Makes input `index` of `op` read `new_tensor` instead."""
  op._update_input(index, new_tensor)  # pylint: disable=protected-access


def reroute(old, new, consumers):
  """Makes each op in `consumers` read `new` wherever it read `old`; returns edges changed."""
  changed = 0
  for op in consumers:
    for i, t in enumerate(op.inputs):
      if t.op is old.op and t.value_index == old.value_index:
        replace_input(op, i, new)
        changed += 1
  return changed


def add_control_inputs(op, control_ops):
  """Makes `op` also wait for each op in `control_ops`."""
  op._add_control_inputs(control_ops)  # pylint: disable=protected-access


def mark_scopes_used(graph, op_names):
  """Marks `op_names` and every name scope of them used, as building those ops in place would
  have: a later `unique_scope` of one of them gets a new name (`act_quant_1`), not the same one."""
  used = graph._names_in_use  # pylint: disable=protected-access
  for name in op_names:
    parts = name.lower().split("/")
    for end in range(1, len(parts) + 1):
      used.setdefault("/".join(parts[:end]), 1)


def py_funcs(graph):
  """The Python functions of the py_funcs built in `graph`, which the graph keeps alive."""
  return list(getattr(graph, "_py_funcs_used_in_graph", []))


def keep_py_funcs(graph, functions):
  """Makes `graph` keep `functions` alive, as it does those of its own py_funcs."""
  if functions:
    if not hasattr(graph, "_py_funcs_used_in_graph"):
      graph._py_funcs_used_in_graph = []  # pylint: disable=protected-access
    graph._py_funcs_used_in_graph.extend(functions)  # pylint: disable=protected-access


def unique_scope(graph, name):
  """An absolute, unused name scope: `ctx/act_quant`, then `ctx/act_quant_1`."""
  return graph.unique_name(name, mark_as_used=True) + "/"


def set_attr(op, name, attr_value):
  """Changes attribute `name` of an existing op (an AttrValue), e.g. LeakyReLU's alpha."""
  op._set_attr(name, attr_value)  # pylint: disable=protected-access
