"""Drop-in replacement for `tf.contrib.quantize`: `from qat_rewrite import quantize`.

Each function rewrites `input_graph` (the default graph when None) in place, as
contrib did, and also returns a `QuantizeReport` saying what was quantized and
what stayed in float. Call the training rewrite before building the optimizer,
and run the variable initializer after it: it adds variables (the ranges).

A "step" for `quant_delay` and `freeze_bn_delay` is one session.run that
evaluates the rewritten graph: the `fake_quantization_step` counter advances each
time, as in contrib. `quant_delay=N` keeps the first N runs float.

A rewrite that fails, for whatever reason, leaves the graph exactly as it was.
"""

import tensorflow as tf

from qat_rewrite import distribute
from qat_rewrite.graph.frozen import resolve_checkpoint
from qat_rewrite.passes import rewrite as rewrite_pass
from qat_rewrite.passes import checkpoint as checkpoint_checks
from qat_rewrite.passes.options import RewriteOptions
from qat_rewrite.passes.transaction import all_or_nothing

_REWRITE = all_or_nothing(rewrite_pass.rewrite)


def _rewrite(graph, **options):
  """The rewrite with these options, all or nothing; inside a tf.distribute replica function
  it runs once, for every replica's tower."""
  return distribute.run_once(_REWRITE, graph, RewriteOptions(**options))


def _graph(input_graph):
  graph = input_graph if input_graph is not None else tf.compat.v1.get_default_graph()
  if not isinstance(graph, tf.Graph):
    raise ValueError("input_graph must be a tf.Graph or None, got %r" % (graph,))
  return graph


def create_training_graph(input_graph=None, quant_delay=0):
  """Rewrites a training graph: folds batch norms, inserts FakeQuant ops whose ranges learn.

  Args:
    input_graph: the graph to rewrite in place; the default graph if None.
    quant_delay: steps of float training before quantization switches on. 0 (fine-tuning
      a float model, the recommended use) quantizes from the first step.
  """
  return _rewrite(_graph(input_graph), training=True, quant_delay=quant_delay)


def create_eval_graph(input_graph=None):
  """Rewrites an eval graph built with training=False: same variables, no range updates."""
  return _rewrite(_graph(input_graph), training=False)


def experimental_create_training_graph(input_graph=None, weight_bits=8, activation_bits=8,
                                       symmetric=False, quant_delay=0, freeze_bn_delay=None,
                                       scope=None, per_channel_weights=False,
                                       quantize_inputs=False, pool_ties="away_from_zero"):
  """Training rewrite with every option.

  Args:
    weight_bits, activation_bits: 2..16.
    symmetric: symmetric ranges (zero point 0), as int8 targets want.
    quant_delay: steps before quantization switches on.
    freeze_bn_delay: steps after which folded batch norms use their moving statistics and
      stop updating them; should be larger than quant_delay. None never freezes.
    scope: only ops whose names start with this scope are folded and quantized.
    per_channel_weights: one range per output channel for conv, depthwise and matmul
      weights (not in contrib; TFLite int8 and most accelerators support it).
    quantize_inputs: a layer reading a tensor no quantizer covers (the model input) gets an
      input quantizer, `<layer>/input_quant`, with a learned range, as the int8 model is fed
      integers (not in contrib). Use it for TFLite export: the exported integers then match
      the eval graph's more closely, and the range becomes the model's input range.
    pool_ties: how an average pool's exact halves round, as the runtime you export to rounds
      them: "away_from_zero" (TFLite) or "to_even" (ONNX Runtime). Only the eval graph's
      numbers depend on it; the exported model is the same either way.
  """
  return _rewrite(_graph(input_graph), training=True, weight_bits=weight_bits,
                 activation_bits=activation_bits, symmetric=symmetric, quant_delay=quant_delay,
                 freeze_bn_delay=freeze_bn_delay, scope=scope, per_channel=per_channel_weights,
                 quantize_inputs=quantize_inputs, pool_ties=pool_ties)


def experimental_create_eval_graph(input_graph=None, weight_bits=8, activation_bits=8,
                                   symmetric=False, quant_delay=None, scope=None,
                                   per_channel_weights=False, quantize_inputs=False,
                                   pool_ties="away_from_zero", requantize="float"):
  """Eval rewrite with every option; use the same options as the training rewrite
  (`pool_ties` and `requantize` may differ: one eval graph per export target).

  requantize: how each quantized conv, depthwise and dense layer turns its accumulator into
    output integers, and how a residual add adds. "float" (the default): in float32, rounded by the output FakeQuant.
    "xnnpack" or "tflite_builtin": exactly as that TFLite CPU runtime does (XNNPACK's fp32
    requantization, or the builtin kernels' fixed-point multiplier and rounding shift), in
    integers, so the eval graph's logits equal the int8 model's bit for bit where float32
    would flip an output near a rounding tie. Slower (float64 convolutions); for checking
    agreement, not for training. Export from either: the exporters drop the emulation.
  """
  return _rewrite(_graph(input_graph), training=False, weight_bits=weight_bits,
                 activation_bits=activation_bits, symmetric=symmetric, quant_delay=quant_delay,
                 scope=scope, per_channel=per_channel_weights, quantize_inputs=quantize_inputs,
                 pool_ties=pool_ties, requantize=requantize)


def check_checkpoint(checkpoint, input_graph=None):
  """Raises ValueError if `checkpoint` was trained with other settings (bits, symmetric,
  per-channel) than `input_graph` (the default graph if None) was rewritten with, lacks one of
  the graph's variables (naming the quantizers), or holds a range no training step updated.

  A Saver restores the first and last without complaint; the exporters call this check
  themselves. `checkpoint`: a directory (its latest checkpoint) or a prefix.
  """
  prefix = resolve_checkpoint(checkpoint)
  graph = _graph(input_graph)
  quantizer_variables = {v.op.name: v.shape.as_list() for v in graph.get_collection(
      tf.compat.v1.GraphKeys.GLOBAL_VARIABLES) if checkpoint_checks.quantizer_of(v.op.name)}
  checkpoint_checks.check(graph, tf.train.load_checkpoint(prefix), prefix, quantizer_variables)
