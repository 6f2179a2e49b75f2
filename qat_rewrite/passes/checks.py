"""Refuse graphs the rewrite cannot handle correctly, before anything is changed."""

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


def check_no_conditional_batch_norm(graph, in_scope):
  """A batch norm behind a training-flag cond cannot be folded: say so, naming it."""
  for op in graph.get_operations():
    if not in_scope(op):
      continue
    if op.type in _COND_TYPES and _branches_contain_batch_norm(graph, op):
      raise ValueError(
          "Batch norm inside the conditional op '%s' (%s), selected by a training-flag "
          "tensor (a Keras learning phase or tf.cond), cannot be folded. Build the model "
          "with training=True for the training graph and training=False for the eval "
          "graph." % (op.name, op.type))
    if op.type in _BATCH_NORM_TYPES and any(t.op.type == "Switch" for t in op.inputs):
      raise ValueError(
          "Batch norm '%s' is fed through a tf.cond Switch on a training-flag tensor and "
          "cannot be folded. Build the model with training=True for the training graph and "
          "training=False for the eval graph." % op.name)


def _branches_contain_batch_norm(graph, op):
  library = {f.signature.name: f for f in graph.as_graph_def().library.function}
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

