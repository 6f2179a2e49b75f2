"""Refuse graphs the rewrite cannot handle correctly, before anything is changed."""

from qat_rewrite.graph.matcher import match_op
from qat_rewrite.layers.patterns import bn_input

_OPTIMIZER_PREFIXES = ("Apply", "ResourceApply", "SparseApply", "ResourceSparseApply")
_BATCH_NORM_TYPES = ("FusedBatchNorm", "FusedBatchNormV3", "FusedBatchNormV2")
_COND_TYPES = ("If", "StatelessIf")


def check_no_training_ops(graph):
  """The rewrite must come before the optimizer, so gradients see the quantizers."""
  found = sorted({op.type for op in graph.get_operations()
                  if op.type.startswith(_OPTIMIZER_PREFIXES)})
  if found:
    raise ValueError(
        "Training op found in graph, exiting %s: call the rewrite before building the "
        "optimizer (before optimizer.minimize / apply_gradients)." % found)


def conditional_batch_norms(graph, in_scope):
  """Weight layers whose batch norm sits behind a training-flag conditional.

  Returns {layer op: conditional op}. Such a batch norm cannot be folded; Keras builds
  one for every model constructed without `training=` (its functional copy), next to
  the copy the user calls with `training=True/False`.
  """
  found, library = {}, None
  for op in graph.get_operations():
    if not in_scope(op):
      continue
    if op.type in _COND_TYPES:
      library = library or {f.signature.name: f for f in graph.as_graph_def().library.function}
      if _branches_contain_batch_norm(library, op):
        for t in op.inputs[1:]:
          for m in match_op(bn_input(), t.op, t.value_index):
            found.setdefault(m.op("layer"), op)
    elif op.type in _BATCH_NORM_TYPES and op.inputs[0].op.type == "Switch":
      switch_input = op.inputs[0].op.inputs[0]
      for m in match_op(bn_input(), switch_input.op, switch_input.value_index):
        found.setdefault(m.op("layer"), op)
  return found


def raise_conditional_batch_norm(cond_op):
  raise ValueError(
      "Batch norm inside the conditional op '%s' (%s), selected by a training-flag tensor "
      "(a Keras learning phase or tf.cond), cannot be folded, and no batch norm of the graph "
      "can. Build the model with training=True for the training graph and training=False "
      "for the eval graph (e.g. `model(images, training=True)`)." % (cond_op.name, cond_op.type))


def _branches_contain_batch_norm(library, op):
  pending, seen = [op.get_attr(a).name for a in ("then_branch", "else_branch")], set()
  while pending:
    name = pending.pop()
    if name in seen or name not in library:
      continue
    seen.add(name)
    for node in library[name].node_def:
      if node.op in _BATCH_NORM_TYPES:
        return True
      for attr in node.attr.values():
        if attr.HasField("func"):
          pending.append(attr.func.name)
  return False
