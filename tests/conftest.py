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


def pytest_collection_finish(session):
  """Starts the model-zoo flows now, to run beside the other tests (zoo_runs.py)."""
  import zoo_runs  # pylint: disable=import-outside-toplevel
  runs = zoo_runs.start(session.items)
  if runs is not None:
    session.config.stash[zoo_runs.STASH_KEY] = runs


def pytest_terminal_summary(terminalreporter, config):
  import zoo_runs  # pylint: disable=import-outside-toplevel
  runs = config.stash.get(zoo_runs.STASH_KEY, None)
  if runs is not None:
    terminalreporter.write_line(runs.summary())


def pytest_sessionfinish(session):
  import zoo_runs  # pylint: disable=import-outside-toplevel
  runs = session.config.stash.get(zoo_runs.STASH_KEY, None)
  if runs is not None:
    runs.close()
