# Sourced by examples/run.sh and tests/run.sh from the repository root (POSIX sh): sets PYTHON,
# the interpreter they install into and run with.
#   PYTHON already set       that interpreter, as it is
#   inside an environment    python3 (an active virtual environment, or conda's CONDA_PREFIX)
#   otherwise                .venv/bin/python, creating .venv on the first run; later runs reuse it
# Debian 12+ and Ubuntu 23.04+ mark the system Python externally managed (PEP 668) and pip
# refuses to install into it, so outside an environment the scripts never pip-install into it.
if [ -z "${PYTHON:-}" ]; then
  if [ -n "${CONDA_PREFIX:-}" ] || python3 -c 'import sys; sys.exit(sys.prefix == sys.base_prefix)'; then
    PYTHON=python3
  else
    if [ ! -x .venv/bin/python ]; then
      echo "$0: creating the project environment $(pwd)/.venv (later runs reuse it)" >&2
      if ! python3 -m venv .venv; then
        rm -rf .venv
        echo "$0: 'python3 -m venv .venv' failed (its error is above); on Debian or Ubuntu," \
             "install the venv module first: apt install python3-venv" >&2
        exit 1
      fi
    fi
    PYTHON="$(pwd)/.venv/bin/python"
  fi
fi
