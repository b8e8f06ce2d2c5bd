"""What the command modules share: exit codes, output, the Config of the
running command (only its own knobs), the probes it runs and their settings."""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

from startd_health.cli.knobs import MIN_DEADLINE, probe_classes, probe_knobs
from startd_health.core.config import PREFIX, CondorParams, Config, ConfigError, load_config

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


# What learn_dynamic_probes read of HTCondor's configuration (CondorParams,
# or the ConfigError reading it raised), for the build_config that follows:
# one read per command, yet a long-lived caller that builds its Config again
# (after a reconfig) reads the configuration afresh.
_learnt_condor: Dict[bool, Any] = {}


def condor_params(no_condor_config: bool, keep: bool = False) -> CondorParams:
    """HTCondor's configuration (a forked child, ~10 ms; up to its timeout
    when an `include command` hangs): the copy learn_dynamic_probes read
    (used once), else read now. keep: leave it for the next caller."""
    found = _learnt_condor.pop(no_condor_config, None)
    if found is None:
        try:
            found = CondorParams(False if no_condor_config else None)
        except ConfigError as exc:
            found = exc
    if keep:
        _learnt_condor[no_condor_config] = found
    if isinstance(found, ConfigError):
        raise found
    return found


def _flag_value(argv: Sequence[str], flag: str) -> Optional[str]:
    """The last value argv gives option flag (`--flag VALUE` or `--flag=VALUE`), as argparse takes it."""
    value = None
    for index, arg in enumerate(argv):
        if arg == flag and index + 1 < len(argv):
            value = argv[index + 1]
        elif arg.startswith(flag + "="):
            value = arg[len(flag) + 1:]
    return value


def learn_dynamic_probes(argv: Sequence[str]) -> None:
    """Tell the probe registry which probes the configuration declares (site
    checks), before the parser is built: their knobs become options like any
    probe's. Reads a knob as load_config does: flag > _CONDOR_ environment >
    HTCondor's configuration. A broken HTCondor configuration is left for
    build_config to report; a bad site-check knob is kept by the registry
    and reported by build_config too (cron: a complete unhealthy ad)."""
    from startd_health.probes import configure
    try:
        condor: Optional[CondorParams] = condor_params("--no-condor-config" in argv, keep=True)
    except ConfigError:
        condor = None

    def lookup(name: str) -> Optional[Tuple[str, str]]:
        flag = "--" + name.lower().replace("_", "-")
        value = _flag_value(argv, flag)
        if value is not None:
            return value, f"command line {flag}"
        if "_CONDOR_" + PREFIX + name in os.environ:
            return os.environ["_CONDOR_" + PREFIX + name], f"environment _CONDOR_{PREFIX}{name}"
        value = condor.get(PREFIX + name) if condor is not None else None
        return (value, f"HTCondor config {PREFIX}{name}") if value is not None else None

    configure(lookup)


def build_config(args: argparse.Namespace) -> Config:
    """The running command's knobs (args.knobs), resolved: flag > environment/HTCondor > derived > default."""
    from startd_health.probes import configuration_error
    knobs = args.knobs
    flags = {k.name: getattr(args, k.dest, None) for k in knobs}
    condor = condor_params(bool(args.no_condor_config))
    if configuration_error():
        raise ConfigError(configuration_error())
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
    unselected = [n for n, c in classes.items() if c.dynamic and n not in config["PROBES"]]
    if unselected and not config.source("PROBES").startswith("command line"):
        # configured, yet not run: say so rather than let it look checked
        import logging
        logging.getLogger("startd-health").warning(
            "configured but not in STARTD_HEALTH_PROBES (%s), so not run: %s", config.source("PROBES"),
            ", ".join(unselected))
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
        prefix = type(probe).prefix() + "_"
        values = {(k.name[len(prefix):] if k.name.startswith(prefix) else k.name).lower(): config[k.name]
                  for k in probe_knobs(probe.name, type(probe))}
        values.update({name.lower(): config[name] for name in type(probe).shared_knobs})
        settings[probe.name] = values
    return settings
