"""The patterns the passes match, built from the catalogue.

Roles captured: `layer` (the weight op), `batch_to_space` (atrous convolution),
`fold_scale` (the per-channel multiply a training-mode fold leaves), `bias`,
`bypass` (a residual add before the activation), `activation`, and
`post_bypass` (a residual add after it).
"""

from qat_rewrite.graph import roles
from qat_rewrite.graph.pattern import Any, OneOf, Op, Optional
from qat_rewrite.graph.view import (is_activation_tensor, is_channel_vector, is_dropout,
                                    sole_relu_consumer)
from qat_rewrite.layers.catalogue import ACTIVATION_TYPES, ADD_TYPES, LAYER_TYPES

FUSED_BATCH_NORM_TYPES = ("FusedBatchNorm", "FusedBatchNormV3")


def is_fold_batch_norm(op):
  """True for the batch norm a training fold builds (on y/s, or on y once the 1/s moved onto the
  weights): not a batch norm of the user's to fold, and live, unlike the one it replaced."""
  return op.type in FUSED_BATCH_NORM_TYPES and roles.of(op) == "fold_batch_norm"


def _layer_output():
  layer = Op(LAYER_TYPES, role="layer")
  return Optional(Op("BatchToSpaceND", [layer, Any(), Any()], role="batch_to_space"))


def _bias(inner, role="bias"):
  vector = Any(role=role + "_value", where=is_channel_vector)
  return Optional(OneOf(
      Op("BiasAdd", [inner, vector], role=role),
      Op(ADD_TYPES, [inner, vector], role=role, ordered=False)), skip=inner)


def _layer_chain():
  """weight layer → [batch_to_space] → [[fold scale] → folded batch norm] → [bias] → [forced
  updates]. The fold scale is absent where the fold moved it onto the weights."""
  chain = _layer_output()
  # A fold scale read by nothing is the one a fold moved onto the weights, left behind.
  scaled = Op("Mul", [chain, Any(role="fold_scale_value", where=is_channel_vector)],
              role="fold_scale", ordered=False, where=lambda op: bool(op.outputs[0].consumers()))
  unscaled_bn = Op(FUSED_BATCH_NORM_TYPES, [chain, Any(), Any(), Any(), Any()], role="folded_bn",
                   output=0, where=is_fold_batch_norm)
  chain = Optional(OneOf(_folded_batch_norm(scaled), scaled, unscaled_bn), skip=chain)
  chain = _bias(chain)
  # A batch norm with forced updates (an Identity that waits for the moving-average updates).
  return Optional(Op("Identity", [chain], role="forced_updates", where=lambda op: op.control_inputs))


def quantizable_layer():
  """weight layer → [batch_to_space] → [fold scale] → [bias] → [bypass] → [activation] → [post bypass]."""
  chain = _layer_chain()
  pre_activation = Optional(Op(ADD_TYPES, [chain, Any(role="bypass_value", where=is_activation_tensor)],
                               role="bypass", ordered=False))
  activation = OneOf(Op(ACTIVATION_TYPES, [pre_activation], role="activation"),
                     _dropout(pre_activation))
  # An add followed by a ReLU is the next layer's pre-activation bypass, not this one's post-bypass.
  post_bypass = Op(ADD_TYPES, [activation, Any(role="post_bypass_value", where=is_activation_tensor)],
                   role="post_bypass", ordered=False, where=_not_followed_by_relu)
  return OneOf(post_bypass, activation, pre_activation)


def _dropout(inner):
  """A dropout of `inner` (tf.nn.dropout, Keras Dropout and stochastic depth: a random select of
  the input scaled by 1/keep; TF1: the scaled input times a random mask), in the `activation`
  role: the eval graph has an Identity there (Keras) or nothing, and the training rewrite must
  place the quantizers the eval rewrite places."""
  scaled = Op(("Mul", "RealDiv"), [inner, Any()], ordered=False)
  return OneOf(Op(("SelectV2", "Select"), [Any(), scaled, Any()], role="activation",
                  where=is_dropout),
               Op("Mul", [scaled, Any()], role="activation", ordered=False, where=is_dropout))


def compute_layer():
  """weight layer → [batch_to_space] → [fold scale] → [bias] → [activation]: decent_q's conv
  patterns, where a residual add is an element-wise op of its own."""
  chain = _layer_chain()
  return Optional(Op(ACTIVATION_TYPES, [chain], role="activation"), skip=chain)


def _folded_batch_norm(scaled):
  """What a training-mode fold leaves: batch norm of the layer output divided by its scale
  (reshaped to 4-D and back for a MatMul)."""
  def bn(inputs):
    return Op(FUSED_BATCH_NORM_TYPES, [inputs, Any(), Any(), Any(), Any()], role="folded_bn",
              output=0)
  to_4d = Op("Reshape", [scaled, Any()], role="fold_reshape")
  return OneOf(bn(scaled), Op("Reshape", [bn(to_4d), Any()], role="fold_reshape_back"))


def _not_followed_by_relu(op):
  return sole_relu_consumer(op) is None


def bn_input():
  """weight layer → [batch_to_space] → [Identity] → [bias]: what a batch norm may consume."""
  chain = Optional(Op("Identity", [_layer_output()], role="identity"))
  return _bias(chain)


def fused_batch_norm():
  """FusedBatchNorm needs 4-D input: a MatMul output is reshaped to 4-D and back around it."""
  to_4d = Optional(Op("Reshape", [bn_input(), Any()], role="reshape"))
  return Op(FUSED_BATCH_NORM_TYPES,
            [to_4d, Any("gamma"), Any("beta"), Any("mean"), Any("variance")], role="bn")


def unfused_batch_norm():
  """The ops of `tf.nn.batch_normalization`: x * inv + (beta - mean * inv), inv = rsqrt(var + eps) [* gamma]."""
  rsqrt = Op("Rsqrt", [Op(ADD_TYPES, [Any("variance"), Any("epsilon")], role="add_epsilon")],
             role="rsqrt")
  inv = OneOf(Op("Mul", [rsqrt, Any("gamma")], role="inv", ordered=False), rsqrt)
  mean_times_inv = Op("Mul", [Any("mean"), Any("inv_again")], role="mean_mul", ordered=False)
  offset = OneOf(Op("Sub", [Any("beta"), mean_times_inv], role="offset"),
                 Op("Neg", [mean_times_inv], role="offset"))
  return Op(ADD_TYPES, [Op("Mul", [bn_input(), inv], role="scale_mul", ordered=False), offset],
            role="bn", ordered=False)
