"""`startd-health probes`: the available probes."""

from __future__ import annotations

import argparse
import sys

from startd_health.cli.base import EXIT_OK, emit, probe_classes

DESCRIPTION = ("List the available probes: name, on/off by default, what each checks (configured site checks "
               "included).")


def main(args: argparse.Namespace) -> int:
    from startd_health.probes import configuration_error
    if configuration_error():   # the built-in probes are still worth listing
        print(f"startd-health: warning: site checks not listed: {configuration_error()}", file=sys.stderr)
    classes = probe_classes()
    width = max(len(n) for n in classes)
    emit("".join(f"{n:<{width}}  {'on ' if c.enabled_by_default else 'off'}  {c.description}\n"
                 for n, c in classes.items()))
    return EXIT_OK
