#!/usr/bin/env python3
"""What HTCondor's starter lets SINGULARITY_IMAGE_EXPR see, measured on the
real startd of a test pool (tests/realpool; root needed).

A STARTD_CRON job of its own publishes CronProbe = 1; SINGULARITY_IMAGE_EXPR
is set to an expression that builds the image path from six questions, each
answered 1 or 0 (every combination is a symlink to the test sandbox image):

  cm  MY.CronProbe defined                 (a STARTD_CRON attribute, by MY.)
  cu  CronProbe defined, unqualified
  j   TARGET.REQUIRED_OS defined           (the job's attribute)
  m   MY.Cpus defined                      (an ordinary slot attribute)
  e   eval("MY.Cpus") defined              (ClassAd eval() of a string)
  ce  eval() of a cron attribute name built with strcat

The job prints $APPTAINER_CONTAINER: the path the starter chose, i.e. the answers.
Measured (December 2026): cm1cu1j1m1e1ce1 on 23.9.6 (mix) and 25.14.1 (sid).

usage:  benchmarks/image_expr_visibility.py mix|sid
It uses its own pool instance ("imgexpr": a copy of the root filesystem,
its own port), so it needs no lock against the end-to-end tests.
"""

from __future__ import annotations

import itertools
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from tests.realpool.pool import RealPool  # noqa: E402

QUESTIONS = {
    "cm": "!isUndefined(MY.CronProbe)",
    "cu": "!isUndefined(CronProbe)",
    "j": "!isUndefined(TARGET.REQUIRED_OS)",
    "m": "!isUndefined(MY.Cpus)",
    "e": '!isUndefined(eval("MY.Cpus"))',
    "ce": '!isUndefined(eval(strcat("MY.Cron", "Probe")))',
}
JOB = """executable = /bin/sh
arguments = "-c 'echo IMAGE=$APPTAINER_CONTAINER'"
should_transfer_files = NO
+REQUIRED_OS = "rhel9"
output = visibility.out
error = visibility.err
log = visibility.log
queue
"""


def main() -> None:
    variant = sys.argv[1] if len(sys.argv) > 1 else "sid"
    pool = RealPool(variant, "imgexpr")
    pool.build()
    pool.write("/opt/probe-cron.sh", "#!/bin/sh\necho 'CronProbe = 1'\necho -\n", 0o755)
    names = list(QUESTIONS)
    links = " ".join(f"ln -sfn /opt/containers/sandbox {''.join(n + str(v) for n, v in zip(names, combo))};"
                     for combo in itertools.product((0, 1), repeat=len(names)))
    pool.sh(f"mkdir -p /opt/probe && cd /opt/probe && {links}")
    answers = ", ".join(f'ifThenElse({QUESTIONS[n]}, "{n}1", "{n}0")' for n in names)
    pool.configure(extra=f"""STARTD_CRON_JOBLIST = PROBE
STARTD_CRON_PROBE_EXECUTABLE = /opt/probe-cron.sh
STARTD_CRON_PROBE_PERIOD = 5
STARTD_CRON_PROBE_MODE = Periodic
SINGULARITY_JOB = !isUndefined(TARGET.REQUIRED_OS)
SINGULARITY_IMAGE_EXPR = strcat("/opt/probe/", {answers})
""")
    pool.start()
    try:
        pool.wait_for(lambda: [a for a in pool.slots("CronProbe") if a.get("CronProbe") == 1], 60, "CronProbe")
        cluster = pool.submit(JOB)
        pool.wait_for(lambda: pool.job_status(cluster) == 4, 90, "the job")
        with open(pool.path("/home/tester/visibility.out")) as handle:
            print(f"{variant}: {handle.read().strip()}  ({', '.join(f'{n}: {q}' for n, q in QUESTIONS.items())})")
    finally:
        pool.stop()


if __name__ == "__main__":
    main()
