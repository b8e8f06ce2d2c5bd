#!/usr/bin/env python3
"""Our DB12-compatible score against the reference DB12 package, measured in
the same run on the same interpreter.

Both run the same way: one fresh child process per measurement (the same
Python, -I), pass 0 a discarded warm-up, then --passes measured passes; the
reference with correction=False (its Python-2-equivalence factor exists only
for Python 3.9, and we publish the raw score). The two are interleaved in
pairs whose order alternates (ours-theirs, theirs-ours, ...), so that load
from other users of the machine, and any drift over the run, hit both alike.

Prints every measurement, the spread of repeated runs of each, and the ratio
ours/theirs with its confidence intervals, from the paired ratios. The target
is agreement within 5 %, decided as an equivalence test (two one-sided tests
at 5 %: the 90 % interval of the ratio lies inside 0.95..1.05). The spread of
repeated runs of the SAME code says whether that tolerance is larger than the
noise (several standard errors of the ratio) or the machine was too noisy to
tell; then run more --rounds.

usage:  benchmarks/db12_compare.py [--rounds N] [--passes P] [--wholenode]
needs:  pip install DB12      (into the Python that runs this script)
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, "src"))  # the checkout, when not installed

from startd_health.probes import benchmarks as ours  # noqa: E402

THEIRS = """
import json, sys
import db12
copies, passes = int(sys.argv[1]), int(sys.argv[2])
if copies == 1:
    print(json.dumps([db12.single_dirac_benchmark(iterations_num=passes, correction=False)["NORM"]]))
else:
    print(json.dumps(db12.multiple_dirac_benchmark(copies=copies, iterations_num=passes, correction=False)["raw"]))
"""

# Student's t quantiles by degrees of freedom (1..20): two-sided 95 % and 90 %; beyond: normal.
T95 = [12.71, 4.30, 3.18, 2.78, 2.57, 2.45, 2.36, 2.31, 2.26, 2.23, 2.20, 2.18, 2.16, 2.14, 2.13, 2.12, 2.11,
       2.10, 2.09, 2.09]
T90 = [6.31, 2.92, 2.35, 2.13, 2.02, 1.94, 1.89, 1.86, 1.83, 1.81, 1.80, 1.78, 1.77, 1.76, 1.75, 1.75, 1.74,
       1.73, 1.73, 1.72]


def t_quantile(table: list, df: int, normal: float) -> float:
    return table[df - 1] if 1 <= df <= len(table) else normal


def run_ours(copies: int, passes: int) -> list:
    args = {"copies": copies, "draws": ours.DB12_DRAWS, "passes": passes, "seconds": 3600}
    out = subprocess.run(ours.worker_argv("db12", args), capture_output=True, text=True,
                         check=True, env=single_threaded()).stdout
    copies_out = json.loads(out.strip().splitlines()[-1])["copies"]
    if any("error" in c for c in copies_out):
        raise RuntimeError(copies_out)
    return [ours.db12_score(c["cpu_seconds"], passes) for c in copies_out]


def run_theirs(copies: int, passes: int) -> list:
    out = subprocess.run([sys.executable, "-I", "-c", THEIRS, str(copies), str(passes)], capture_output=True,
                         text=True, check=True, env=single_threaded()).stdout
    return json.loads(out.strip().splitlines()[-1])


def single_threaded() -> dict:
    return dict(os.environ, **{name: "1" for name in ours.BLAS_THREAD_VARIABLES})


def per_copy(scores: list) -> float:
    """What we publish: the copies' mean (DB12 multi-copy "arithmetic_mean"); one copy: its score."""
    return statistics.fmean(scores)


def describe(name: str, values: list) -> str:
    mean, sd = statistics.fmean(values), statistics.stdev(values)
    return (f"  {name:<9} mean {mean:8.3f}  median {statistics.median(values):8.3f}  sd {sd:6.3f} "
            f"(CV {100 * sd / mean:4.1f} %)  min {min(values):8.3f}  max {max(values):8.3f}  "
            f"range {100 * (max(values) - min(values)) / mean:4.1f} % of the mean")


