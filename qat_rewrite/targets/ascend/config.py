"""AMCT's configs: the simple .cfg a user writes, and the per-layer JSON the tools write.

Retrain (`create_quant_retrain_config`) priority, as AMCT documents it: a layer in
`skip_layers`/`quant_skip_layers` or of a type in `skip_layer_types`/`quant_skip_types` is not
retrained; otherwise its data and weight configs come from its `override_layer_configs` entry,
else from the `override_layer_types` entry of its op type, else from the global configs. An
override replaces a whole data or weight config; what it leaves out comes from the next level.
"""

import dataclasses
import json
import os
from typing import Optional

from qat_rewrite import files
from qat_rewrite.targets.ascend import layers as ascend_layers
from qat_rewrite.targets.ascend import proto

VERSION = 1
DATA_ALGO = "ulq_quantize"
WEIGHT_ALGO = "arq_retrain"


@dataclasses.dataclass(frozen=True)
class DataConfig:
  clip_max: Optional[float] = None
  clip_min: Optional[float] = None
  fixed_min: bool = False


@dataclasses.dataclass(frozen=True)
class WeightConfig:
  channel_wise: bool = True


@dataclasses.dataclass(frozen=True)
class LayerConfig:
  retrain_enable: bool
  data: DataConfig
  weight: WeightConfig


# ---- the simple config (.cfg) ----

def _data_config(message, where):
  if not message.HasField("ulq_quantize"):
    raise ValueError("%s: retrain_data_quant_config needs ulq_quantize { ... }" % where)
  ulq = message.ulq_quantize
  _check_int8(ulq, where + ".ulq_quantize")
  clip_max = clip_min = None
  if ulq.HasField("clip_max_min"):
    bounds = ulq.clip_max_min
    if not bounds.HasField("clip_max") or not bounds.HasField("clip_min"):
      raise ValueError("%s.ulq_quantize.clip_max_min needs both clip_max and clip_min" % where)
    clip_max, clip_min = bounds.clip_max, bounds.clip_min
  return _checked_data(DataConfig(clip_max, clip_min, ulq.fixed_min), where)


def _weight_config(message, where):
  if not message.HasField("arq_retrain"):
    raise ValueError("%s: retrain_weight_quant_config needs arq_retrain { ... }" % where)
  _check_int8(message.arq_retrain, where + ".arq_retrain")
  return WeightConfig(message.arq_retrain.channel_wise)


def _check_int8(message, where):
  if message.HasField("dst_type") and proto.data_type_name(message.dst_type) != "INT8":
    raise ValueError("%s.dst_type %s: quantization-aware training supports INT8 only"
                     % (where, proto.data_type_name(message.dst_type)))


def _checked_data(data, where):
  if data.clip_max is None:
    return data
  if not data.clip_max > 0:
    raise ValueError("%s: clip_max must be > 0, got %g" % (where, data.clip_max))
  if not data.fixed_min and not data.clip_min <= 0:
    raise ValueError("%s: clip_min must be <= 0 (the range holds 0), got %g; set fixed_min: "
                     "true to pin it at 0" % (where, data.clip_min))
  return data


def retrain_layer_configs(graph, config_defination=None):
  """(batch_num, {layer name: LayerConfig}, report of float layers) for `graph`."""
  found = ascend_layers.find_layers(graph)
  data, weight, batch_num = DataConfig(), WeightConfig(), 1
  skip, skip_types, by_name, by_type = set(), set(), {}, {}
  if config_defination is not None:
    cfg = proto.read("AMCTRetrainConfig", config_defination, "config_defination")
    where = "config_defination %s" % config_defination
    for field in ("retrain_data_quant_config", "retrain_weight_quant_config"):
      if not cfg.HasField(field):
        raise ValueError("%s: the global %s is required" % (where, field))
    data = _data_config(cfg.retrain_data_quant_config, where + ": retrain_data_quant_config")
    weight = _weight_config(cfg.retrain_weight_quant_config,
                            where + ": retrain_weight_quant_config")
    batch_num = cfg.batch_num if cfg.HasField("batch_num") else 1
    if batch_num < 1:
      raise ValueError("%s: batch_num must be >= 1" % where)
    skip = set(cfg.skip_layers) | set(cfg.quant_skip_layers)
    skip_types = set(cfg.skip_layer_types) | set(cfg.quant_skip_types)
    for entry in cfg.override_layer_configs:
      by_name[_key(entry.layer_name, "layer_name", by_name, where)] = _override(entry, where)
    for entry in cfg.override_layer_types:
      by_type[_key(entry.layer_type, "layer_type", by_type, where)] = _override(entry, where)
    _check_names(graph, found, skip | set(by_name), where)

  layers = {}
  for op in found.layers:
    enabled = op.name not in skip and op.type not in skip_types
    layer_data, layer_weight = data, weight
    for level in (by_type.get(op.type), by_name.get(op.name)):  # lowest priority first
      if level:
        layer_data = level[0] or layer_data
        layer_weight = level[1] or layer_weight
    if layer_weight.channel_wise and not ascend_layers.supports_channel_wise(op):
      if op.name in by_name and by_name[op.name][1] and by_name[op.name][1].channel_wise:
        raise ValueError("%s: override_layer_configs %r asks channel_wise for a %s; AMCT "
                         "allows it only for convolutions" % (where, op.name, op.type))
      layer_weight = WeightConfig(channel_wise=False)
    layers[op.name] = LayerConfig(enabled, layer_data, layer_weight)
  return batch_num, layers, found


