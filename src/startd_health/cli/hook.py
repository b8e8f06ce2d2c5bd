"""`startd-health hook prepare-job`: HTCondor's <KEYWORD>_HOOK_PREPARE_JOB."""

from __future__ import annotations

import argparse
import signal

from startd_health.cli.base import build_config, on_sigterm

DESCRIPTION = ("Run as <KEYWORD>_HOOK_PREPARE_JOB: check that the job's container image launches (re-using the "
               "last periodic result when fresh); exit 0 lets the job start, 1 holds it with the reason, "
               "HookStatusCode 300 requeues it.")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("hook_type", choices=["prepare-job"], help="which hook")


def main(args: argparse.Namespace) -> int:
    from startd_health.monitor.hook import main_prepare_job
    signal.signal(signal.SIGTERM, on_sigterm)
    return main_prepare_job(lambda: build_config(args))  # a config error must not hold the job
