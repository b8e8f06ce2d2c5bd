"""The one declaration of startd-health's commands.

Help, the no-command error, the README's Commands section and the zipapp's
dispatch all read this table. It is plain data so that reading it costs
nothing: a command's module is imported only when that command runs.
"""

from __future__ import annotations

from typing import NamedTuple, Tuple


class Command(NamedTuple):
    name: str
    help: str                   # one line, for `startd-health --help` and the README
    module: str                 # startd_health.cli.<module>: add_arguments(parser), main(args) -> int
    knobs: Tuple[str, ...]      # knob groups (cli/knobs.py) or single knobs (NAME) it reads
    synopsis: str = "[options]"  # its arguments, as the README's Commands section shows them
    needs: Tuple[str, ...] = ()  # optional Python packages it cannot run without


PROBE_RUN = ("PROBES", "DEADLINE", "STATE_DIR", "periodic probes")

COMMANDS = (
    Command("cron", "run the probes and print ClassAd attributes for STARTD_CRON, ending with a '-' line",
            "cron", PROBE_RUN + ("cron",), "[--force] [options]"),
    Command("check", "run the probes and print a table for a person (exit 0 healthy, 1 degraded, 2 failed, "
            "3 configuration or internal error)", "check", PROBE_RUN, "[--force] [--now] [--json] [options]"),
    Command("daemon", "run the probes continuously, each on its own schedule and at once on events, printing "
            "a complete ad for a STARTD_CRON WaitForExit job whenever something changes",
            "daemon", PROBE_RUN + ("cron", "daemon")),
    Command("benchmark", "run the benchmarks now (the HTCondor BENCHMARKS job) and print their ClassAd lines, "
            "no verdict", "benchmark", ("STATE_DIR", "on-demand probes"), "[--force] [options]"),
    Command("exporter", "serve the node's health as Prometheus metrics; probes run on their own schedules",
            "exporter", ("PROBES", "STATE_DIR", "exporter", "periodic probes"),
            needs=("prometheus_client", "apscheduler")),
    Command("pool-exporter", "serve the pool's health from the HTCondor collector as Prometheus metrics",
            "pool_exporter", ("pool", "EXPORTER_TLS_CERT", "EXPORTER_TLS_KEY"),
            needs=("htcondor2", "prometheus_client", "apscheduler")),
    Command("hook", "HTCondor job hook: `hook prepare-job` checks the job's container image before it starts",
            "hook", ("STATE_DIR", "hook", "container", "CVMFS_REPOSITORIES", "CVMFS_ROOT", "EXECUTE_FULL_MB",
                     "EXECUTE_LOW_MB", "EXECUTE_FULL_INODES", "EXECUTE_LOW_INODES"), "prepare-job [options]"),
    Command("inside-script", "print the inside-the-image checks as a sh script a job can run in its own "
            "container", "inside_script", ("CONTAINER_BINDS", "CVMFS_REPOSITORIES", "CVMFS_ROOT")),
    Command("config", "print the effective configuration and where each value came from (all knobs, or "
            "the NAMEs given)", "config", ("all",), "[NAME ...] [options]"),
    Command("probes", "list the available probes", "probes", (), ""),
)

BY_NAME = {command.name: command for command in COMMANDS}
COMMAND_NAMES = tuple(BY_NAME)
# Options that make sense without a command (HTCondor tools spell them with one dash).
TOP_LEVEL_OPTIONS = ("-h", "--help", "-help", "-V", "--version", "-version")
