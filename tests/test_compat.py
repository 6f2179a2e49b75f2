"""The opt-in tf-slim shim: slim's batch norm fails on TF 2.21 without it and builds with it."""

import os
import subprocess
import sys
import textwrap

import pytest

pytest.importorskip("tf_slim")

SCRIPT = textwrap.dedent("""
    import tensorflow as tf
    import tf_slim as slim
    tf.compat.v1.disable_eager_execution()
    x = tf.compat.v1.placeholder(tf.float32, [None, 8, 8, 3])
    try:
        slim.batch_norm(x, is_training=True)
        print("built without the shim")
    except ModuleNotFoundError as e:
        print("without the shim:", e)
    from qat_rewrite.compat import install_tf_slim_shim
    install_tf_slim_shim()
    install_tf_slim_shim()  # a second call changes nothing
    print("with the shim:", slim.batch_norm(x, is_training=True).op.type)
""")


def test_tf_slim_batch_norm_builds_once_the_shim_is_installed():
  env = dict(os.environ, TF_USE_LEGACY_KERAS="1", TF_CPP_MIN_LOG_LEVEL="3")
  result = subprocess.run([sys.executable, "-c", SCRIPT], env=env, capture_output=True,
                          text=True, timeout=300, check=True)
  lines = result.stdout.splitlines()
  assert "without the shim: No module named 'tf_keras.legacy_tf_layers'" in lines
  assert "with the shim: FusedBatchNormV3" in lines
