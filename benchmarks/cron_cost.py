#!/usr/bin/env python3
"""What one `startd-health cron` run costs, measured beside what it cannot avoid.

The cron job is forked on every execute node of a pool every few minutes, so
its CPU time and memory are paid pool-wide. This prints, for N runs each
(median), wall time, CPU time (user+sys of the whole process tree, from
wait4) and peak RSS of:
  - a bare interpreter start-up (`python -c pass`), the floor for any Python tool;
  - importing our CLI module (lazy imports keep this small);
  - the image launches the container probe performs, run alone (only with --images);
  - one full `startd-health cron --force` (probes really run, no cached results).
and the ratios between them.

usage:  benchmarks/cron_cost.py [--runs N] [--images name=path,...] [-- extra cron args]
Run it inside the test root filesystem to include real Apptainer launches:
  tests/realpool/rootfs.sh enter runuser -u condor -- \\
      /opt/startd-health/venv/bin/python /opt/startd-health/src/benchmarks/cron_cost.py \\
      --images sif=/opt/containers/test.sif,sandbox=/opt/containers/sandbox
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def measure(argv, runs, env=None, stdin=None):
    """stdin: text written to the command's standard input (None: /dev/null)."""
    walls, cpus, rss = [], [], []
    for _ in range(runs):
        t0 = time.perf_counter()
        proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                stdin=subprocess.DEVNULL if stdin is None else subprocess.PIPE, env=env)
        if stdin is not None:
            proc.stdin.write(stdin.encode())
            proc.stdin.close()
        _, status, usage = os.wait4(proc.pid, 0)
        walls.append(time.perf_counter() - t0)
        if os.waitstatus_to_exitcode(status) not in (0, 3):
            raise SystemExit(f"{argv} exited {os.waitstatus_to_exitcode(status)}")
        cpus.append(usage.ru_utime + usage.ru_stime)
        rss.append(usage.ru_maxrss / 1024)
    return statistics.median(walls), statistics.median(cpus), max(rss)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--images", default="", help="name=path entries for the container probe")
    parser.add_argument("--runtime", default=shutil.which("apptainer") or "")
    parser.add_argument("cron_args", nargs="*")
    args = parser.parse_args()

    env = dict(os.environ, PYTHONPATH=os.path.join(REPO, "src") + os.pathsep + os.environ.get("PYTHONPATH", ""))
    py = sys.executable
    state = tempfile.mkdtemp(prefix="cron-cost-")
    rows = [("python -c pass (interpreter floor)", measure([py, "-c", "pass"], args.runs, env)),
            ("import startd_health.cli", measure([py, "-c", "import startd_health.cli"], args.runs, env))]
    if args.images and args.runtime:
        launches = []
        for entry in args.images.split(","):
            path = entry.partition("=")[2]
            launches.append(f"{args.runtime} exec --ipc --pid --contain {path} cat /proc/self/uid_map")
        rows.append((f"{len(launches)} image launch(es) alone",
                     measure(["/bin/sh", "-c", " && ".join(launches)], args.runs, env)))
    cron = [py, "-c", "from startd_health.cli import cron_main; cron_main()", "--force", "--state-dir", state]
    if args.images:
        cron += ["--container-images", args.images]
    rows.append(("startd-health cron --force", measure(cron + args.cron_args, args.runs, env)))
    shutil.rmtree(state, ignore_errors=True)

    print(f"python {sys.version.split()[0]}, {args.runs} runs each, medians (peak RSS: max)")
    print(f"{'what':<40} {'wall s':>8} {'cpu s':>8} {'peak RSS MiB':>13}")
    for name, (wall, cpu, rss) in rows:
        print(f"{name:<40} {wall:8.3f} {cpu:8.3f} {rss:13.1f}")
    floor, cron_row = rows[0][1], rows[-1][1]
    print(f"cron / interpreter floor: wall x{cron_row[0] / floor[0]:.1f}, cpu x{cron_row[1] / floor[1]:.1f}")
    if args.images and args.runtime:
        alone = rows[2][1]
        print(f"cron - launches alone: wall {cron_row[0] - alone[0]:+.3f}s, cpu {cron_row[1] - alone[1]:+.3f}s "
              f"(our own overhead)")


if __name__ == "__main__":
    main()
