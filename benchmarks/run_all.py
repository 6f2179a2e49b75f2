"""Runs every side-by-side benchmark with tfmot, one fresh process each, and times them.

  python benchmarks/run_all.py            # regenerates benchmarks/results (< 30 min on 2 cores)
  python benchmarks/run_all.py --quick    # tiny models, a few steps: checks the scripts work
  python benchmarks/run_all.py --out DIR  # write the tables somewhere else

Exits 1 if a script fails or does not write its table. Writes OUT/run_all.md (wall times).
Full runs go one script at a time (they time things); quick runs two at a time.
"""

import argparse
import concurrent.futures
import os
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
# (script, the table it writes)
SCRIPTS = [("bench_accuracy.py", "accuracy.md"), ("bench_step_cost.py", "step_cost.md"),
           ("bench_apply_time.py", "apply_time.md"), ("bench_deploy.py", "deploy.md"),
           ("bench_memory.py", "memory.md"), ("bench_dpu_rewrite.py", "dpu_rewrite.md")]


def parse_args(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--quick", action="store_true", help="tiny smoke run of every script")
  parser.add_argument("--out", default=os.path.join(HERE, "results"))
  parser.add_argument("--only", nargs="+", default=None, help="script names to run")
  return parser.parse_args(argv)


def run(script, table, args):
  """(wall seconds, ok) of one script. Full runs print its output as it comes; quick runs
  (two at a time) print it when it ends."""
  cmd = [sys.executable, os.path.join(HERE, script), "--out", args.out]
  if args.quick:
    cmd.append("--quick")
  print("== %s" % " ".join(cmd[1:]), flush=True)
  start = time.time()
  if args.quick:
    done = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          check=False)
    code = done.returncode
    print(done.stdout[-4000:] if code == 0 else done.stdout, flush=True)
  else:
    code = subprocess.call(cmd)
  seconds = time.time() - start
  ok = code == 0 and os.path.isfile(os.path.join(args.out, table))
  print("== %s: %s in %.0f s" % (script, "ok" if ok else "FAILED (exit %d)" % code, seconds),
        flush=True)
  return seconds, ok


def main(argv=None):
  args = parse_args(argv)
  args.out = os.path.abspath(args.out)
  os.makedirs(args.out, exist_ok=True)
  started = time.time()
  chosen = [(s, t) for s, t in SCRIPTS if not args.only or s in args.only]
  for _, table in chosen:
    if os.path.exists(os.path.join(args.out, table)):
      os.remove(os.path.join(args.out, table))  # a stale table must not pass for a new one
  with concurrent.futures.ThreadPoolExecutor(2 if args.quick else 1) as pool:
    results = list(pool.map(lambda st: run(st[0], st[1], args), chosen))
  rows = [st + r for st, r in zip(chosen, results)]
  total = time.time() - started
  lines = ["### Benchmark wall times%s\n" % (" (quick mode)" if args.quick else ""),
           "| script | table | wall time | status |", "|---|---|---|---|"]
  lines += ["| %s | %s | %.0f s | %s |" % (s, t, sec, "ok" if ok else "FAILED")
            for s, t, sec, ok in rows]
  lines.append("\nTotal %.1f min, %d cores (machine shared with other jobs: load varies).\n"
               % (total / 60.0, os.cpu_count()))
  with open(os.path.join(args.out, "run_all.md"), "w") as f:
    f.write("\n".join(lines))
  print("\n".join(lines))
  return 0 if all(ok for _, _, _, ok in rows) else 1


if __name__ == "__main__":
  sys.exit(main())
