#!/usr/bin/env python3
"""Build startd-health.pyz: the relocatable artifact for pilots (glideins).

A pilot runs a condor_startd as an ordinary user on someone else's node, with
no root and no package install. The zipapp runs on the node's own python3
(3.9+, e.g. EL9's) with nothing else installed: the HTCondor bindings are used
when that Python has them, else `condor_config_val` reads the pilot's
configuration, values are quoted and the pre-job hook reads the job ad
without them. prometheus_client (pure Python) is bundled for the textfile
output. `benchmark` runs its workers from the zip (DB12 needs nothing else;
matmul and memory need the node's numpy); the exporters need apscheduler and
are not meant for pilots.

usage: build_zipapp.py [--output dist/startd-health.pyz] [--python "/usr/bin/env python3"]
Keep the name startd-health.pyz: 50-startd-health.conf derives the command
from STARTD_HEALTH_CRON (README, "Pilots (glideins)").
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import zipapp

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

MAIN = '''"""startd-health as a zipapp: `cron` unless another command is named."""
import sys

from startd_health.cli import cron_main, run
from startd_health.cli.commands import COMMAND_NAMES, TOP_LEVEL_OPTIONS

if sys.argv[1:2] and (sys.argv[1] in COMMAND_NAMES or sys.argv[1] in TOP_LEVEL_OPTIONS):
    run()
else:
    cron_main()
'''


def build(output: str, python: str = "/usr/bin/env python3") -> str:
    """python: the interpreter line (e.g. "/usr/bin/python3 -S" keeps the node's site-packages,
    and bindings of another HTCondor version than the pilot's, out)."""
    staging = tempfile.mkdtemp(prefix="startd-health-pyz-")
    try:
        ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
        shutil.copytree(os.path.join(REPO, "src", "startd_health"), os.path.join(staging, "startd_health"),
                        ignore=ignore)
        try:
            import prometheus_client
            shutil.copytree(os.path.dirname(prometheus_client.__file__), os.path.join(staging, "prometheus_client"),
                            ignore=ignore)
        except ImportError:
            print("build_zipapp: prometheus_client not installed here: the textfile output will be off",
                  file=sys.stderr)
        with open(os.path.join(staging, "__main__.py"), "w") as handle:
            handle.write(MAIN)
        os.makedirs(os.path.dirname(os.path.abspath(output)), exist_ok=True)
        tmp = output + ".tmp"
        zipapp.create_archive(staging, tmp, interpreter=python, compressed=True)
        os.chmod(tmp, 0o755)
        os.replace(tmp, output)
        return output
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description="Build the pilot zipapp startd-health.pyz.")
    parser.add_argument("--output", default=os.path.join(REPO, "dist", "startd-health.pyz"))
    parser.add_argument("--python", default="/usr/bin/env python3",
                        help="the zipapp's interpreter line (default: %(default)s)")
    args = parser.parse_args()
    path = build(args.output, args.python)
    print(f"{path} ({os.path.getsize(path) // 1024} KiB)")


if __name__ == "__main__":
    main()
