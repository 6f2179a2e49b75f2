"""Running the rewrite once for all replicas of a tf.distribute graph-mode model.

The rewrite edits the whole graph, so it must see every replica's tower and run once. Called
inside a replica function (`strategy.run`, `strategy.extended.call_for_each_replica`), as
single-device code calls it between the loss and the optimizer, each replica thread would
rewrite a half-built graph; `run_once` instead waits until every replica has built its tower
(a `merge_call`) and rewrites them all in cross-replica context. How the replicas then share
one set of ranges is described in `qat_rewrite.quant.fake_quant`.
"""

import tensorflow as tf


@tf.autograph.experimental.do_not_convert
def run_once(fn, *args, **kwargs):
  """Returns `fn(*args, **kwargs)`, run once for all replicas when called in a replica context.

  Outside tf.distribute, or in its cross-replica context, it is a plain call. Every replica
  gets the same result. Not converted by AutoGraph, which tf.distribute applies to replica
  functions: converting the whole rewrite took 18 s for a two-layer model instead of 1 s.
  """
  if not tf.distribute.has_strategy() or tf.distribute.in_cross_replica_context():
    return fn(*args, **kwargs)
  return tf.distribute.get_replica_context().merge_call(lambda _: fn(*args, **kwargs))
