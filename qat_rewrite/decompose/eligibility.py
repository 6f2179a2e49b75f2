"""Which Conv2D ops may be decomposed: AMCT's conditions, plus what this rewrite needs.

AMCT: group = 1, dilation (1, 1), stride < 3, kernel_h > 2 and kernel_w > 2. Here also: at least
16 input and output channels (a stem conv on RGB or grey pixels is cheap and sensitive), a weight
that is a plain variable read (the decomposed kernels replace it as variables), and a conv of
the forward model (not a gradient op).
"""

from qat_rewrite.graph.view import VARIABLE_TYPES, variable_source

MIN_CHANNELS = 16
_OPTIMIZER_PREFIXES = ("Apply", "ResourceApply", "SparseApply", "ResourceSparseApply")


def is_training_op(op):
  """A gradient or optimizer op: the rewrite leaves these alone."""
  return (op.name.startswith("gradients") or "/gradients" in op.name
          or op.type.startswith(_OPTIMIZER_PREFIXES))


def forward_convs(graph):
  return [op for op in graph.get_operations() if op.type == "Conv2D" and not is_training_op(op)]


def weight_variable(conv):
  """The variable op of the conv's weight, or None if the weight is not a plain read."""
  source = variable_source(conv.inputs[1])
  return source if source is not None and source.type in VARIABLE_TYPES else None


def spatial(values, data_format):
  """(h, w) of a 4-vector of strides or dilations."""
  return (values[2], values[3]) if data_format == "NCHW" else (values[1], values[2])


def why_not(conv):
  """The reason `conv` cannot be decomposed, or None if it can."""
  data_format = conv.get_attr("data_format").decode()
  kernel = conv.inputs[1].shape
  if not kernel.is_fully_defined():
    return "the kernel shape is not static"
  kh, kw, c_in, _ = kernel.as_list()
  channels = conv.inputs[0].shape
  if channels.rank == 4:
    c = channels[1] if data_format == "NCHW" else channels[3]
    if c is not None and c != c_in:
      return "grouped convolution (group = %d); AMCT needs group = 1" % (c // c_in)
  if spatial(conv.get_attr("dilations"), data_format) != (1, 1):
    return "dilation %s; AMCT needs (1, 1)" % (spatial(conv.get_attr("dilations"),
                                                       data_format),)
  stride = spatial(conv.get_attr("strides"), data_format)
  if max(stride) >= 3:
    return "stride %s; AMCT needs stride < 3" % (stride,)
  if kh <= 2 or kw <= 2:
    return "kernel %dx%d; AMCT needs kernel_h > 2 and kernel_w > 2" % (kh, kw)
  if min(c_in, kernel[3]) < MIN_CHANNELS:
    return ("%d input and %d output channels; decomposing fewer than %d saves little and "
            "AMCT recommends it for kernels of (64, 64, 3, 3) and up"
            % (c_in, kernel[3], MIN_CHANNELS))
  if weight_variable(conv) is None:
    return "the weight %s is not a plain variable read" % conv.inputs[1].op.name
  return None
