"""`startd-health config [NAME ...]`: the effective configuration.

Without names: every knob with its value and where it came from. With
names (STARTD_HEALTH_ prefix optional, any case), like condor_config_val:
just their values, one a line (with --verbose: `NAME = value  # source`).
A default worked out when the knob is used (the container runtime found,
the GPU test image, the userns account, the collectors) is shown as the
value it resolves to, not a blank."""

from __future__ import annotations

import argparse
import os
from typing import List

from startd_health.cli.base import EXIT_OK, build_config, emit, probe_classes
from startd_health.cli.knobs import Group, knob_groups, knobs_of
from startd_health.core.config import PREFIX, ConfigError, describe, effective

DESCRIPTION = ("Print every STARTD_HEALTH_ knob with its effective value and where it came from; with NAMEs, "
               "just the value of each, as condor_config_val does.")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("names", nargs="*", metavar="NAME",
                        help="knobs to print (CONTAINER_IMAGES or STARTD_HEALTH_CONTAINER_IMAGES)")
    parser.add_argument("-v", "--verbose", action="store_true",
                        help="with NAMEs: print NAME = value and its source, as without NAMEs")


def knob_name(text: str) -> str:
    name = text.strip().upper()
    return name[len(PREFIX):] if name.startswith(PREFIX) else name


def groups_for(names: List[str], groups: List[Group]) -> List[str]:
    """Selectors that load the named knobs and what their resolved defaults
    read (the rest of their group, the knobs their probe shares): a bad value
    of an unrelated knob must not keep `config NAME` from answering."""
    group_of = {k.name: g.key for g in groups for k in g.knobs}
    unknown = [n for n in names if n not in group_of]
    if unknown:
        raise ConfigError(f"no such knob: {', '.join(PREFIX + n for n in unknown)} "
                          f"(`startd-health config` lists them all)")
    keys = {group_of[n] for n in names}
    classes = probe_classes()
    shared = [s for key in keys if key in classes for s in classes[key].shared_knobs]
    return sorted(keys) + shared


def main(args: argparse.Namespace) -> int:
    if not args.names:
        config = build_config(args)
        where = ("found" + (f" (CONDOR_CONFIG={os.environ['CONDOR_CONFIG']})" if os.environ.get("CONDOR_CONFIG")
                            else "") + f", read through {config.condor.via}"
                 if config.condor.available else "not used: built-in defaults and _CONDOR_ environment only")
        emit("".join(line + "\n" for line in [f"# HTCondor configuration: {where}"] + describe(config, args.knobs)))
        return EXIT_OK
    names = [knob_name(n) for n in args.names]
    args.knobs = knobs_of(knob_groups(groups_for(names, knob_groups(["all"]))))
    config = build_config(args)
    by_name = {k.name: k for k in args.knobs}
    wanted = [by_name[n] for n in names]
    # The value alone, as condor_config_val prints it.
    lines = describe(config, wanted) if args.verbose else [effective(config, k)[0] for k in wanted]
    emit("".join(line + "\n" for line in lines))
    return EXIT_OK
