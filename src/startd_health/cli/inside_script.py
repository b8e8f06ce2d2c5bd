"""`startd-health inside-script`: the container probe's inside-the-image checks as a sh script."""

from __future__ import annotations

import argparse

from startd_health.cli.base import EXIT_OK, build_config, emit

DESCRIPTION = ("Print a POSIX sh script with the checks the container probe runs inside images (writable /tmp "
               "and home, STARTD_HEALTH_CONTAINER_BINDS, the CVMFS repositories) for a job to run in its own "
               "container (e.g. first thing in its executable): it exits 1 with one line per failure on stderr. "
               "Needs nothing but sh and ls inside the image.")


def main(args: argparse.Namespace) -> int:
    from startd_health.system import inside

    config = build_config(args)
    emit(inside.standalone(config["CONTAINER_BINDS"], config["CVMFS_ROOT"], config["CVMFS_REPOSITORIES"]))
    return EXIT_OK
