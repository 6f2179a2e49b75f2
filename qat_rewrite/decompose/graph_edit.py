"""Replaces one Conv2D by its Tucker-2 chain in a graph: new variables, three convs, reroute.

The children are `<conv scope>/decom_first`, `decom_core` and `decom_last` (AMCT's names), each
a `Conv2D` reading a new variable `<child>/kernel` of the same kind (resource or ref) and in the
same collections as the original weight. Names depend only on the conv's name, so the user's
code, building the same model again, gets the same names and the decomposed checkpoint restores
by name. Whatever read the conv's output (bias, batch norm) now reads the last child, so the
batch-norm fold and every QAT front end see conv -> bias/BN as before.

The original weight leaves every collection: `global_variables_initializer`, a `Saver()` and the
optimizer made afterwards ignore it. Its op and the old conv stay in the graph (TF cannot delete
ops), dangling; the old conv then reads zeros, so nothing reads the replaced kernel.
"""

import dataclasses

import tensorflow as tf

from qat_rewrite.decompose.eligibility import is_training_op, spatial, weight_variable
from qat_rewrite.graph import editor
from qat_rewrite.graph.view import context, join

v1 = tf.compat.v1
CHILDREN = ("decom_first", "decom_core", "decom_last")


@dataclasses.dataclass
class Plan:
  """What to build for one conv: its name, its weight variable and the ranks."""
  conv: str
  weight: str
  kernel_shape: tuple
  ranks: tuple

  def child_shapes(self):
    kh, kw, c_in, c_out = self.kernel_shape
    r_in, r_out = self.ranks
    return [(1, 1, c_in, r_in), (kh, kw, r_in, r_out), (1, 1, r_out, c_out)]

  def child_convs(self):
    return [join(join(context(self.conv), c), "Conv2D") for c in CHILDREN]

  def child_kernels(self):
    return [join(join(context(self.conv), c), "kernel") for c in CHILDREN]


def check_no_training_ops(graph):
  """Gradients built before the change would still train the old conv."""
  found = [op.name for op in graph.get_operations() if is_training_op(op)]
  if found:
    raise ValueError("the graph already has gradient or optimizer ops (%s, ...): call "
                     "decompose_graph before building the optimizer" % found[0])


def check(graph, plans):
  """Raises ValueError naming the node if a plan does not fit `graph`; changes nothing."""
  for plan in plans:
    _check_one(graph, plan)


def _check_one(graph, plan):
  try:
    conv = graph.get_operation_by_name(plan.conv)
  except KeyError:
    raise ValueError("conv %r of the record is not in the graph (renamed or removed since "
                     "auto_decomposition?)" % plan.conv) from None
  for name in plan.child_convs() + plan.child_kernels():
    if _exists(graph, name):
      raise ValueError("%r is already in the graph: conv %r was decomposed already"
                       % (name, plan.conv))
  if conv.type != "Conv2D":
    raise ValueError("%r is a %s in the graph, the record says Conv2D" % (plan.conv, conv.type))
  variable = weight_variable(conv)
  if variable is None or variable.name != plan.weight:
    raise ValueError("the weight of conv %r is %r in the graph, the record says %r"
                     % (plan.conv, variable.name if variable is not None else
                        conv.inputs[1].op.name, plan.weight))
  shape = tuple(conv.inputs[1].shape.as_list())
  if shape != tuple(plan.kernel_shape):
    raise ValueError("the kernel of conv %r has shape %s in the graph, the record says %s"
                     % (plan.conv, list(shape), list(plan.kernel_shape)))


def _exists(graph, name):
  try:
    graph.get_operation_by_name(name)
    return True
  except KeyError:
    return False


def apply(graph, plan):
  """Builds the chain for `plan` (already checked); returns the three new kernel variables."""
  conv = graph.get_operation_by_name(plan.conv)
  weight = weight_variable(conv)
  keys = [k for k in graph.get_all_collection_keys()
          if any(_is(item, weight) for item in graph.get_collection(k))]
  trainable = v1.GraphKeys.TRAINABLE_VARIABLES in keys
  data_format = conv.get_attr("data_format").decode()
  x = conv.inputs[0]
  variables = []
  with graph.as_default(), tf.control_dependencies(None), tf.device(conv.device):
    for i, (child, shape) in enumerate(zip(CHILDREN, plan.child_shapes())):
      with graph.name_scope(join(context(plan.conv), child) + "/"):
        var = v1.Variable(tf.zeros(shape, conv.inputs[1].dtype), name="kernel",
                          trainable=trainable, collections=keys or None,
                          use_resource=weight.type == "VarHandleOp",
                          dtype=conv.inputs[1].dtype)
        core = i == 1
        x = tf.raw_ops.Conv2D(
            input=x, filter=var.value(),
            strides=conv.get_attr("strides") if core else [1, 1, 1, 1],
            padding=conv.get_attr("padding").decode() if core else "VALID",
            explicit_paddings=conv.get_attr("explicit_paddings") if core else [],
            data_format=data_format, dilations=[1, 1, 1, 1], name="Conv2D")
      variables.append(var)
  new_ops = {v.op for v in variables} | {x.op}
  consumers = [op for op in conv.outputs[0].consumers()
               if not is_training_op(op) and op not in new_ops]
  editor.reroute(conv.outputs[0], x, consumers)
  with graph.as_default(), tf.control_dependencies(None), graph.name_scope(
      join(context(plan.conv), "replaced_kernel") + "/"):
    # The dangling conv must not read the replaced kernel: a rewrite that quantizes every
    # Conv2D would otherwise add range updates that read an uninitialised variable.
    editor.replace_input(conv, 1, tf.zeros(plan.kernel_shape, conv.inputs[1].dtype))
  for k in keys:
    ref = graph.get_collection_ref(k)
    ref[:] = [item for item in ref if not _is(item, weight) or item in variables]
  return variables


def _is(item, variable_op):
  return getattr(item, "op", None) is variable_op


def stride_of(conv):
  return max(spatial(conv.get_attr("strides"), conv.get_attr("data_format").decode()))
