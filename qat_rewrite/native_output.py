"""Keeps TensorFlow's native start-up banners and converter chatter off the user's terminal.

TensorFlow 2.21 prints its oneDNN, CUDA-driver and CPU-feature notices from C++ while it is
imported, before absl logging is set up, so `TF_CPP_MIN_LOG_LEVEL` cannot silence them; the
TFLite converter's calibration prints "fully_quantize: ..." the same way. Python cannot
intercept what C++ writes to a file descriptor, so `dropping(fd, patterns)` points the
descriptor at a pipe for the duration of a block and forwards every line that matches no
pattern as it arrives: progress lines stay live, and an error's own lines still reach the user.
"""

import contextlib
import ctypes
import os
import re
import sys
import threading

STARTUP_BANNERS = (
    r"^WARNING: All log messages before absl::InitializeLog\(\) is called",
    r"\] oneDNN custom operations are on",
    r"\] Could not find cuda drivers on your machine",
    r"\] This TensorFlow binary is optimized to use available CPU instructions",
    r"^To enable the following instructions: .* rebuild TensorFlow",
)
CONVERTER_CHATTER = (r"^fully_quantize: ",)


@contextlib.contextmanager
def dropping(fd, patterns):
  """Within the block, lines written to file descriptor `fd` (1 or 2) that match one of the
  regular expressions `patterns` are dropped; the others pass on unchanged."""
  stream = sys.stdout if fd == 1 else sys.stderr
  try:
    saved = os.dup(fd)
  except OSError:  # no such descriptor (a daemon): nothing to keep clean
    yield
    return
  compiled = [re.compile(p) for p in patterns]
  read_end, write_end = os.pipe()

  def forward():
    with os.fdopen(read_end, "rb") as lines:
      for line in lines:
        if not any(p.search(line.decode("utf-8", "replace")) for p in compiled):
          os.write(saved, line)

  forwarder = threading.Thread(target=forward, name="native_output", daemon=True)
  forwarder.start()
  stream.flush()
  os.dup2(write_end, fd)
  os.close(write_end)
  try:
    yield
  finally:
    stream.flush()
    _flush_c_streams()  # C++ output still in stdio's buffers belongs to the block
    os.dup2(saved, fd)  # closes the pipe's last write end: the forwarder reads to its end
    forwarder.join(timeout=10)
    os.close(saved)


def _flush_c_streams():
  try:
    ctypes.CDLL(None).fflush(None)
  except (OSError, AttributeError):  # no C library to ask (not Linux or macOS)
    pass