def compare(copies: int, rounds: int, passes: int) -> bool:
    label = "one copy" if copies == 1 else f"{copies} copies at once (one per core), score per copy"
    print(f"\n== DB12, {label}, {passes} measured pass(es) after the warm-up, {rounds} runs each ==")
    mine, theirs, ratios = [], [], []
    for index in range(rounds):
        order = ("ours", "theirs") if index % 2 == 0 else ("theirs", "ours")
        pair = {}
        for who in order:
            t0 = time.monotonic()
            scores = run_ours(copies, passes) if who == "ours" else run_theirs(copies, passes)
            pair[who] = per_copy(scores)
            raw = "" if copies == 1 else "  copies: " + " ".join(f"{s:.2f}" for s in scores)
            print(f"  run {index + 1:2d} {who:<6} {pair[who]:8.3f}   ({time.monotonic() - t0:5.1f}s wall, "
                  f"load {os.getloadavg()[0]:.2f}){raw}", flush=True)
        mine.append(pair["ours"])
        theirs.append(pair["theirs"])
        ratios.append(pair["ours"] / pair["theirs"])
    print(describe("ours", mine))
    print(describe("reference", theirs))
    ratio = statistics.fmean(mine) / statistics.fmean(theirs)
    # The ratio's uncertainty from the paired ratios (pairs share the machine's load at the time).
    se = statistics.stdev(ratios) / math.sqrt(len(ratios))
    df = len(ratios) - 1
    low95, high95 = ratio - t_quantile(T95, df, 1.96) * se, ratio + t_quantile(T95, df, 1.96) * se
    low90, high90 = ratio - t_quantile(T90, df, 1.645) * se, ratio + t_quantile(T90, df, 1.645) * se
    noise = max(statistics.stdev(mine) / statistics.fmean(mine), statistics.stdev(theirs) / statistics.fmean(theirs))
    print(f"  ratio ours/reference: {ratio:.4f} (mean of means; median ratio "
          f"{statistics.median(mine) / statistics.median(theirs):.4f}); paired ratios {min(ratios):.4f}.."
          f"{max(ratios):.4f}; 90 % CI {low90:.4f}..{high90:.4f}, 95 % CI {low95:.4f}..{high95:.4f}")
    agree = 0.95 <= low90 and high90 <= 1.05
    print(f"  run-to-run spread of ONE implementation: CV up to {100 * noise:.1f} %; standard error of the ratio "
          f"{100 * se:.2f} %: the 5 % tolerance is {0.05 / se if se else float('inf'):.1f} standard errors")
    print(f"  => {'AGREE' if agree else 'NOT SHOWN TO AGREE'} within 5 % (equivalence test: 90 % interval inside "
          f"0.95..1.05)")
    return agree


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5, help="measurements of each (default 5)")
    parser.add_argument("--passes", type=int, default=1, help="measured passes per measurement (default 1, as DB12)")
    parser.add_argument("--wholenode", action="store_true", help="also compare one copy per core run together")
    args = parser.parse_args()
    if args.rounds < 2:
        parser.error("--rounds must be at least 2 (a spread needs two runs)")
    check = subprocess.run([sys.executable, "-I", "-c", "import db12"], capture_output=True)
    if check.returncode != 0:
        print(f"the reference DB12 package is not installed for {sys.executable}:\n"
              f"  {sys.executable} -m pip install DB12", file=sys.stderr)
        return 2
    version = subprocess.run([sys.executable, "-I", "-c", "from importlib.metadata import version; "
                              "print(version('DB12'))"], capture_output=True, text=True).stdout.strip()
    with open("/proc/cpuinfo", errors="replace") as handle:
        cpu = ours.cpu_model(handle.read())
    print(f"Python {platform.python_implementation()} {platform.python_version()} ({sys.executable}); "
          f"DB12 package {version}; CPU {cpu}; {ours.usable_cpus()} usable CPUs; "
          f"load {os.getloadavg()[0]:.2f} at start; {time.strftime('%Y-%m-%d %H:%M:%S')}")
    ok = compare(1, args.rounds, args.passes)
    if args.wholenode:
        ok = compare(ours.usable_cpus(), args.rounds, args.passes) and ok
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
