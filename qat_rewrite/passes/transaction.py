"""All-or-nothing rewrites: a rewrite that fails leaves the user's graph exactly as it was.

A tf.Graph cannot delete an op, so a rewrite that failed half-way could not be undone. Instead
each rewrite runs on a copy of the graph (imported from its GraphDef). When it succeeds, what it
added and changed is carried over to the user's graph in one import (graph/graft.py), which
fails before touching the graph or not at all. Where that cannot be done (v1 control flow, an
active tf.distribute strategy, a graph over 2 GB), the copy's rewrite is a rehearsal and the
rewrite runs again on the user's graph: the rewrites are deterministic, so what passed on the
copy passes on the original.
"""

import contextlib
import functools

from absl import logging

from qat_rewrite.graph import graft


def all_or_nothing(rewrite_fn):
  """Decorates `rewrite_fn(graph, ...)`: it raises before touching `graph` if it would fail."""

  @functools.wraps(rewrite_fn)
  def rewrite(graph, *args, **kwargs):
    if graph.finalized:
      raise ValueError("the graph is finalized (a MonitoredSession, Supervisor or "
                       "graph.finalize() did it): rewrite it before creating the session")
    copy, before = graft.copy_of(graph)
    if copy is None:
      return _rehearsed(rewrite_fn, graph, before, *args, **kwargs)
    result = rewrite_fn(copy, *args, **kwargs)
    try:
      return graft.graft(graph, copy, before, result)
    except graft.NotGraftable as e:
      logging.debug("rewriting the graph itself after its copy (%s)", e)
      with _quiet():
        return rewrite_fn(graph, *args, **kwargs)

  return rewrite


def _rehearsed(rewrite_fn, graph, reason, *args, **kwargs):
  """`rewrite_fn` on a plain copy first (a rehearsal), then on `graph` itself."""
  rehearsal, _ = graft.copy_of(graph, plain=True)
  if rehearsal is None:
    logging.warning("rewriting without a rehearsal on a copy (%s): a failure may leave the "
                    "graph half-rewritten", reason)
  else:
    with _quiet():
      rewrite_fn(rehearsal, *args, **kwargs)
  return rewrite_fn(graph, *args, **kwargs)


@contextlib.contextmanager
def _quiet():
  """Silences a second run's info and warnings: the first logged them."""
  logger = logging.get_absl_logger()
  level = logger.level
  logger.setLevel(logging.ERROR)
  try:
    yield
  finally:
    logger.setLevel(level)
