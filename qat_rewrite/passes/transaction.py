"""All-or-nothing rewrites: a rewrite that fails leaves the user's graph exactly as it was.

A tf.Graph cannot delete an op, so a rewrite that failed half-way could not be undone. Instead
each rewrite first runs on a copy of the graph (imported from its GraphDef); only when that
succeeds does it run on the user's graph. The rewrites are deterministic, so what passed on the
copy passes on the original. It costs a second rewrite (see the README's figures).
"""

import contextlib
import functools

import tensorflow as tf
from absl import logging


def all_or_nothing(rewrite_fn):
  """Decorates `rewrite_fn(graph, ...)`: it raises before touching `graph` if it would fail."""

  @functools.wraps(rewrite_fn)
  def rewrite(graph, *args, **kwargs):
    if graph.finalized:
      raise ValueError("the graph is finalized (a MonitoredSession, Supervisor or "
                       "graph.finalize() did it): rewrite it before creating the session")
    copy = _copy(graph)
    if copy is not None:
      with _quiet():
        rewrite_fn(copy, *args, **kwargs)
    return rewrite_fn(graph, *args, **kwargs)

  return rewrite


def _copy(graph):
  """A new tf.Graph with the same ops, or None if the graph cannot be serialized (> 2 GB)."""
  try:
    graph_def = graph.as_graph_def()
  except ValueError as e:
    logging.warning("rewriting without a rehearsal on a copy (%s): a failure may leave the "
                    "graph half-rewritten", e)
    return None
  copy = tf.Graph()
  with copy.as_default():
    tf.import_graph_def(graph_def, name="")
  return copy


@contextlib.contextmanager
def _quiet():
  """Silences the rehearsal's info and warnings: the real rewrite logs them once."""
  logger = logging.get_absl_logger()
  level = logger.level
  logger.setLevel(logging.ERROR)
  try:
    yield
  finally:
    logger.setLevel(level)
