"""`startd-health exporter`: the node's Prometheus endpoint."""

from __future__ import annotations

import argparse
import logging

from startd_health.cli.base import build_config, probe_classes, probe_settings, selected_probes

DESCRIPTION = ("Serve the node's probe results as Prometheus metrics on STARTD_HEALTH_EXPORTER_LISTEN; each "
               "probe runs on its own schedule (its _PERIOD), never on the scrape path. Stops cleanly on SIGTERM.")


def main(args: argparse.Namespace) -> int:
    from startd_health.core.state import StateDir
    from startd_health.monitor.exporter import NodeExporter
    from startd_health.monitor.serving import serve_configured

    if not args.debug:  # a daemon says when it starts and stops
        logging.getLogger().setLevel(logging.INFO)
    config = build_config(args)
    probes = selected_probes(config)
    exporter = NodeExporter(probes, probe_settings(config, probes), StateDir(config["STATE_DIR"]), config.condor,
                            on_demand=[name for name, cls in probe_classes().items() if not cls.periodic])
    return serve_configured(exporter, config, "EXPORTER_LISTEN")
