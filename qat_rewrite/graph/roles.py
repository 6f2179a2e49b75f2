"""What an op the rewrite built is for, kept on the op itself.

Later steps must recognise some of the rewrite's own ops: the select that delays a quantizer,
the fold's batch norm, an emulation that exports drop. They once did so by name suffixes, which
a user's own op can share. Instead each such op carries one attribute, `_qat_rewrite_role`,
whose value is a role such as "delay_select" or "requantize/xnnpack" (a kind and, after "/", its
parameter). Being a node attribute, it travels with the GraphDef: a frozen .pb, a meta graph
and the in-memory graph answer alike. TensorFlow ignores attributes that start with "_".

A second attribute, `_qat_rewrite_replaces`, names the op whose output an op took over (a batch
norm a fold replaced): a user who names that op as an output means the new one.
"""

from tensorflow.core.framework import attr_value_pb2

from qat_rewrite.graph import editor

ATTRIBUTE = "_qat_rewrite_role"
REPLACES = "_qat_rewrite_replaces"


def mark(tensor, role):
  """Gives the op of `tensor` (a Tensor or an Operation) the role `role`; returns `tensor`."""
  op = getattr(tensor, "op", tensor)
  editor.set_attr(op, ATTRIBUTE, attr_value_pb2.AttrValue(s=role.encode()))
  return tensor


def of(op):
  """The role of `op` (an Operation or a NodeDef), or None for an op the rewrite did not mark."""
  return _string(op, ATTRIBUTE)


def parameter(op, kind):
  """The parameter of `op`'s role if the role is of `kind` ("requantize/xnnpack" → "xnnpack"),
  else None."""
  role = of(op)
  if role is None or not role.startswith(kind + "/"):
    return None
  return role[len(kind) + 1:]


def mark_replacement(tensor, replaced_op_name):
  """Records that `tensor` (output 0 of its op) took over the output of op `replaced_op_name`."""
  assert tensor.value_index == 0, tensor
  editor.set_attr(tensor.op, REPLACES, attr_value_pb2.AttrValue(s=replaced_op_name.encode()))
  return tensor


def replacements(ops):
  """{name of a replaced op: the Operation or NodeDef among `ops` whose output 0 took over}."""
  found = {}
  for op in ops:
    replaced = _string(op, REPLACES)
    if replaced is not None:
      found[replaced] = op
  return found


def _string(op, attribute):
  if hasattr(op, "attr"):  # NodeDef
    return op.attr[attribute].s.decode() if attribute in op.attr else None
  try:
    return op.get_attr(attribute).decode()
  except ValueError:
    return None
