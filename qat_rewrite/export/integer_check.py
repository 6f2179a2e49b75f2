"""Refuses a TFLite model in which any computation stays in floating point.

TF 2.21's converter no longer fails on a tensor without a range: it silently keeps the op
that produces it in float (DEQUANTIZE, float op, QUANTIZE). A user shipping to an integer-only
accelerator would find out on the device, so every tensor of the model is checked here.
"""

import contextlib
import io

import numpy as np

_FLOAT_TYPES = (np.float16, np.float32, np.float64)


class NotFullyIntegerError(ValueError):
  """The converted model computes something in float; the message names it."""


def interpreter(model_content, delegates=False):
  """A tf.lite.Interpreter for `model_content`, quiet about its deprecation warning.

  Without delegates the tensor and op details describe the model itself, not XNNPACK's
  partition of it.
  """
  import tensorflow as tf  # pylint: disable=import-outside-toplevel
  import warnings  # pylint: disable=import-outside-toplevel
  kwargs = {}
  if not delegates:
    kwargs["experimental_op_resolver_type"] = (
        tf.lite.experimental.OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES)
  with warnings.catch_warnings(), contextlib.redirect_stderr(io.StringIO()):
    warnings.simplefilter("ignore")
    return tf.lite.Interpreter(model_content=model_content, **kwargs)


def float_tensors(model_content):
  """[(tensor name, dtype name, [op descriptions])] for every float tensor of the model."""
  interp = interpreter(model_content)
  tensors = {d["index"]: d for d in interp.get_tensor_details()}
  users = {}
  for op in interp._get_ops_details():  # pylint: disable=protected-access
    for role, indices in (("in", op["inputs"]), ("out", op["outputs"])):
      for index in indices:
        if index >= 0:
          users.setdefault(int(index), []).append("%s %s (op %d)" % (
              op["op_name"], "reads it" if role == "in" else "writes it", op["index"]))
  found = []
  for index, detail in sorted(tensors.items()):
    if np.dtype(detail["dtype"]).type in _FLOAT_TYPES:
      found.append((detail["name"], np.dtype(detail["dtype"]).name, users.get(index, [])))
  return found


def check_fully_integer(model_content):
  """Raises NotFullyIntegerError naming every float tensor and the ops around it."""
  found = float_tensors(model_content)
  if not found:
    return
  lines = ["  %s (%s): %s" % (name, dtype, "; ".join(ops) or "a model input or constant")
           for name, dtype, ops in found[:20]]
  more = "\n  ... and %d more" % (len(found) - 20) if len(found) > 20 else ""
  raise NotFullyIntegerError(
      "the TFLite model is not fully integer: %d tensor(s) stay float, so the ops that read "
      "or write them run in float:\n%s%s\nUsually a tensor without a FakeQuant range: check "
      "the QuantizeReport's float ops, or that the named outputs are quantized."
      % (len(found), "\n".join(lines), more))
