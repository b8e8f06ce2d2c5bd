#!/usr/bin/env python3
"""What the pre-job hook costs each job, with its cheap re-checks.

The starter runs `startd-health hook prepare-job` before EVERY job, so its
wall time is added to each job's start and its CPU is paid per job. This
prints, for N runs each (median wall, median CPU = user+sys of the hook and
the children it waited for, from wait4; peak RSS):
  - a bare interpreter start-up (`python -c pass`), the floor;
  - the hook for a job without a container image (CLI start, nothing checked);
  - the re-checks' child alone (probes/_job_paths.py on the runtime and the image);
  - the hook for a job whose site image has a FRESH periodic result: the common
    case, re-checks included (before them, this path launched nothing and
    touched no file);
  - the same when a re-check finds a fault (a configured CVMFS repository that is
    not mounted): the requeue path.
The runtime is a script that is never run on these paths; the image a file
with a SIF header (the re-check reads 128 bytes of it). The poke of the daemon
is included when monitor/recheck.py exists (no daemon listens here: it finds
no socket).

usage:  benchmarks/hook_cost.py [--runs N]
"""

from __future__ import annotations

import argparse
import os
import struct
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, "src"))
sys.path.insert(0, os.path.join(REPO, "benchmarks"))
from cron_cost import measure  # noqa: E402  (one way to time a child: wait4's rusage)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=20)
    args = parser.parse_args()
    from startd_health.core.model import ProbeResult, Status
    from startd_health.core.state import StateDir
    from startd_health.system.programs import python_argv

    with tempfile.TemporaryDirectory() as tmp:
        image = os.path.join(tmp, "el9.sif")
        with open(image, "wb") as handle:   # a SIF header whose data fills the file
            head = b"#!/usr/bin/env run-singularity\n".ljust(32, b"\0") + b"SIF_MAGIC\0" + b"01\0" + b"02\0"
            handle.write((head.ljust(112, b"\0") + struct.pack("<qq", 4096, (1 << 20) - 4096)).ljust(1 << 20, b"\0"))
        runtime = os.path.join(tmp, "apptainer")
        with open(runtime, "w") as handle:
            handle.write("#!/bin/sh\nexit 0\n")
        os.chmod(runtime, 0o755)
        state = StateDir(os.path.join(tmp, "state"))
        state.ensure()
        hook = [sys.executable, "-m", "startd_health", "hook", "prepare-job", "--no-condor-config",
                "--state-dir", state.path,
                "--container-runtime", runtime, "--container-images", f"el9={image}",
                "--cvmfs-root", os.path.join(tmp, "cvmfs")]
        job = f'SingularityImage = "{image}"\n'

        def fresh():
            state.save(ProbeResult("container", Status.OK, "", {"images_ok": ("el9",)}, started_at=time.time(),
                                   duration_seconds=0.1))

        rows = [("python -c pass (floor)", [sys.executable, "-c", "pass"], None)]
        rows.append(("hook, job without an image", hook, "ClusterId = 1\n"))
        rows.append(("re-check child alone (runtime + image)",
                     python_argv("startd_health.probes", "_job_paths.py", f"x:{runtime}", f"r:{image}"), None))
        rows.append(("hook, fresh result, re-checks pass (accept)", hook, job))
        rows.append(("hook, a re-check fails (requeue)", hook + ["--cvmfs-repositories", "sw.example.org"], job))
        print(f"{'':46} {'wall (median)':>14} {'CPU (median)':>13} {'max RSS':>9}")
        for label, argv, stdin in rows:
            fresh()
            wall, cpu, rss = measure(argv, args.runs, stdin=stdin)
            print(f"{label:46} {wall * 1000:11.1f} ms {cpu * 1000:10.1f} ms {rss:6.1f} MiB")
        print(f"({args.runs} runs each; load average {os.getloadavg()[0]:.2f}; {os.cpu_count()} CPUs; "
              f"Python {sys.version.split()[0]})")


if __name__ == "__main__":
    main()
