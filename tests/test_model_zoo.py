"""Real models written by others (tf-slim 1.1.0's nets, tf_keras.applications), through the
README's int8 flow as a user's scripts run it (zoo_flow.py): one process per model, started
when the session's tests are collected so that they run beside the rest (zoo_runs.py).

CI runs the subjects in CI_MODELS, chosen to cover every layer pattern the zoo holds within the
suite's time; QAT_REWRITE_ZOO=full runs all 15, with the DPU deploy on every slim net (about
35 min on 2 cores; benchmarks/model_zoo.py prints the figures).
"""

import os
import sys

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import zoo_models  # noqa: E402
import zoo_runs  # noqa: E402

# name: (DPU deploy in CI, the pattern it covers); the longest flows first, as they start in
# this order, two at a time
CI_MODELS = {
    "resnet_v1_50": (True, "conv2d_same Pad before conv1, bottlenecks, strided shortcuts"),
    "inception_v1": (True, "inception blocks, max pool branches, SpatialSqueeze"),
    "Xception": (False, "separable convs, a residual sum read by a ReLU and a shortcut conv"),
    "InceptionV3": (False, "max pool read by convs and an average-pool branch"),
    "EfficientNetB0": (False, "Rescaling/Normalization preprocessing, swish, squeeze-excite, "
                              "dropout and stochastic depth"),
    "ResNet50V2": (False, "Keras pre-activation, ZeroPadding, learning-phase copy"),
    "resnet_v2_50": (False, "pre-activation and post-norm batch norms that fold into no conv"),
    "inception_v2": (False, "separable first conv (depthwise multiplier 8), concat"),
    "MobileNetV3Small": (False, "Rescaling before the first conv, hard-swish, squeeze-excite"),
    "alexnet_v2": (False, "no batch norm, 5x5 VALID fc6 conv, dropout"),
}
FULL = os.environ.get("QAT_REWRITE_ZOO") == "full"
SUBJECTS = list(zoo_models.MODELS) if FULL else list(CI_MODELS)
# The first conv reads Keras' Normalization (a Sub and a RealDiv) of the input: the export needs
# the images' range. A Rescaling alone (MobileNetV3) runs in int8 and needs nothing.
NEEDS_INPUT_RANGES = {"EfficientNetB0"}
# Every op between the input and the logits is requantized in the eval graph as TFLite does it
# (conv, depthwise, dense, ADD, MUL, MEAN, and pools' ties), so its int8 logits equal TFLite's
# (issue 13).
BIT_EXACT = {"inception_v1", "inception_v2", "inception_v3", "resnet_v1_50", "resnet_v2_50",
             "ResNet50V2", "alexnet_v2", "InceptionV3", "MobileNetV3Small", "Xception",
             # full runs only; 100% / 0 LSB on both runtimes in one run each, 2026-12-07
             "vgg_16", "overfeat", "DenseNet121"}
# Asserted since 2026-12-06, after a few clean runs each: squeeze-excite and 1x1 convs on small
# maps hold int32 biases of 10^5 steps, where the eval graph's rounding met the converter's
# only once both used double scales (fake_quant.quantize_bias). Xception has been 100% / 100%
# since (CI and two full local runs, 2026-12-07) and is held to the 99%. MobileNetV3Small
# shares EfficientNetB0's op families, so 2 of its 40 logits may still be off by 1 LSB.
# EfficientNetB0 is measured only: 100% / 100% in three runs, then with XNNPACK 92.5%, 82.5%
# (CI) and 95% in three full-suite runs, then 92.5% with the builtin kernels in a fourth;
# always 1 LSB; not traced yet.
NEWLY_BIT_EXACT_SHARE = {"MobileNetV3Small": 0.95}


# The flags each subject's flow runs with; conftest.py starts the selected ones at collection.
ZOO_FLOW_COMMANDS = {
    name: ["--decent-q"] if zoo_models.MODELS[name].family == "slim" and (
        FULL or CI_MODELS[name][0]) else []
    for name in SUBJECTS}


@pytest.fixture(scope="module", params=SUBJECTS)
def flow(request):
  """The flow's result dict for one subject (its own process, started at collection)."""
  try:
    return request.config.stash[zoo_runs.STASH_KEY].result(request.param)
  except zoo_runs.FlowFailed as failed:
    pytest.fail(str(failed), pytrace=False)


def test_trains_with_every_layer_quantized(flow):
  train = flow["train"]
  assert all(abs(loss) < 1e3 for loss in train["losses"]), train["losses"]
  assert train["float_ops"] == [], train["float_ops"]  # the learning-phase copy aside
  assert train["layers"] > 0 and train["quantizers"] > train["layers"]


def test_eval_restores_the_quantizers_training_made(flow):
  assert flow["eval"]["finite"]
  train, evaluated = set(flow["train"]["quantizer_names"]), set(flow["eval"]["quantizer_names"])
  assert train == evaluated, ("train only %s, eval only %s"
                              % (sorted(train - evaluated), sorted(evaluated - train)))


def test_exports_a_fully_integer_tflite_model(flow):
  tflite = flow["tflite"]
  assert tflite["input_ranges_needed"] == (flow["model"] in NEEDS_INPUT_RANGES), tflite
  assert tflite["fully_integer"], tflite.get("error")
  # Each runtime against the eval graph that emulates its requantization (requantize=
  # "xnnpack" / "tflite_builtin"): bit-exact where every op on the way is emulated (an int8
  # average pool runs on the builtin kernel under both runtimes: XNNPACK does not take it).
  # Elsewhere the figures are measured, not asserted. The README's Model zoo table quotes both.
  for kernels in ("xnnpack", "builtin"):
    emulated, plain = tflite[kernels], tflite["float_eval"][kernels]
    assert 0.0 <= plain["equal_share"] <= 1.0, plain
    if flow["model"] in BIT_EXACT:
      share = NEWLY_BIT_EXACT_SHARE.get(flow["model"], 0.99)
      assert emulated["equal_share"] >= share and emulated["max_lsb"] <= 1, (kernels, emulated)


def test_the_dpu_deploy_model_matches_its_eval_model(flow):
  if "decent_q" not in flow:
    pytest.skip("no DPU deploy for %s in this run" % flow["model"])
  dpu = flow["decent_q"]
  assert dpu["outputs"] == ["net_out/aquant"]
  # 100%, 0 LSB in most runs; one full-suite run on 2026-12-06 gave 99.988% (one element of a
  # resnet_v1_50 tensor off): the float32 eval model and the integer runner can land on either
  # side of a rounding tie, and the flow's steps are not bit-reproducible across runs.
  assert dpu["worst_equal_share"] >= 0.999 and dpu["worst_max_lsb"] <= 1, dpu
