"""The record file: AMCT's ScaleOffsetRecord text format, read back exactly; bad records refused."""

import numpy as np
import pytest

from qat_rewrite.targets.ascend import record

RECORDS = {
    "MobilenetV2/expanded_conv_11/project/Conv2D": record.LayerRecord(
        0.0235294122, -128, (0.0125, 0.5, 3.0e-5), (0, 0, 0)),
    "logits/MatMul": record.LayerRecord(1.0 / 3.0, 5, (0.007,), (0,)),
}


def test_round_trip_is_exact_in_float32(tmp_path):
  path = tmp_path / "record.txt"
  record.write(str(path), RECORDS)
  back = record.read(str(path))
  assert list(back) == list(RECORDS)
  for name, r in RECORDS.items():
    assert np.float32(back[name].scale_d) == np.float32(r.scale_d)
    assert back[name].offset_d == r.offset_d
    assert np.array_equal(np.float32(back[name].scale_w), np.float32(r.scale_w))
    assert back[name].offset_w == r.offset_w


def test_text_is_amct_format(tmp_path):
  path = tmp_path / "record.txt"
  record.write(str(path), RECORDS)
  text = path.read_text()
  assert text.startswith('record {\n  key: "MobilenetV2/expanded_conv_11/project/Conv2D"\n'
                         '  value {\n    scale_d: 0.02352941')
  assert text.count("scale_w:") == 4 and text.count("offset_w: 0") == 4
  assert "offset_d: -128" in text


def test_reads_amct_written_record_with_optional_fields(tmp_path):
  path = tmp_path / "record.txt"
  path.write_text('record {\n key: "conv/Conv2D"\n value {\n  scale_d: 0.5 offset_d: 3\n'
                  '  scale_w: 0.1 offset_w: 0 shift_bit: 1 skip_fusion: true\n'
                  '  act_type: "INT8" wts_type: "INT8"\n }\n}\n')
  r = record.read(str(path))["conv/Conv2D"]
  assert (r.scale_d, r.offset_d, r.shift_bit, r.skip_fusion) == (0.5, 3, (1,), True)


def test_missing_layer_is_named(tmp_path):
  path = tmp_path / "record.txt"
  record.write(str(path), RECORDS)
  with pytest.raises(ValueError, match="no entry for layer 'conv1/Conv2D'"):
    record.layer(record.read(str(path)), "conv1/Conv2D", str(path))


@pytest.mark.parametrize("value, words", [
    ("scale_d: 0.5 offset_d: 3", ["needs scale_d, offset_d and scale_w"]),
    ("scale_d: 0.5 offset_d: 300 scale_w: 1", ["offset_d 300"]),
    ("scale_d: -0.5 offset_d: 3 scale_w: 1", ["positive"]),
    ("scale_d: 0.5 offset_d: 3 scale_w: 1 offset_w: 2", ["offset_w"]),
    ('scale_d: 0.5 offset_d: 3 scale_w: 1 wts_type: "INT4"', ["INT4"]),
    ("scale_d: 0.5 offset_d: 3 scale_w: 1 scale_x: 2", ["scale_x"]),
])
def test_bad_records_name_file_layer_and_field(tmp_path, value, words):
  path = tmp_path / "record.txt"
  path.write_text('record { key: "a/Conv2D" value { %s } }' % value)
  with pytest.raises(ValueError) as error:
    record.read(str(path))
  for word in words + [str(path)]:
    assert word in str(error.value)
