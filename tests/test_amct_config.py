"""The simple config (.cfg) and the per-layer JSON: fields, priorities, and errors that name
what is wrong."""

import json

import pytest
import tensorflow as tf

import ascend_models
from qat_rewrite import amct


def _graph():
  graph = tf.Graph()
  with graph.as_default():
    ascend_models.build(is_training=True)
  return graph


def _config(tmp_path, text, graph=None):
  cfg = tmp_path / "retrain.cfg"
  cfg.write_text(text)
  out = tmp_path / "config.json"
  amct.create_quant_retrain_config(str(out), graph or _graph(), config_defination=str(cfg))
  return json.loads(out.read_text())


GLOBAL = """
batch_num: 3
retrain_data_quant_config { ulq_quantize { dst_type: INT8 } }
retrain_weight_quant_config { arq_retrain { channel_wise: true } }
"""


def test_default_config_lists_every_quantizable_layer(tmp_path):
  out = tmp_path / "config.json"
  floats = amct.create_quant_retrain_config(str(out), _graph())
  doc = json.loads(out.read_text())
  assert doc["version"] == 1 and doc["batch_num"] == 1
  assert set(doc) - {"version", "batch_num"} == set(ascend_models.LAYERS)
  conv = doc["conv1/Conv2D"]
  assert conv["retrain_enable"] is True
  assert conv["retrain_data_config"] == {"algo": "ulq_quantize", "fixed_min": False,
                                         "dst_type": "INT8"}
  assert conv["retrain_weight_config"]["channel_wise"] is True
  assert doc["logits/MatMul"]["retrain_weight_config"]["channel_wise"] is False  # FC: per tensor
  assert {f.op for f in floats} == set(ascend_models.FLOAT_LAYERS)


def test_priorities_layer_over_type_over_global_and_skips(tmp_path):
  doc = _config(tmp_path, GLOBAL + """
skip_layers: "conv1/Conv2D"
quant_skip_types: "Conv2DBackpropInput"
override_layer_types {
  layer_type: "Conv2D"
  retrain_data_quant_config { ulq_quantize { fixed_min: true } }
  retrain_weight_quant_config { arq_retrain { channel_wise: false } }
}
override_layer_configs {
  layer_name: "pw/Conv2D"
  retrain_data_quant_config {
    ulq_quantize { clip_max_min { clip_max: 4.0 clip_min: -1.0 } }
  }
}
""")
  assert doc["batch_num"] == 3
  assert doc["conv1/Conv2D"]["retrain_enable"] is False
  assert doc["deconv/conv2d_transpose"]["retrain_enable"] is False
  pw = doc["pw/Conv2D"]
  assert pw["retrain_enable"] is True
  # Its own override replaces the data config; the weight config comes from its type.
  assert pw["retrain_data_config"] == {"algo": "ulq_quantize", "fixed_min": False,
                                       "dst_type": "INT8", "clip_max": 4.0, "clip_min": -1.0}
  assert pw["retrain_weight_config"]["channel_wise"] is False
  # The type override does not reach other types; the global config does.
  dw = doc["dw/depthwise"]
  assert dw["retrain_data_config"]["fixed_min"] is False
  assert dw["retrain_weight_config"]["channel_wise"] is True


@pytest.mark.parametrize("text, words", [
    (GLOBAL + "unknown_field: 1\n", ["unknown_field", "5:1"]),
    (GLOBAL.replace("dst_type: INT8", "clip_maximum: 1"), ["clip_maximum"]),
    ("retrain_weight_quant_config { arq_retrain { } }\n", ["retrain_data_quant_config",
                                                           "required"]),
    (GLOBAL + 'override_layer_configs { layer_name: "nope/Conv2D" }\n', ["nope/Conv2D",
                                                                         "not in the graph"]),
    (GLOBAL + 'skip_layers: "labels"\n', ["labels", "not a layer"]),
    (GLOBAL.replace("dst_type: INT8", "dst_type: INT4"), ["INT4", "INT8 only"]),
    (GLOBAL.replace("ulq_quantize { dst_type: INT8 }",
                    "ulq_quantize { clip_max_min { clip_max: 2 clip_min: 1 } }"),
     ["clip_min must be <= 0"]),
    (GLOBAL + 'override_layer_configs { layer_name: "logits/MatMul" '
     'retrain_weight_quant_config { arq_retrain { channel_wise: true } } }\n',
     ["logits/MatMul", "channel_wise"]),
])
def test_bad_simple_config_names_the_problem_and_writes_nothing(tmp_path, text, words):
  with pytest.raises(ValueError) as error:
    _config(tmp_path, text)
  for word in words:
    assert word in str(error.value)
  assert not (tmp_path / "config.json").exists()


def test_float_layer_in_skip_list_is_accepted(tmp_path):
  doc = _config(tmp_path, GLOBAL + 'skip_layers: "atrous"\n')
  assert "atrous" not in doc


def _json_with(tmp_path, change):
  out = tmp_path / "config.json"
  amct.create_quant_retrain_config(str(out), _graph())
  doc = json.loads(out.read_text())
  change(doc)
  out.write_text(json.dumps(doc))
  return str(out)


@pytest.mark.parametrize("change, words", [
    (lambda d: d["pw/Conv2D"].update(quant_bits=8), ["pw/Conv2D", "quant_bits"]),
    (lambda d: d["pw/Conv2D"]["retrain_data_config"].update(clip_max=3.0), ["clip_max",
                                                                            "clip_min"]),
    (lambda d: d["logits/MatMul"]["retrain_weight_config"].update(channel_wise=True),
     ["logits/MatMul", "channel_wise"]),
    (lambda d: d.update({"ghost/Conv2D": d["pw/Conv2D"]}), ["ghost/Conv2D", "not in the graph"]),
    (lambda d: d.update({"atrous": d["pw/Conv2D"]}), ["atrous", "dilation"]),
])
def test_bad_json_config_is_refused_and_graph_untouched(tmp_path, change, words):
  path = _json_with(tmp_path, change)
  graph = _graph()
  before = len(graph.get_operations())
  with pytest.raises(ValueError) as error:
    amct.create_quant_retrain_model(graph, path, str(tmp_path / "record.txt"))
  for word in words:
    assert word in str(error.value)
  assert len(graph.get_operations()) == before


def test_calibration_config_keywords_and_simple_config(tmp_path):
  out = tmp_path / "calib.json"
  amct.create_quant_config(str(out), _graph(), skip_layers=["pw/Conv2D"], batch_num=4,
                           activation_offset=False)
  doc = json.loads(out.read_text())
  assert (doc["batch_num"], doc["activation_offset"]) == (4, False)
  assert doc["pw/Conv2D"]["quant_enable"] is False and doc["conv1/Conv2D"]["quant_enable"]
  cfg = tmp_path / "calib.cfg"
  cfg.write_text('batch_num: 2\nskip_layer_types: "MatMul"\n')
  # The simple config wins over the keyword arguments, as in AMCT.
  amct.create_quant_config(str(out), _graph(), batch_num=9, config_defination=str(cfg))
  doc = json.loads(out.read_text())
  assert (doc["batch_num"], doc["activation_offset"]) == (2, True)
  assert doc["logits/MatMul"]["quant_enable"] is False
  cfg.write_text("batch_num: 2\nmax_percentile: 0.9\n")
  with pytest.raises(ValueError, match="max_percentile"):
    amct.create_quant_config(str(out), _graph(), config_defination=str(cfg))
