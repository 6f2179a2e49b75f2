"""AMCT's protobuf-text schemas (simple configs, record file), built as descriptors at run time.

AMCT's .cfg and record files are protobuf text. Parsing them with protobuf's own text_format
against a descriptor gives exactly AMCT's syntax (comments, `field: value`, `field { ... }`,
repeated fields) and errors with line and column that name an unknown field, with no
hand-written parser and no .proto compilation step. Field numbers only matter to the binary
format, which is never used here.
"""

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory, text_format

_F = descriptor_pb2.FieldDescriptorProto
_PACKAGE = "qat_rewrite.amct"
_SCALARS = {"float": _F.TYPE_FLOAT, "bool": _F.TYPE_BOOL, "string": _F.TYPE_STRING,
            "uint32": _F.TYPE_UINT32, "int32": _F.TYPE_INT32}

# message -> [(field, type, repeated, default)]; a type that is not a scalar names a message
# or the DataType enum.
_MESSAGES = {
    # The QAT simple config (AMCT's retrain_config_tf.proto).
    "ClipMaxMin": [("clip_max", "float", False, None), ("clip_min", "float", False, None)],
    "ULQuantize": [("clip_max_min", "ClipMaxMin", False, None), ("fixed_min", "bool", False, None),
                   ("dst_type", "DataType", False, None)],
    "ARQRetrain": [("channel_wise", "bool", False, "true"), ("dst_type", "DataType", False, None)],
    "RetrainDataQuantConfig": [("ulq_quantize", "ULQuantize", False, None)],
    "RetrainWeightQuantConfig": [("arq_retrain", "ARQRetrain", False, None)],
    "RetrainOverrideLayer": [("layer_name", "string", False, None),
                             ("retrain_data_quant_config", "RetrainDataQuantConfig", False, None),
                             ("retrain_weight_quant_config", "RetrainWeightQuantConfig", False,
                              None)],
    "RetrainOverrideLayerType": [("layer_type", "string", False, None),
                                 ("retrain_data_quant_config", "RetrainDataQuantConfig", False,
                                  None),
                                 ("retrain_weight_quant_config", "RetrainWeightQuantConfig",
                                  False, None)],
    "AMCTRetrainConfig": [("batch_num", "uint32", False, None),
                          ("retrain_data_quant_config", "RetrainDataQuantConfig", False, None),
                          ("retrain_weight_quant_config", "RetrainWeightQuantConfig", False, None),
                          ("skip_layers", "string", True, None),
                          ("skip_layer_types", "string", True, None),
                          ("quant_skip_layers", "string", True, None),
                          ("quant_skip_types", "string", True, None),
                          ("override_layer_configs", "RetrainOverrideLayer", True, None),
                          ("override_layer_types", "RetrainOverrideLayerType", True, None)],
    # The calibration simple config (a subset of AMCT's calibration_config_tf.proto).
    "AMCTConfig": [("batch_num", "uint32", False, None),
                   ("activation_offset", "bool", False, "true"),
                   ("skip_layers", "string", True, None),
                   ("skip_layer_types", "string", True, None)],
    # The record file (AMCT's scale_offset_record_tf.proto).
    "SingleLayerRecord": [("scale_d", "float", False, None), ("offset_d", "int32", False, None),
                          ("scale_w", "float", True, None), ("offset_w", "int32", True, None),
                          ("shift_bit", "uint32", True, None),
                          ("skip_fusion", "bool", False, "false"),
                          ("act_type", "string", False, "INT8"),
                          ("wts_type", "string", False, "INT8")],
    "MapFiledEntry": [("key", "string", False, None), ("value", "SingleLayerRecord", False, None)],
    "ScaleOffsetRecord": [("record", "MapFiledEntry", True, None)],
}
DATA_TYPES = ("INT8", "INT4")


def _file_descriptor():
  proto = descriptor_pb2.FileDescriptorProto(name="qat_rewrite_amct.proto", package=_PACKAGE,
                                             syntax="proto2")
  enum = proto.enum_type.add(name="DataType")
  for number, name in enumerate(DATA_TYPES):
    enum.value.add(name=name, number=number)
  for message, fields in _MESSAGES.items():
    m = proto.message_type.add(name=message)
    for number, (name, kind, repeated, default) in enumerate(fields, start=1):
      f = m.field.add(name=name, number=number,
                      label=_F.LABEL_REPEATED if repeated else _F.LABEL_OPTIONAL)
      if kind in _SCALARS:
        f.type = _SCALARS[kind]
      elif kind == "DataType":
        f.type, f.type_name = _F.TYPE_ENUM, ".%s.DataType" % _PACKAGE
      else:
        f.type, f.type_name = _F.TYPE_MESSAGE, ".%s.%s" % (_PACKAGE, kind)
      if default is not None:
        f.default_value = default
  return proto


_POOL = descriptor_pool.DescriptorPool()
_POOL.Add(_file_descriptor())


def message_class(name):
  return message_factory.GetMessageClass(_POOL.FindMessageTypeByName("%s.%s" % (_PACKAGE, name)))


def parse(name, text, source):
  """`text` parsed as message `name`; ValueError naming `source`, line and field otherwise."""
  message = message_class(name)()
  try:
    text_format.Parse(text, message)
  except text_format.ParseError as e:
    raise ValueError("%s: %s" % (source, e)) from None
  return message


def read(name, path, what):
  """The file at `path` parsed as message `name`; `what` names the file in errors."""
  try:
    with open(path) as f:
      text = f.read()
  except OSError as e:
    raise ValueError("cannot read %s %r: %s" % (what, path, e.strerror or e)) from None
  return parse(name, text, "%s %s" % (what, path))


def to_text(message):
  return text_format.MessageToString(message)


def data_type_name(value):
  return DATA_TYPES[value]
