"""The record file: AMCT's `ScaleOffsetRecord` in protobuf text, one entry per layer.

    record {
      key: "model/conv1/Conv2D"
      value { scale_d: 0.0235294122 offset_d: -128 scale_w: 0.01 scale_w: 0.02 offset_w: 0
              offset_w: 0 }
    }

scale_d/offset_d quantize the layer's input data; scale_w/offset_w its weights, one value
(per tensor) or one per output channel; offset_w is always 0. shift_bit, skip_fusion,
act_type and wts_type are read as AMCT defines them (only INT8 is supported here).

A layer without weights (AvgPool) is recorded with scale_w [1.0] and offset_w [0]. That is our
choice, not confirmed from AMCT: it keeps every record complete (AMCT's reader wants scale_w)
and keeps AscendDequant's deq_scale = scale_d·scale_w true for every layer.
"""

import dataclasses
import os
from typing import Tuple

import numpy as np

from qat_rewrite import files
from qat_rewrite.targets.ascend import proto


NO_WEIGHTS_SCALE_W = (1.0,)


@dataclasses.dataclass(frozen=True)
class LayerRecord:
  scale_d: float
  offset_d: int
  scale_w: Tuple[float, ...]
  offset_w: Tuple[int, ...]
  shift_bit: Tuple[int, ...] = ()
  skip_fusion: bool = False


def to_text(records):
  """{layer: LayerRecord} in the record file's text format."""
  message = proto.message_class("ScaleOffsetRecord")()
  for key in records:
    r = records[key]
    entry = message.record.add(key=key)
    entry.value.scale_d = float(r.scale_d)
    entry.value.offset_d = int(r.offset_d)
    entry.value.scale_w.extend(float(s) for s in r.scale_w)
    entry.value.offset_w.extend(int(o) for o in r.offset_w)
    entry.value.shift_bit.extend(int(s) for s in r.shift_bit)
    if r.skip_fusion:
      entry.value.skip_fusion = True
  return proto.to_text(message)


def write(path, records):
  """Writes the record file atomically (a temporary file renamed over `path`)."""
  directory, name = os.path.split(os.path.abspath(path))
  files.write_all(directory, {name: to_text(records).encode()})


def read(path):
  """{layer: LayerRecord} from a record file; ValueError naming the file and layer if bad."""
  message = proto.read("ScaleOffsetRecord", path, "record file")
  records = {}
  for entry in message.record:
    v, where = entry.value, "record file %s, layer %r" % (path, entry.key)
    if not entry.key:
      raise ValueError("record file %s: an entry has no key (layer name)" % path)
    if entry.key in records:
      raise ValueError("%s: the layer appears twice" % where)
    if not v.HasField("scale_d") or not v.HasField("offset_d") or not v.scale_w:
      raise ValueError("%s: needs scale_d, offset_d and scale_w" % where)
    if not np.isfinite(v.scale_d) or v.scale_d <= 0 or not all(
        np.isfinite(s) and s > 0 for s in v.scale_w):
      raise ValueError("%s: scales must be positive and finite" % where)
    if not -128 <= v.offset_d <= 127:
      raise ValueError("%s: offset_d %d is outside the int8 range" % (where, v.offset_d))
    offset_w = tuple(v.offset_w) or (0,) * len(v.scale_w)
    if len(offset_w) != len(v.scale_w) or any(offset_w):
      raise ValueError("%s: offset_w must hold one 0 per scale_w (weights are symmetric)" % where)
    for field in ("act_type", "wts_type"):
      if getattr(v, field) != "INT8":
        raise ValueError("%s: %s %r is not supported (INT8 only)" % (where, field,
                                                                    getattr(v, field)))
    records[entry.key] = LayerRecord(v.scale_d, v.offset_d, tuple(v.scale_w), offset_w,
                                     tuple(v.shift_bit), v.skip_fusion)
  return records


def layer(records, name, path):
  """The record of layer `name`; ValueError naming the layer if the file lacks it."""
  if name not in records:
    raise ValueError("record file %s has no entry for layer %r (it holds %d layers: %s); run "
                     "the record op (retrain_ops[-1]) or the calibration batches of this model "
                     "first" % (path, name, len(records), ", ".join(sorted(records)[:5]) or "none"))
  return records[name]
