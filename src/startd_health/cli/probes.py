"""`startd-health probes`: the available probes."""

from __future__ import annotations

import argparse

from startd_health.cli.base import EXIT_OK, emit, probe_classes

DESCRIPTION = "List the available probes: name, on/off by default, what each checks."


def main(args: argparse.Namespace) -> int:
    classes = probe_classes()
    width = max(len(n) for n in classes)
    emit("".join(f"{n:<{width}}  {'on ' if c.enabled_by_default else 'off'}  {c.description}\n"
                 for n, c in classes.items()))
    return EXIT_OK
