"""Model-zoo test subjects: tf-slim 1.1.0 nets and tf_keras.applications models, small.

`MODELS` maps a name to a `ModelSpec`; `spec.build(is_training)` puts the model into the
current default graph and returns `(net_in, net_out, "net_out")`:

  net_in   float32 placeholder [None, H, W, 3] named "net_in" (images in [0, 1])
  net_out  `tf.identity(logits, name="net_out")`, the logits [batch, num_classes], as a
           user's model_fn would name its output

The caller must set `TF_USE_LEGACY_KERAS=1` before TensorFlow is imported (tf-slim's layers and
graph-mode Keras need tf_keras, not Keras 3) and call
`tf.compat.v1.disable_eager_execution()` before building. Build each model into a fresh
`tf.Graph()`; `build` sets the graph-level random seed to 0.

Batch-norm updates: slim puts them in `tf.compat.v1.GraphKeys.UPDATE_OPS`; Keras keeps them on
the model, so the Keras builders add `model.get_updates_for(net_in)` to UPDATE_OPS (training
only), and a train op with control dependencies on UPDATE_OPS runs them for both families.

Keras models are constructed on their own `Input` and then called on `net_in` with
`training=is_training`, so the batch norms on the net_in -> net_out path are plain
FusedBatchNormV3 ops (README, "Keras"). The construction leaves a second, functional copy in
the graph whose batch norms sit behind the learning-phase `If`; the rewrite leaves that copy
float and names it in its report (it is not on the net_in -> net_out path).

tf-slim 1.1.0 on TF 2.21: `tf_slim.layers.batch_norm` goes through
`tensorflow.python.layers.normalization`, which lazily imports
`tf_keras.legacy_tf_layers.normalization`; tf_keras 2.21 ships that module as
`tf_keras.src.legacy_tf_layers.normalization`. `install_tf_slim_shim()` aliases the package
and that submodule in `sys.modules` (the other legacy layers slim uses, conv/core/pooling/base,
come from `tensorflow.python.keras.legacy_tf_layers`, which TF 2.21 still ships). The slim
builders call it.

Input sizes (the smallest each net accepts with its default head, see SIZES_WHY):
"""

import dataclasses
import sys
from typing import Callable

import tensorflow as tf

from qat_rewrite.compat import install_tf_slim_shim

v1 = tf.compat.v1
NUM_CLASSES = 10
INPUT_NAME = "net_in"
OUTPUT_NAME = "net_out"


@dataclasses.dataclass(frozen=True)
class ModelSpec:
  name: str
  family: str  # "slim" or "keras"
  input_size: int
  num_classes: int
  builder: Callable = dataclasses.field(repr=False)
  why_size: str = ""

  def build(self, is_training):
    """Builds into the default graph; returns (net_in placeholder, net_out tensor, "net_out")."""
    v1.set_random_seed(0)
    images = v1.placeholder(tf.float32, [None, self.input_size, self.input_size, 3],
                            name=INPUT_NAME)
    logits = self.builder(images, bool(is_training), self.num_classes)
    out = tf.identity(logits, name=OUTPUT_NAME)
    return images, out, OUTPUT_NAME


# tf-slim nets ------------------------------------------------------------------------------

def _slim():
  install_tf_slim_shim()
  import tf_slim  # pylint: disable=import-outside-toplevel
  from tf_slim import nets  # pylint: disable=import-outside-toplevel
  return tf_slim, nets


def _slim_classic(module, net, arg_scope):
  """alexnet_v2, overfeat, vgg_16: `tf_slim.nets.<module>.<net>` in its own arg_scope."""
  def build(images, is_training, num_classes):
    slim, nets = _slim()
    package = getattr(nets, module)
    with slim.arg_scope(getattr(package, arg_scope)()):
      logits, _ = getattr(package, net)(images, num_classes=num_classes,
                                        is_training=is_training, spatial_squeeze=True)
    return logits
  return build


_slim_alexnet = _slim_classic("alexnet", "alexnet_v2", "alexnet_v2_arg_scope")
_slim_overfeat = _slim_classic("overfeat", "overfeat", "overfeat_arg_scope")
_slim_vgg16 = _slim_classic("vgg", "vgg_16", "vgg_arg_scope")