def _key(value, field, seen, where):
  if not value:
    raise ValueError("%s: an override entry has no %s" % (where, field))
  if value in seen:
    raise ValueError("%s: %s %r is overridden twice" % (where, field, value))
  return value


def _override(entry, where):
  where = "%s: override for %r" % (where, entry.layer_name if hasattr(entry, "layer_name")
                                   else entry.layer_type)
  data = weight = None
  if entry.HasField("retrain_data_quant_config"):
    data = _data_config(entry.retrain_data_quant_config, where)
  if entry.HasField("retrain_weight_quant_config"):
    weight = _weight_config(entry.retrain_weight_quant_config, where)
  return data, weight


def _check_names(graph, found, names, where):
  """Layer names must be ops of the graph; a float layer named there only gets a warning."""
  known = {op.name for op in found.layers}
  floats = {f.op for f in found.float_ops}
  for name in sorted(names):
    if name not in known and name not in floats:
      ops = {op.name for op in graph.get_operations()}
      what = "is not a layer AMCT quantizes" if name in ops else "is not in the graph"
      raise ValueError("%s: layer %r %s; quantizable layers: %s"
                       % (where, name, what, ", ".join(sorted(known)[:8])))


# ---- the per-layer JSON ----

def retrain_json(batch_num, layers):
  doc = {"version": VERSION, "batch_num": batch_num}
  for name, c in layers.items():
    data = {"algo": DATA_ALGO, "fixed_min": c.data.fixed_min, "dst_type": "INT8"}
    if c.data.clip_max is not None:
      data.update(clip_max=c.data.clip_max, clip_min=c.data.clip_min)
    doc[name] = {"retrain_enable": c.retrain_enable, "retrain_data_config": data,
                 "retrain_weight_config": {"algo": WEIGHT_ALGO,
                                           "channel_wise": c.weight.channel_wise,
                                           "dst_type": "INT8"}}
  return doc


_LAYER_KEYS = {"retrain_enable", "retrain_data_config", "retrain_weight_config"}
_DATA_KEYS = {"algo", "clip_max", "clip_min", "fixed_min", "dst_type"}
_WEIGHT_KEYS = {"algo", "channel_wise", "dst_type"}


def read_retrain_json(path):
  """(batch_num, {layer: LayerConfig}) from a retrain JSON config, checked key by key."""
  doc = _load_json(path)
  _expect(doc.get("version") == VERSION, path, "version must be %d" % VERSION)
  batch_num = doc.get("batch_num", 1)
  _expect(_is_int(batch_num) and batch_num >= 1, path, "batch_num must be an integer >= 1")
  layers = {}
  for name, entry in doc.items():
    if name in ("version", "batch_num"):
      continue
    where = "layer %r" % name
    _expect(isinstance(entry, dict), path, "%s must be an object" % where)
    _unknown(entry, _LAYER_KEYS, path, where)
    _expect(isinstance(entry.get("retrain_enable"), bool), path,
            "%s: retrain_enable must be true or false" % where)
    data, weight = entry.get("retrain_data_config"), entry.get("retrain_weight_config")
    _expect(isinstance(data, dict) and data.get("algo") == DATA_ALGO, path,
            "%s: retrain_data_config.algo must be %r" % (where, DATA_ALGO))
    _expect(isinstance(weight, dict) and weight.get("algo") == WEIGHT_ALGO, path,
            "%s: retrain_weight_config.algo must be %r" % (where, WEIGHT_ALGO))
    _unknown(data, _DATA_KEYS, path, where + ".retrain_data_config")
    _unknown(weight, _WEIGHT_KEYS, path, where + ".retrain_weight_config")
    for part, sub in (("retrain_data_config", data), ("retrain_weight_config", weight)):
      _expect(sub.get("dst_type", "INT8") == "INT8", path, "%s.%s.dst_type: INT8 only"
              % (where, part))
    bounds = [data.get("clip_max"), data.get("clip_min")]
    _expect(bounds.count(None) in (0, 2) and all(b is None or _is_number(b) for b in bounds),
            path, "%s: give both clip_max and clip_min as numbers, or neither" % where)
    for flag, sub in (("fixed_min", data), ("channel_wise", weight)):
      _expect(isinstance(sub.get(flag, False), bool), path, "%s: %s must be true or false"
              % (where, flag))
    layer_data = DataConfig(bounds[0], bounds[1], data.get("fixed_min", False))
    try:
      _checked_data(layer_data, "config file %s: %s" % (path, where))
    except ValueError:
      raise
    layers[name] = LayerConfig(entry["retrain_enable"], layer_data,
                               WeightConfig(weight.get("channel_wise", True)))
  return batch_num, layers


