"""The README's two commands choose their interpreter with scripts/python_env.sh. On a Debian
12-style system Python (PEP 668: pip refuses to install into it) they must create and reuse a
project .venv and never pip-install into the system interpreter.

The system Python is simulated by a `python3` on PATH that logs its arguments, refuses
`-m pip` as an externally managed interpreter does, and runs everything else with the real one.
"""

import os
import shutil
import stat
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
REFUSE_PIP = """#!/bin/sh
echo "$@" >> "{log}"
if [ "$1" = "-m" ] && [ "$2" = "pip" ]; then
  echo "error: externally-managed-environment" >&2
  exit 1
fi
exec "{python}" "$@"
"""


@pytest.fixture
def checkout(tmp_path):
  """A repository root holding the real scripts/python_env.sh and a probe that sources it as
  tests/run.sh does, with a PEP 668-style python3 first on PATH."""
  root = tmp_path / "repo"
  (root / "scripts").mkdir(parents=True)
  shutil.copy(os.path.join(ROOT, "scripts", "python_env.sh"), root / "scripts")
  (root / "probe.sh").write_text('set -eu\ncd "$(dirname "$0")"\n. scripts/python_env.sh\n'
                                 'echo "PYTHON=$PYTHON"\n')
  bin_dir = tmp_path / "bin"
  bin_dir.mkdir()
  system_python = _system_python()
  fake = bin_dir / "python3"
  fake.write_text(REFUSE_PIP.format(log=tmp_path / "python3.log", python=system_python))
  fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
  env = {k: v for k, v in os.environ.items() if k not in ("PYTHON", "VIRTUAL_ENV", "CONDA_PREFIX")}
  env["PATH"] = "%s:%s" % (bin_dir, env["PATH"])
  return root, env, tmp_path / "python3.log"


def _system_python():
  """An interpreter outside any virtual environment (the suite itself may run in .venv)."""
  candidate = os.path.join(sys.base_prefix, "bin", "python3")
  return candidate if os.path.exists(candidate) else sys.executable


def _probe(root, env, **extra):
  done = subprocess.run(["sh", str(root / "probe.sh")], env=dict(env, **extra),
                        capture_output=True, text=True, timeout=300, check=False)
  assert done.returncode == 0, done.stderr
  (line,) = [l for l in done.stdout.splitlines() if l.startswith("PYTHON=")]
  return line[len("PYTHON="):], done.stderr


def test_a_system_python_gets_a_project_venv_that_later_runs_reuse(checkout):
  root, env, log = checkout
  python, stderr = _probe(root, env)
  assert python == str(root / ".venv" / "bin" / "python")
  assert "creating the project environment" in stderr
  in_venv = subprocess.run([python, "-c", "import sys; print(sys.prefix != sys.base_prefix)"],
                           capture_output=True, text=True, check=True).stdout.strip()
  assert in_venv == "True"
  subprocess.run([python, "-m", "pip", "--version"], capture_output=True, check=True)
  config = root / ".venv" / "pyvenv.cfg"
  created = config.stat().st_mtime_ns
  again, stderr = _probe(root, env)
  assert again == python and "creating" not in stderr
  assert config.stat().st_mtime_ns == created
  assert not any(l.startswith("-m pip") for l in log.read_text().splitlines())


def test_an_active_environment_or_an_explicit_python_is_used_as_it_is(checkout):
  root, env, _ = checkout
  assert _probe(root, env, PYTHON=sys.executable)[0] == sys.executable
  assert _probe(root, env, CONDA_PREFIX="/opt/conda")[0] == "python3"
  assert not (root / ".venv").exists()


def test_a_failed_venv_creation_says_what_to_install_and_leaves_no_half_venv(checkout):
  root, env, log = checkout
  # Debian without python3-venv: `python3 -m venv` fails for want of ensurepip.
  fake = log.parent / "bin" / "python3"
  fake.write_text(fake.read_text().replace(
      'exec "', 'if [ "$2" = "venv" ]; then mkdir -p "$3"; echo "ensurepip is not available" >&2;'
      ' exit 1; fi\nexec "', 1))
  done = subprocess.run(["sh", str(root / "probe.sh")], env=env, capture_output=True, text=True,
                        timeout=300, check=False)
  assert done.returncode == 1
  assert "ensurepip is not available" in done.stderr  # the root cause stays
  assert "apt install python3-venv" in done.stderr
  assert not (root / ".venv").exists()
