"""What one rewrite step leaves in a graph for a later step, held by the graph itself.

A later step sometimes needs what an earlier one built in the same `tf.Graph` (the tensor a fold
put in place of a batch norm's output, the DPU plan). Module-level dictionaries keyed by graph
held these values, which are ops and tensors of that graph, so the key never died and every
rewritten graph (and its rehearsal copy) stayed alive. Kept as an attribute of the graph, the
state lives and dies with it. A frozen GraphDef does not carry it; graph/graft.py carries it
from a rewritten copy to the graph.
"""

_ATTRIBUTE = "_qat_rewrite_state"


def setdefault(graph, key, default):
  """The state `key` of `graph`, set to `default` the first time."""
  return _state(graph).setdefault(key, default)


def get(graph, key, default=None):
  """The state `key` of `graph`, or `default` if no step left one."""
  return getattr(graph, _ATTRIBUTE, {}).get(key, default)


def everything(graph):
  """{key: value} of all the state `graph` holds (a copy of the mapping)."""
  return dict(getattr(graph, _ATTRIBUTE, {}))


def put(graph, key, value):
  _state(graph)[key] = value


def _state(graph):
  if not hasattr(graph, _ATTRIBUTE):
    setattr(graph, _ATTRIBUTE, {})
  return getattr(graph, _ATTRIBUTE)
