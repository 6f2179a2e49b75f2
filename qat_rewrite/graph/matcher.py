"""Matches patterns against a graph with backtracking, and picks non-overlapping matches.

Every op of the graph is tried as a root; all complete matches are collected and
then accepted largest first, so a layer with a bias, a residual add and an
activation wins over the same layer seen without them. No hand-ordered priority
list is needed.
"""

import itertools

from qat_rewrite.graph import pattern as P


class Match:
  """Role -> op and role -> tensor bindings of one complete match."""

  def __init__(self, root, bindings):
    self.root = root
    self._bindings = dict(bindings)

  def op(self, role):
    bound = self._bindings.get(role)
    return bound[0] if bound else None

  def tensor(self, role):
    bound = self._bindings.get(role)
    return bound[1] if bound else None

  def has(self, role):
    return role in self._bindings

  @property
  def ops(self):
    """Ops bound by an Op pattern (not the wildcard inputs)."""
    return {op for op, _, is_op in self._bindings.values() if is_op}

  def __repr__(self):
    return "Match(%s)" % ", ".join(
        "%s=%s" % (role, b[0].name) for role, b in sorted(self._bindings.items()))


def _bind(bindings, role, op, tensor, is_op):
  """Returns new bindings, or None if `role` is already bound to another op."""
  if role is None:
    return bindings
  bound = bindings.get(role)
  if bound is not None:
    return bindings if bound[0] is op else None
  new = dict(bindings)
  new[role] = (op, tensor, is_op)
  return new


def _match(pattern, tensor, bindings):
  """Yields every binding dict under which `pattern` matches `tensor`."""
  op = tensor.op
  if isinstance(pattern, P.Any):
    if pattern.where is None or pattern.where(tensor):
      new = _bind(bindings, pattern.role, op, tensor, False)
      if new is not None:
        yield new
  elif isinstance(pattern, P.OneOf):
    for alternative in pattern.alternatives:
      yield from _match(alternative, tensor, bindings)
  elif isinstance(pattern, P.Optional):
    yield from _match(pattern.inner, tensor, bindings)
    yield from _match(pattern.skip, tensor, bindings)
  else:
    yield from _match_op(pattern, tensor, bindings)


def _match_op(pattern, tensor, bindings):
  op = tensor.op
  if op.type not in pattern.types:
    return
  if pattern.output is not None and tensor.value_index != pattern.output:
    return
  if pattern.where is not None and not pattern.where(op):
    return
  bindings = _bind(bindings, pattern.role, op, tensor, True)
  if bindings is None:
    return
  if pattern.inputs is None:
    yield bindings
    return
  inputs = list(op.inputs)
  if len(inputs) != len(pattern.inputs):
    return
  orders = [pattern.inputs] if pattern.ordered else itertools.permutations(pattern.inputs)
  for order in orders:
    yield from _match_all(list(zip(order, inputs)), bindings)


def _match_all(pairs, bindings):
  if not pairs:
    yield bindings
    return
  (pattern, tensor), rest = pairs[0], pairs[1:]
  for new in _match(pattern, tensor, bindings):
    yield from _match_all(rest, new)


def match_op(pattern, op, output_index=0):
  """All matches of `pattern` rooted at `op` (through its output `output_index`)."""
  if not op.outputs:
    return []
  return [Match(op, b) for b in _match(pattern, op.outputs[output_index], {})]


def find_matches(pattern, ops, anchor_role, output_index=0, exclude=frozenset()):
  """Non-overlapping matches, one per anchor op at most, largest first.

  `anchor_role` names the op that identifies a match (the layer op). Among all
  matches the largest are accepted first; a match is dropped if its anchor was
  already taken or if it shares an op with an accepted match. Matches that touch
  an op in `exclude` are never considered.
  """
  candidates = []
  for op in ops:
    for m in match_op(pattern, op, output_index):
      if m.op(anchor_role) is not None and not m.ops & exclude:
        candidates.append(m)
  # Stable sort: among equal sizes, graph order decides, so results are deterministic.
  candidates.sort(key=lambda m: -len(m.ops))
  taken_anchors, taken_ops, accepted = set(), set(), []
  for m in candidates:
    anchor = m.op(anchor_role)
    if anchor in taken_anchors or (m.ops & taken_ops):
      continue
    accepted.append(m)
    taken_anchors.add(anchor)
    taken_ops |= m.ops
  order = {op: i for i, op in enumerate(ops)}
  accepted.sort(key=lambda m: order.get(m.op(anchor_role), 0))
  return accepted
