"""The model-zoo flows of a test session, started as soon as the tests are collected.

Each flow (zoo_flow.py) is one process bound to one core for 1-3 minutes, and the rest of the
suite is mostly single-threaded too, so the flows run beside the other tests, `workers` at a
time (QAT_REWRITE_ZOO_WORKERS, default 2), instead of one after another at the end: on 2 cores
that is what keeps the suite's wall time near its CPU time divided by two.
"""

import concurrent.futures
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time

import pytest

import zoo_flow

TIMEOUT_S = 1800
STASH_KEY = pytest.StashKey()  # the session's ZooRuns, in pytest's config.stash


class FlowFailed(Exception):
  """A flow exited non-zero or printed no result; the message holds its stderr's tail."""


class ZooRuns:
  """Runs `commands` ({name: extra flags}) in the background; `result(name)` waits for one."""

  def __init__(self, commands, workers):
    self._workdir = tempfile.mkdtemp(prefix="qat_rewrite_zoo_")
    self._lock = threading.Lock()
    self._running = set()
    self._closed = False
    self._workers = max(1, workers)
    self._pool = concurrent.futures.ThreadPoolExecutor(self._workers)
    self._started = time.perf_counter()
    self.seconds = {}  # name: the flow's wall time, for the session's summary
    self.agreement = {}  # name: its TFLite agreement with both runtimes, for the summary
    self._futures = {name: self._pool.submit(self._run, name, flags)
                     for name, flags in commands.items()}

  def result(self, name):
    """The flow's result dict; raises FlowFailed with its stderr when it failed."""
    return self._futures[name].result()

  def summary(self):
    """One line: each finished flow's wall time and TFLite agreement (equal logits with XNNPACK
    / the builtin kernels, worst LSB: what CI logs keep of the zoo's bit-exactness), and the
    zoo's time from collection to the last."""
    if not self.seconds:
      return "zoo flows: none finished"
    return "zoo flows (%d at a time): %s; all done %.0f s after collection" % (
        self._workers, ", ".join("%s %.0f s%s" % (name, seconds, self.agreement.get(name, ""))
                                 for name, seconds in self.seconds.items()),
        self._last_done - self._started)

  def close(self):
    """Stops what still runs (an interrupted session) and removes the flows' files."""
    with self._lock:
      self._closed = True
      for process in self._running:
        process.kill()
    self._pool.shutdown(wait=True, cancel_futures=True)
    shutil.rmtree(self._workdir, ignore_errors=True)

  def _run(self, name, flags):
    command = [sys.executable, zoo_flow.__file__, name, os.path.join(self._workdir, name)] + list(flags)
    with self._lock:
      if self._closed:
        raise FlowFailed("%s: the session ended before it ran" % name)
      process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                 text=True)
      self._running.add(process)
    start = time.perf_counter()
    try:
      stdout, stderr = process.communicate(timeout=TIMEOUT_S)
    except subprocess.TimeoutExpired:
      process.kill()
      stdout, stderr = process.communicate()
      stderr += "\n(killed after %d s)" % TIMEOUT_S
    finally:
      with self._lock:
        self._running.discard(process)
    self._last_done = time.perf_counter()
    self.seconds[name] = self._last_done - start
    lines = [l for l in stdout.splitlines() if l.startswith(zoo_flow.RESULT_TAG)]
    if process.returncode != 0 or not lines:
      raise FlowFailed("%s failed (exit %s):\n%s" % (name, process.returncode, stderr[-3000:]))
    result = json.loads(lines[0][len(zoo_flow.RESULT_TAG):])
    runtimes = [result.get("tflite", {}).get(k) for k in ("xnnpack", "builtin")]
    if all(runtimes):
      self.agreement[name] = " (%s, %d LSB)" % (
          " / ".join("%.1f%%" % (100 * r["equal_share"]) for r in runtimes),
          max(r["max_lsb"] for r in runtimes))
    return result


def start(items):
  """Starts the flows that the collected `items` read (their modules' ZOO_FLOW_COMMANDS)."""
  commands = {}
  for item in items:
    flags = getattr(getattr(item, "module", None), "ZOO_FLOW_COMMANDS", None)
    callspec = getattr(item, "callspec", None)
    if flags is not None and callspec is not None and "flow" in callspec.params:
      commands.setdefault(callspec.params["flow"], flags[callspec.params["flow"]])
  if not commands:
    return None
  return ZooRuns(commands, int(os.environ.get("QAT_REWRITE_ZOO_WORKERS", "2")))
