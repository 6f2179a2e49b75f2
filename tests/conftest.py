"""Shared test set-up: legacy Keras for tf.compat.v1.layers, graph mode everywhere."""

import os

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import pytest  # noqa: E402
import tensorflow as tf  # noqa: E402

tf.compat.v1.disable_eager_execution()


@pytest.fixture
def full_disk(monkeypatch):
  """`full_disk(n)`: the n-th file written through os.fdopen from now on hits a full disk."""
  real_fdopen, calls = os.fdopen, []

  def arm(n):
    def failing_fdopen(fd, *args, **kwargs):
      calls.append(fd)
      if len(calls) == n:
        os.close(fd)
        raise OSError(28, "No space left on device")
      return real_fdopen(fd, *args, **kwargs)
    monkeypatch.setattr(os, "fdopen", failing_fdopen)

  return arm
