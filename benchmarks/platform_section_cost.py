#!/usr/bin/env python3
"""What the inside script's platform section (os-release, uname -m, the C
library) adds to every image launch: the script with and without it, run N
times each by a shell (median wall time), beside the launch it rides on.

usage:  benchmarks/platform_section_cost.py [--runs N] [--shell "busybox sh"] [--runtime apptainer --image PATH]
With --runtime and --image, both scripts also run inside the image (`exec`),
which is what the container probe pays.
"""

from __future__ import annotations

import argparse
import shlex
import statistics
import subprocess
import time

from startd_health.system import inside


def median_ms(argv, runs):
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        subprocess.run(argv, capture_output=True, check=False, timeout=60)
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=40)
    parser.add_argument("--shell", default="sh")
    parser.add_argument("--runtime", default="")
    parser.add_argument("--image", default="")
    args = parser.parse_args()
    shell = shlex.split(args.shell)
    prefixes = [("host " + args.shell, shell)]
    if args.runtime and args.image:
        prefixes.append((f"inside {args.image}", [args.runtime, "exec", args.image, "/bin/sh"]))
    for where, prefix in prefixes:
        base = median_ms(prefix + ["-c", inside.script()], args.runs)
        full = median_ms(prefix + ["-c", inside.script(platform=True)], args.runs)
        print(f"{where}: without the platform section {base:.1f} ms, with it {full:.1f} ms "
              f"(+{full - base:.1f} ms, median of {args.runs})")


if __name__ == "__main__":
    main()