def write_json(path, doc):
  directory, name = os.path.split(os.path.abspath(path))
  files.write_all(directory, {name: (json.dumps(doc, indent=4) + "\n").encode()})


def _load_json(path):
  try:
    with open(path) as f:
      doc = json.load(f)
  except OSError as e:
    raise ValueError("cannot read config file %r: %s" % (path, e.strerror or e)) from None
  except json.JSONDecodeError as e:
    raise ValueError("config file %s is not valid JSON: %s" % (path, e)) from None
  _expect(isinstance(doc, dict), path, "the top level must be an object")
  return doc


def _expect(ok, path, message):
  if not ok:
    raise ValueError("config file %s: %s" % (path, message))


def _unknown(entry, allowed, path, where):
  extra = sorted(set(entry) - allowed)
  if extra:
    raise ValueError("config file %s: %s has unknown field(s) %s; allowed: %s"
                     % (path, where, ", ".join(map(repr, extra)), ", ".join(sorted(allowed))))


def _is_int(value):
  return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value):
  return isinstance(value, (int, float)) and not isinstance(value, bool)


# ---- calibration (post-training) ----

@dataclasses.dataclass(frozen=True)
class CalibrationLayer:
  quant_enable: bool
  channel_wise: bool


def calibration_layer_configs(graph, skip_layers, batch_num, activation_offset,
                              config_defination):
  """(batch_num, activation_offset, {layer: CalibrationLayer}, found) for create_quant_config."""
  found = ascend_layers.find_layers(graph)
  skip_types = set()
  where = "create_quant_config"
  if config_defination is not None:
    cfg = proto.read("AMCTConfig", config_defination, "config_defination")
    where = "config_defination %s" % config_defination
    batch_num = cfg.batch_num if cfg.HasField("batch_num") else 1
    activation_offset = cfg.activation_offset
    skip_layers, skip_types = list(cfg.skip_layers), set(cfg.skip_layer_types)
  skip_layers = list(skip_layers or [])
  if not all(isinstance(s, str) for s in skip_layers):
    raise ValueError("skip_layers must be a list of op names, got %r" % (skip_layers,))
  if not _is_int(batch_num) or batch_num < 1:
    raise ValueError("%s: batch_num must be an integer >= 1, got %r" % (where, batch_num))
  if not isinstance(activation_offset, bool):
    raise ValueError("activation_offset must be True or False, got %r" % (activation_offset,))
  _check_names(graph, found, set(skip_layers), where)
  layers = {op.name: CalibrationLayer(op.name not in skip_layers and op.type not in skip_types,
                                      ascend_layers.supports_channel_wise(op))
            for op in found.layers}
  return batch_num, activation_offset, layers, found


def calibration_json(batch_num, activation_offset, layers):
  doc = {"version": VERSION, "batch_num": batch_num, "activation_offset": activation_offset}
  for name, c in layers.items():
    doc[name] = {"quant_enable": c.quant_enable,
                 "activation_quant_params": {"act_algo": "min_max", "with_offset":
                                             activation_offset},
                 "weight_quant_params": {"wts_algo": "arq_quantize",
                                         "channel_wise": c.channel_wise}}
  return doc


def read_calibration_json(path):
  """(batch_num, activation_offset, {layer: CalibrationLayer})."""
  doc = _load_json(path)
  _expect(doc.get("version") == VERSION, path, "version must be %d" % VERSION)
  batch_num, offset = doc.get("batch_num", 1), doc.get("activation_offset", True)
  _expect(_is_int(batch_num) and batch_num >= 1, path, "batch_num must be an integer >= 1")
  _expect(isinstance(offset, bool), path, "activation_offset must be true or false")
  layers = {}
  for name, entry in doc.items():
    if name in ("version", "batch_num", "activation_offset"):
      continue
    where = "layer %r" % name
    _expect(isinstance(entry, dict), path, "%s must be an object" % where)
    _unknown(entry, {"quant_enable", "activation_quant_params", "weight_quant_params"}, path,
             where)
    weight = entry.get("weight_quant_params", {})
    _expect(isinstance(entry.get("quant_enable"), bool), path,
            "%s: quant_enable must be true or false" % where)
    _expect(isinstance(weight, dict) and isinstance(weight.get("channel_wise", True), bool),
            path, "%s: weight_quant_params.channel_wise must be true or false" % where)
    layers[name] = CalibrationLayer(entry["quant_enable"], weight.get("channel_wise", True))
  return batch_num, offset, layers