def _slim_inception(version):
  def build(images, is_training, num_classes):
    slim, nets = _slim()
    module = getattr(nets, "inception_%s" % version)
    with slim.arg_scope(getattr(module, "inception_%s_arg_scope" % version)()):
      logits, _ = getattr(module, "inception_%s" % version)(
          images, num_classes=num_classes, is_training=is_training, spatial_squeeze=True)
    return logits
  return build


def _slim_resnet(version):
  def build(images, is_training, num_classes):
    slim, nets = _slim()
    module = getattr(nets, "resnet_%s" % version)
    with slim.arg_scope(module.resnet_utils.resnet_arg_scope()):
      net, _ = getattr(module, "resnet_%s_50" % version)(
          images, num_classes=num_classes, is_training=is_training, global_pool=True)
    return tf.squeeze(net, [1, 2], name="logits_squeezed")  # [B, 1, 1, C] -> [B, C]
  return build


# tf_keras.applications ---------------------------------------------------------------------

def _keras(app_name, **kwargs):
  def build(images, is_training, num_classes):
    import tf_keras  # pylint: disable=import-outside-toplevel
    size = images.shape[1]
    model = getattr(tf_keras.applications, app_name)(
        weights=None, input_shape=(size, size, 3), classes=num_classes,
        classifier_activation=None, **kwargs)
    logits = model(images, training=is_training)
    if is_training:
      for update in model.get_updates_for(images):
        v1.add_to_collection(v1.GraphKeys.UPDATE_OPS, update)
    return logits
  return build


_SPECS = [
    # name, family, size, builder, why
    ("alexnet_v2", "slim", 195, _slim_alexnet,
     "fc6 is a 5x5 VALID conv: pool5 must be 5x5 for the squeeze; 195 is the least H"),
    ("overfeat", "slim", 231, _slim_overfeat,
     "fc6 is a 6x6 VALID conv after VALID conv1/conv2/pools; 231 is the least H"),
    ("vgg_16", "slim", 224, _slim_vgg16,
     "fc6 is a 7x7 VALID conv after 5 stride-2 pools: H in [224, 255]"),
    ("inception_v1", "slim", 193, _slim_inception("v1"),
     "fixed 7x7 VALID avg pool after stride 32 (SAME): ceil(H/32) must be 7"),
    ("inception_v2", "slim", 32, _slim_inception("v2"),
     "final pool shrinks to the feature map; stride 32 gives 1x1 at 32"),
    ("inception_v3", "slim", 107, _slim_inception("v3"),
     "aux head (default on) needs Mixed_6e >= 5x5 for its 5x5/3 VALID pool (75 without aux)"),
    ("resnet_v1_50", "slim", 32, _slim_resnet("v1"),
     "global mean pool: any size; 32 gives a 1x1 last block"),
    ("resnet_v2_50", "slim", 32, _slim_resnet("v2"),
     "global mean pool: any size; 32 gives a 1x1 last block"),
    ("ResNet50V2", "keras", 32, _keras("ResNet50V2"),
     "tf_keras min_size 32; pre-activation BN-ReLU-conv, ZeroPadding before conv1"),
    ("EfficientNetB0", "keras", 32, _keras("EfficientNetB0"),
     "min_size 32; swish, squeeze-excite, dropout + stochastic depth, stem ZeroPadding"),
    ("InceptionV3", "keras", 75, _keras("InceptionV3"), "min_size 75"),
    ("Xception", "keras", 71, _keras("Xception"), "min_size 71; separable convs"),
    ("NASNetMobile", "keras", 32, _keras("NASNetMobile"), "min_size 32; NAS cells"),
    ("MobileNetV3Small", "keras", 32, _keras("MobileNetV3Small", alpha=0.5),
     "min_size 32, alpha 0.5 (any alpha without imagenet weights); hard-swish, SE"),
    ("DenseNet121", "keras", 32, _keras("DenseNet121"), "min_size 32; concat-heavy"),
]

MODELS = {name: ModelSpec(name, family, size, NUM_CLASSES, builder, why)
          for name, family, size, builder, why in _SPECS}
SIZES_WHY = {name: spec.why_size for name, spec in MODELS.items()}

__doc__ += "".join("\n  %-17s %3d  %s" % (n, s.input_size, s.why_size)
                   for n, s in MODELS.items()) + "\n"
