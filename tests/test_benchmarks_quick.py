"""The tfmot side-by-side benchmarks still run: `benchmarks/run_all.py --quick` into a temp dir.

Slow (3-5 minutes on a busy 2-core machine: several fresh TensorFlow processes); skipped without
tensorflow_model_optimization.
"""

import os
import subprocess
import sys

import pytest

pytest.importorskip("tensorflow_model_optimization")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TABLES = ["accuracy.md", "step_cost.md", "apply_time.md", "deploy.md", "memory.md",
          "dpu_rewrite.md", "run_all.md"]


def test_run_all_quick_writes_every_table(tmp_path):
  done = subprocess.run([sys.executable, os.path.join(ROOT, "benchmarks", "run_all.py"),
                         "--quick", "--out", str(tmp_path)],
                        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                        timeout=900, check=False)
  assert done.returncode == 0, done.stdout[-5000:]
  for table in TABLES:
    text = (tmp_path / table).read_text()
    assert "|---|" in text, table
  assert (tmp_path / "apply_time.png").stat().st_size > 0
