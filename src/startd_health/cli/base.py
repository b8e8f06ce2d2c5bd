"""What the command modules share: exit codes, output, the Config of the
running command (only its own knobs), the probes it runs and their settings."""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

from startd_health.cli.knobs import MIN_DEADLINE, probe_classes, probe_knobs
from startd_health.core.config import CondorParams, Config, ConfigError, load_config

EXIT_OK, EXIT_INTERNAL, EXIT_CONFIG, EXIT_STATE = 0, 1, 2, 3
EXIT_UNKNOWN = 3  # `check`: the monitoring-plugin "unknown" (0/1/2 are healthy/degraded/failed)


def emit(text: str) -> None:
    sys.stdout.write(text)
    sys.stdout.flush()


def on_sigterm(signum: int, frame: Any) -> None:
    # The startd (KILL = true) or systemd wants us gone: take our children
    # with us rather than leave them holding images or mounts.
    from startd_health.system.procs import kill_live_groups
    kill_live_groups()
    os._exit(128 + signum)


def missing_package(package: str) -> bool:
    """Whether an optional package cannot be imported here (without importing it)."""
    import importlib.util
    try:
        return importlib.util.find_spec(package) is None
    except (ImportError, ValueError):
        return True


def require_packages(what: str, packages: Sequence[str], otherwise: str) -> None:
    """One line naming what needs which missing optional package (a zipapp may lack them)."""
    missing = [p for p in packages if missing_package(p)]
    if missing:
        raise ConfigError(f"{what} needs the Python package{'s' if len(missing) > 1 else ''} "
                          f"{', '.join(missing)}, not installed for {sys.executable or 'this Python'}: "
                          f"install {'them' if len(missing) > 1 else 'it'}, or {otherwise}")


def build_config(args: argparse.Namespace) -> Config:
    """The running command's knobs (args.knobs), resolved: flag > environment/HTCondor > derived > default."""
    knobs = args.knobs
    flags = {k.name: getattr(args, k.dest, None) for k in knobs}
    condor = CondorParams(False if args.no_condor_config else None)
    config = load_config(knobs, flags, condor, {k.name: k.derive for k in knobs if k.derive is not None})
    names = {k.name for k in knobs}
    if "PROBES" in names:
        known = probe_classes()
        unknown = [p for p in config["PROBES"] if p not in known]
        if unknown:
            raise ConfigError(f"STARTD_HEALTH_PROBES ({config.source('PROBES')}): unknown probe "
                              f"{', '.join(unknown)} (known: {', '.join(known)})")
    if "DEADLINE" in names and config["DEADLINE"] < MIN_DEADLINE:
        raise ConfigError(f"STARTD_HEALTH_DEADLINE = {config['DEADLINE']:g} ({config.source('DEADLINE')}): "
                          f"must be at least {MIN_DEADLINE:g} seconds")
    for knob in knobs:
        if knob.needs and config[knob.name] and config[knob.name] != knob.default:
            require_packages(f"{knob.param_name} ({config.source(knob.name)})", [knob.needs],
                             f"leave {knob.param_name} empty")
    return config


def config_or_failure_ad(args: argparse.Namespace) -> Tuple[Optional[Config], List[Any]]:
    """(config, periodic probes) of a command that prints an ad for the
    startd (cron, daemon); on a configuration error it prints the complete
    unhealthy ad naming it and returns (None, [])."""
    import logging
    import time

    from startd_health.monitor.cron import render_failure
    try:
        config = build_config(args)
        return config, selected_probes(config)
    except ConfigError as exc:
        logging.getLogger("startd-health").error("%s", exc)
        emit(render_failure(f"configuration error: {exc}", time.time()))
        return None, []


def selected_probes(config: Config) -> List[Any]:
    """The periodic probes to run: cron, check and the exporter never run an on-demand one."""
    classes = probe_classes()
    probes = [classes[n]() for n in config["PROBES"] if classes[n].periodic]
    if not probes:  # running nothing would publish a healthy node that was never checked
        raise ConfigError(f"STARTD_HEALTH_PROBES = {', '.join(config['PROBES'])} ({config.source('PROBES')}): "
                          f"selects no periodic probe; name at least one of "
                          f"{', '.join(n for n, c in classes.items() if c.periodic)}")
    return probes


def on_demand_results(config: Config) -> List[Any]:
    """The last results of the on-demand probes (Probe.periodic = False, e.g.
    benchmarks): every run publishes them with their age, never runs them,
    and never counts them for the verdict."""
    from startd_health.core.state import StateDir
    state = StateDir(config["STATE_DIR"])
    results = (state.load(name) for name, cls in probe_classes().items() if not cls.periodic)
    return [r for r in results if r is not None]


def probe_settings(config: Config, probes: Sequence[Any]) -> Dict[str, Mapping[str, Any]]:
    """Each probe's knobs, keyed without the probe's prefix: CONTAINER_IMAGES -> 'images'."""
    settings: Dict[str, Mapping[str, Any]] = {}
    for probe in probes:
        prefix = probe.name.upper() + "_"
        values = {k.name[len(prefix):].lower(): config[k.name] for k in probe_knobs(probe.name, type(probe))}
        values.update({name.lower(): config[name] for name in type(probe).shared_knobs})
        settings[probe.name] = values
    return settings
