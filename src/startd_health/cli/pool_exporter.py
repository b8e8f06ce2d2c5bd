"""`startd-health pool-exporter`: the pool's health, from the collector, as Prometheus metrics."""

from __future__ import annotations

import argparse
import logging

from startd_health.cli.base import build_config

DESCRIPTION = ("Query the HTCondor collector(s) every STARTD_HEALTH_POOL_INTERVAL for the StartdHealth* "
               "attributes of all slots and serve pool-wide Prometheus metrics on STARTD_HEALTH_POOL_LISTEN. "
               "Stops cleanly on SIGTERM.")


def main(args: argparse.Namespace) -> int:
    from startd_health.monitor.pool.exporter import run

    if not args.debug:  # a daemon says when it starts and stops
        logging.getLogger().setLevel(logging.INFO)
    return run(build_config(args))
