"""`startd-health cron`: run the probes, print the node's health as ClassAd
attributes for the condor_startd, ending with a '-' line."""

from __future__ import annotations

import argparse
import signal
import time

from startd_health.cli.base import (EXIT_CONFIG, EXIT_OK, EXIT_STATE, config_or_failure_ad, emit,
                                    on_demand_results, on_sigterm, probe_settings)

DESCRIPTION = ("Run the probes (re-using recent results) and print the node's health as ClassAd attributes "
               "for the condor_startd, ending with a '-' line.")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--force", action="store_true", help="run every probe now, even if a recent result exists")


def main(args: argparse.Namespace) -> int:
    from startd_health.core.runner import run_probes
    from startd_health.core.state import StateDir
    from startd_health.core.verdict import judge
    from startd_health.monitor.cron import render

    signal.signal(signal.SIGTERM, on_sigterm)
    config, probes = config_or_failure_ad(args)
    if config is None:
        return EXIT_CONFIG
    report = run_probes(probes, probe_settings(config, probes), config["DEADLINE"],
                        state=StateDir(config["STATE_DIR"]), force=args.force, condor=config.condor)
    verdict = judge(report.results)
    report.results.extend(on_demand_results(config))  # published with their age, not judged
    if config["TEXTFILE_DIR"]:
        from startd_health.monitor.textfile import write_textfile
        report.state_error = report.state_error or write_textfile(config["TEXTFILE_DIR"], report.results, verdict)
    emit(render(report, verdict, time.time(), ospool=config["OSPOOL_ATTRIBUTES"]))
    return EXIT_STATE if report.state_error else EXIT_OK
