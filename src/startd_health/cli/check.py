"""`startd-health check`: the node's health as a table (or JSON) for a person."""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time

from startd_health.cli.base import (EXIT_UNKNOWN, build_config, emit, on_demand_results, probe_settings,
                                    selected_probes)
from startd_health.core.config import ConfigError

DESCRIPTION = ("Run the probes (re-using recent results) and print a table: status, age and reason of every "
               "probe, and the node's verdict. Exit status: 0 healthy, 1 degraded, 2 failed, 3 configuration "
               "error.")

log = logging.getLogger("startd-health")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--force", action="store_true", help="run every probe now, even if a recent result exists")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table (for scripts)")
    parser.add_argument("--now", action="store_true", help="fresh results: ask the running daemon (STATE_DIR/"
                        "recheck.sock) to re-run the probes and wait for them; without a daemon, run them here "
                        "(as --force)")


def main(args: argparse.Namespace) -> int:
    from startd_health.core.runner import run_probes
    from startd_health.core.state import StateDir
    from startd_health.core.verdict import judge
    from startd_health.monitor.terminal import as_json, exit_status, table

    try:
        config = build_config(args)
        probes = selected_probes(config)
    except ConfigError as exc:
        print(f"startd-health: error: {exc}", file=sys.stderr)
        return EXIT_UNKNOWN
    settings = probe_settings(config, probes)
    force = args.force
    if args.now and not force:
        # The daemon re-runs them (its results land in the state directory,
        # which the run below then re-uses as fresh); without one, we do.
        from startd_health.monitor.recheck import recheck_and_wait
        force = not recheck_and_wait(StateDir(config["STATE_DIR"]), [p.name for p in probes], settings)
    report = run_probes(probes, settings, config["DEADLINE"],
                        state=StateDir(config["STATE_DIR"]), force=force, condor=config.condor)
    verdict, now = judge(report.results), time.time()
    shown = report.results + on_demand_results(config)  # shown, not judged
    if args.json:
        emit(as_json(shown, verdict, now))
    else:
        colour = sys.stdout.isatty() and not os.environ.get("NO_COLOR") and os.environ.get("TERM") != "dumb"
        emit(table(shown, verdict, now, colour))
    if report.state_error:
        log.warning("%s", report.state_error)
    return exit_status(report.results)
