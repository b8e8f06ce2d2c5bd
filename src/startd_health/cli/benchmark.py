"""`startd-health benchmark`: the HTCondor BENCHMARKS job."""

from __future__ import annotations

import argparse
import logging
import signal
import time

from startd_health.cli.base import (EXIT_CONFIG, EXIT_OK, EXIT_STATE, build_config, emit, on_sigterm, probe_classes,
                                    probe_settings)
from startd_health.core.config import ConfigError

DESCRIPTION = ("Run the on-demand benchmarks (unless a result younger than their _PERIOD exists), keep the "
               "result in the state directory, where every cron run re-publishes it with its age, and print its "
               "ClassAd attributes for the startd's BENCHMARKS_JOBLIST, ending with a '-' line. Never prints the "
               "node's verdict.")

log = logging.getLogger("startd-health")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--force", action="store_true", help="run now, even if a recent result exists")


def main(args: argparse.Namespace) -> int:
    """Run the on-demand probes, keep their results in the state directory,
    print their attributes (never the verdict) ending with a '-' line."""
    from startd_health.core.runner import OVERRUN_GRACE_SECONDS, run_probes
    from startd_health.core.state import StateDir
    from startd_health.monitor.cron import render_probes

    signal.signal(signal.SIGTERM, on_sigterm)
    try:
        config = build_config(args)
    except ConfigError as exc:
        log.error("%s", exc)
        emit("-\n")
        return EXIT_CONFIG
    probes = [cls() for cls in probe_classes().values() if not cls.periodic]
    settings = probe_settings(config, probes)
    deadline = max((s["timeout"] for s in settings.values()), default=0.0) + OVERRUN_GRACE_SECONDS + 1
    report = run_probes(probes, settings, deadline, state=StateDir(config["STATE_DIR"]), force=args.force,
                        condor=config.condor)
    emit(render_probes(report.results, time.time()))
    return EXIT_STATE if report.state_error else EXIT_OK
