"""native_output.dropping: what TensorFlow's C++ writes to a file descriptor is filtered
line by line, and everything else still reaches the user, even when the block raises."""

import os

import pytest

from qat_rewrite import native_output


def test_known_banners_are_dropped_and_other_lines_pass(capfd):
  with native_output.dropping(2, native_output.STARTUP_BANNERS):
    os.write(2, b"WARNING: All log messages before absl::InitializeLog() is called are written "
                b"to STDERR\nI0000 00:00:1.2 1 port.cc:153] oneDNN custom operations are on. Y\n"
                b"a real warning\n")
  assert capfd.readouterr().err == "a real warning\n"


def test_the_lines_of_a_failing_block_are_kept(capfd):
  with pytest.raises(RuntimeError):
    with native_output.dropping(1, native_output.CONVERTER_CHATTER):
      os.write(1, b"fully_quantize: 0, inference_type: 6\nerror: op not supported\n")
      raise RuntimeError("converter failed")
  assert capfd.readouterr().out == "error: op not supported\n"
