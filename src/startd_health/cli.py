"""Command line: startd-health cron | config | probes, and startd-health-cron.

Logs go to stderr, data to stdout. Exit status: 0 success; 1 internal error;
2 bad configuration or usage; 3 (cron) the ad was printed but results could
not be kept in the state directory. Whatever happens, `cron` prints a
complete ad ending in a `-` line.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import time
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

from startd_health import __version__
from startd_health.core.config import (CondorParams, Config, ConfigError, Knob, describe, load_config, parse_bool, parse_list,
                     parse_positive_seconds, parse_string)
from startd_health.monitor.exporter_listen import format_listen, parse_listen

log = logging.getLogger("startd-health")

EXIT_OK, EXIT_INTERNAL, EXIT_CONFIG, EXIT_STATE = 0, 1, 2, 3
EXIT_UNKNOWN = 3  # `check`: the monitoring-plugin "unknown" (0/1/2 are healthy/degraded/failed)

CORE_KNOBS = (
    Knob("PROBES", parse_list, None, "probes to run (default: every probe enabled by default)", "LIST"),
    Knob("DEADLINE", parse_positive_seconds, 150.0, "the whole run ends within this many seconds; keep it "
         "below the cron PERIOD", "SECONDS"),
    Knob("STATE_DIR", lambda text: os.path.abspath(text.strip()), None, "directory for the last results "
         "and the probe locks (default: $(SPOOL)/startd_health with HTCondor, else "
         "$XDG_STATE_HOME/startd-health)", "DIR"),
    Knob("TEXTFILE_DIR", lambda text: os.path.abspath(text.strip()) if text.strip() else "", "",
         "also write the metrics to DIR/startd_health.prom for node_exporter's textfile collector "
         "(each cron run; empty: off)", "DIR"),
    Knob("EXPORTER_LISTEN", parse_listen, ("127.0.0.1", 9761), "address:port of `startd-health exporter`",
         "ADDR:PORT", format_listen),
    Knob("EXPORTER_TLS_CERT", parse_string, "", "TLS certificate file for the exporter (with "
         "EXPORTER_TLS_KEY; empty: plain HTTP)", "FILE"),
    Knob("EXPORTER_TLS_KEY", parse_string, "", "TLS private key file for the exporter", "FILE"),
    Knob("OSPOOL_ATTRIBUTES", parse_bool, True, "also publish the OSPool pilot's CVMFS attribute names "
         "(HAS_CVMFS_<repo>, CVMFS_<repo>_REVISION, _NIOERR, _LAST_IOERR) for existing job requirements", "BOOL"),
    Knob("HOOK_TIMEOUT", parse_positive_seconds, 20.0, "the pre-job hook decides within this many seconds "
         "(HTCondor gives PREPARE_JOB hooks no timeout)", "SECONDS"),
)
MIN_DEADLINE = 5.0


def _probe_classes() -> Dict[str, Any]:
    from startd_health.probes import all_probes
    return all_probes()


def probe_knobs(name: str, cls: Any) -> Tuple[Knob, ...]:
    upper = name.upper()
    return (
        Knob(f"{upper}_PERIOD", parse_positive_seconds, cls.default_period,
             f"re-run the {name} probe when its last result is older than this", "SECONDS"),
        Knob(f"{upper}_TIMEOUT", parse_positive_seconds, cls.default_timeout,
             f"budget for one run of the {name} probe", "SECONDS"),
    ) + tuple(cls.knobs)


def all_knobs() -> List[Knob]:
    from startd_health.monitor.pool_knobs import POOL_KNOBS
    knobs = list(CORE_KNOBS) + list(POOL_KNOBS)
    for name, cls in _probe_classes().items():
        knobs.extend(probe_knobs(name, cls))
    return knobs


def _default_state_dir(condor: CondorParams) -> Optional[Tuple[str, str]]:
    spool = condor.get("SPOOL")
    if spool and os.path.isabs(spool):
        return os.path.join(spool, "startd_health"), "default (HTCondor $(SPOOL)/startd_health)"
    base = os.environ.get("XDG_STATE_HOME") or os.path.join(os.path.expanduser("~"), ".local", "state")
    return os.path.join(base, "startd-health"), "default ($XDG_STATE_HOME/startd-health)"


def build_config(args: argparse.Namespace) -> Config:
    knobs = all_knobs()
    flags = {k.name: getattr(args, k.dest, None) for k in knobs}
    condor = CondorParams(False if args.no_condor_config else None)
    known = _probe_classes()
    enabled = tuple(n for n, c in known.items() if c.enabled_by_default)
    from startd_health.monitor.pool_knobs import default_collectors
    config = load_config(knobs, flags, condor, {
        "STATE_DIR": _default_state_dir,
        "POOL_COLLECTORS": default_collectors,
        "PROBES": lambda _: (enabled, "default (probes enabled by default)"),
    })
    unknown = [p for p in config["PROBES"] if p not in known]
    if unknown:
        raise ConfigError(f"STARTD_HEALTH_PROBES ({config.source('PROBES')}): unknown probe "
                          f"{', '.join(unknown)} (known: {', '.join(known)})")
    if config["DEADLINE"] < MIN_DEADLINE:
        raise ConfigError(f"STARTD_HEALTH_DEADLINE = {config['DEADLINE']:g} ({config.source('DEADLINE')}): "
                          f"must be at least {MIN_DEADLINE:g} seconds")
    return config


def selected_probes(config: Config) -> List[Any]:
    """The periodic probes to run: cron, check and the exporter never run an on-demand one."""
    classes = _probe_classes()
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
    results = (state.load(name) for name, cls in _probe_classes().items() if not cls.periodic)
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


# ---------------------------------------------------------------- commands

def _on_sigterm(signum: int, frame: Any) -> None:
    # The startd (KILL = true) or systemd wants us gone: take our children
    # with us rather than leave them holding images or mounts.
    from startd_health.system.procs import kill_live_groups
    kill_live_groups()
    os._exit(128 + signum)


def cmd_cron(args: argparse.Namespace) -> int:
    from startd_health.monitor.cron import render, render_failure
    from startd_health.core.runner import run_probes
    from startd_health.core.state import StateDir
    from startd_health.core.verdict import judge

    signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        config = build_config(args)
        probes = selected_probes(config)
    except ConfigError as exc:
        log.error("%s", exc)
        _emit(render_failure(f"configuration error: {exc}", time.time()))
        return EXIT_CONFIG
    report = run_probes(probes, probe_settings(config, probes), config["DEADLINE"],
                        state=StateDir(config["STATE_DIR"]), force=args.force, condor=config.condor)
    verdict = judge(report.results)
    report.results.extend(on_demand_results(config))  # published with their age, not judged
    if config["TEXTFILE_DIR"]:
        report.state_error = report.state_error or write_textfile(config["TEXTFILE_DIR"], report.results, verdict)
    _emit(render(report, verdict, time.time(), ospool=config["OSPOOL_ATTRIBUTES"]))
    return EXIT_STATE if report.state_error else EXIT_OK


def write_textfile(directory: str, results: Sequence[Any], verdict: Any) -> str:
    """node_exporter textfile: atomic, mode 0644, no timestamps. Returns an error text or ''."""
    from startd_health.monitor.metrics import exposition
    from startd_health.core.state import write_atomic
    path = os.path.join(directory, "startd_health.prom")
    try:
        write_atomic(path, exposition(results, verdict), mode=0o644)
    except OSError as exc:
        log.warning("cannot write %s: %s", path, exc.strerror or exc)
        return f"textfile {path}: {exc.strerror or exc}"
    return ""


def cmd_exporter(args: argparse.Namespace) -> int:
    from startd_health.monitor.exporter import NodeExporter, serve_configured
    from startd_health.core.state import StateDir

    if not args.debug:  # a daemon says when it starts and stops
        logging.getLogger().setLevel(logging.INFO)
    config = build_config(args)
    probes = selected_probes(config)
    exporter = NodeExporter(probes, probe_settings(config, probes), StateDir(config["STATE_DIR"]), config.condor,
                            on_demand=[name for name, cls in _probe_classes().items() if not cls.periodic])
    return serve_configured(exporter, config, "EXPORTER_LISTEN")


def cmd_check(args: argparse.Namespace) -> int:
    from startd_health.core.runner import run_probes
    from startd_health.core.state import StateDir
    from startd_health.monitor.terminal import as_json, exit_status, table
    from startd_health.core.verdict import judge

    try:
        config = build_config(args)
        probes = selected_probes(config)
    except ConfigError as exc:
        print(f"startd-health: error: {exc}", file=sys.stderr)
        return EXIT_UNKNOWN
    report = run_probes(probes, probe_settings(config, probes), config["DEADLINE"],
                        state=StateDir(config["STATE_DIR"]), force=args.force, condor=config.condor)
    verdict, now = judge(report.results), time.time()
    shown = report.results + on_demand_results(config)  # shown, not judged
    if args.json:
        _emit(as_json(shown, verdict, now))
    else:
        colour = sys.stdout.isatty() and not os.environ.get("NO_COLOR") and os.environ.get("TERM") != "dumb"
        _emit(table(shown, verdict, now, colour))
    if report.state_error:
        log.warning("%s", report.state_error)
    return exit_status(report.results)


def cmd_hook(args: argparse.Namespace) -> int:
    from startd_health.monitor.hook import main_prepare_job
    signal.signal(signal.SIGTERM, _on_sigterm)
    return main_prepare_job(build_config(args))


def cmd_pool_exporter(args: argparse.Namespace) -> int:
    from startd_health.monitor.pool_exporter import run as run_pool_exporter
    if not args.debug:  # a daemon says when it starts and stops
        logging.getLogger().setLevel(logging.INFO)
    return run_pool_exporter(build_config(args))


def cmd_benchmark(args: argparse.Namespace) -> int:
    """The HTCondor BENCHMARKS job: run the on-demand probes, keep their
    results in the state directory, print their attributes (never the
    verdict) ending with a '-' line."""
    from startd_health.monitor.cron import render_probes
    from startd_health.core.runner import OVERRUN_GRACE_SECONDS, run_probes
    from startd_health.core.state import StateDir

    signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        config = build_config(args)
    except ConfigError as exc:
        log.error("%s", exc)
        _emit("-\n")
        return EXIT_CONFIG
    probes = [cls() for cls in _probe_classes().values() if not cls.periodic]
    settings = probe_settings(config, probes)
    deadline = max((s["timeout"] for s in settings.values()), default=0.0) + OVERRUN_GRACE_SECONDS + 1
    report = run_probes(probes, settings, deadline, state=StateDir(config["STATE_DIR"]), force=args.force,
                        condor=config.condor)
    _emit(render_probes(report.results, time.time()))
    return EXIT_STATE if report.state_error else EXIT_OK


def cmd_inside_script(args: argparse.Namespace) -> int:
    from startd_health.probes import _inside as inside
    from startd_health.probes import cvmfs

    config = build_config(args)
    repos = config["CVMFS_REPOSITORIES"]
    sections = [cvmfs.inside_script(config["CVMFS_ROOT"], repos)] if repos else []
    _emit(inside.standalone(config["CONTAINER_BINDS"], sections))
    return EXIT_OK


def cmd_config(args: argparse.Namespace) -> int:
    config = build_config(args)
    where = ("found" + (f" (CONDOR_CONFIG={os.environ['CONDOR_CONFIG']})" if os.environ.get("CONDOR_CONFIG") else "")
             + f", read through {config.condor.via}"
             if config.condor.available else "not used: built-in defaults and _CONDOR_ environment only")
    lines = [f"# HTCondor configuration: {where}"] + describe(config, all_knobs())
    _emit("".join(line + "\n" for line in lines))
    return EXIT_OK


def cmd_probes(args: argparse.Namespace) -> int:
    classes = _probe_classes()
    width = max(len(n) for n in classes)
    _emit("".join(f"{n:<{width}}  {'on ' if c.enabled_by_default else 'off'}  {c.description}\n"
                  for n, c in classes.items()))
    return EXIT_OK


def _emit(text: str) -> None:
    sys.stdout.write(text)
    sys.stdout.flush()


# ---------------------------------------------------------------- parsing

DESCRIPTION = "Health and benchmark probes for an HTCondor execute node."
EPILOG = """commands:
  cron      run the probes and print ClassAd attributes for STARTD_CRON (ends with a '-' line)
  check     run the probes and print a table for a person (exit 0 healthy, 1 degraded, 2 failed)
  benchmark run the benchmarks now (the HTCondor BENCHMARKS job) and print their ClassAd lines
  exporter  serve Prometheus metrics; probes run on their own schedules
  pool-exporter  serve the pool's health as Prometheus metrics, from the HTCondor collector
  hook      HTCondor job hook: `hook prepare-job` checks the job's image before it starts
  inside-script  print the inside-the-image checks as a sh script for a job's PreCmd
  config    print the effective configuration and where each value came from
  probes    list the available probes

Every option --NAME has the HTCondor configuration variable STARTD_HEALTH_NAME
(e.g. --container-images is STARTD_HEALTH_CONTAINER_IMAGES); an option given
here wins over the configuration. The startd runs `startd-health-cron`, which
is `startd-health cron` that prints a complete (unhealthy) ad even when its
own arguments are wrong."""


def make_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("-d", "--debug", action="store_true", help="log debugging messages to stderr")
    common.add_argument("--no-condor-config", action="store_true",
                        help="ignore HTCondor's configuration (use defaults and options only)")
    knob_options = argparse.ArgumentParser(add_help=False)
    group = knob_options.add_argument_group("configuration (each overrides STARTD_HEALTH_<NAME>)")
    for knob in all_knobs():
        group.add_argument(knob.flag, dest=knob.dest, metavar=knob.metavar, help=knob.help)

    parser = argparse.ArgumentParser(prog="startd-health", description=DESCRIPTION, epilog=EPILOG,
                                     formatter_class=argparse.RawDescriptionHelpFormatter, parents=[common])
    parser.add_argument("-V", "--version", action="version", version=f"startd-health {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    cron = sub.add_parser("cron", parents=[common, knob_options], help="print ClassAd lines for STARTD_CRON",
                          description="Run the probes (re-using recent results) and print the node's health "
                                      "as ClassAd attributes for the condor_startd, ending with a '-' line.")
    cron.add_argument("--force", action="store_true", help="run every probe now, even if a recent result exists")
    cron.set_defaults(func=cmd_cron)
    check = sub.add_parser("check", parents=[common, knob_options], help="print the node's health for a person",
                           description="Run the probes (re-using recent results) and print a table: status, "
                                       "age and reason of every probe, and the node's verdict. Exit status: 0 "
                                       "healthy, 1 degraded, 2 failed, 3 configuration error.")
    check.add_argument("--force", action="store_true", help="run every probe now, even if a recent result exists")
    check.add_argument("--json", action="store_true", help="print JSON instead of a table (for scripts)")
    check.set_defaults(func=cmd_check)
    bench = sub.add_parser("benchmark", parents=[common, knob_options], help="run the benchmarks (BENCHMARKS job)",
                           description="Run the on-demand benchmarks (unless a result younger than their _PERIOD "
                                       "exists), keep the result in the state directory, where every cron run "
                                       "re-publishes it with its age, and print its ClassAd attributes for the "
                                       "startd's BENCHMARKS_JOBLIST, ending with a '-' line. Never prints the "
                                       "node's verdict.")
    bench.add_argument("--force", action="store_true", help="run now, even if a recent result exists")
    bench.set_defaults(func=cmd_benchmark)
    exporter = sub.add_parser("exporter", parents=[common, knob_options], help="serve Prometheus metrics",
                              description="Serve the node's probe results as Prometheus metrics on "
                                          "STARTD_HEALTH_EXPORTER_LISTEN; each probe runs on its own schedule "
                                          "(its _PERIOD), never on the scrape path. Stops cleanly on SIGTERM.")
    exporter.set_defaults(func=cmd_exporter)
    pool = sub.add_parser("pool-exporter", parents=[common, knob_options], help="serve the pool's health metrics",
                          description="Query the HTCondor collector(s) every STARTD_HEALTH_POOL_INTERVAL for the "
                                      "StartdHealth* attributes of all slots and serve pool-wide Prometheus "
                                      "metrics on STARTD_HEALTH_POOL_LISTEN. Stops cleanly on SIGTERM.")
    pool.set_defaults(func=cmd_pool_exporter)
    hook = sub.add_parser("hook", parents=[common, knob_options], help="HTCondor job hook (prepare-job)",
                          description="Run as <KEYWORD>_HOOK_PREPARE_JOB: check that the job's container image "
                                      "launches (re-using the last periodic result when fresh); exit 0 lets "
                                      "the job start, 1 holds it with the reason, HookStatusCode 300 requeues it.")
    hook.add_argument("hook_type", choices=["prepare-job"], help="which hook")
    hook.set_defaults(func=cmd_hook)
    inside = sub.add_parser("inside-script", parents=[common, knob_options],
                            help="print the checks as a sh script a job can run (e.g. as its PreCmd)",
                            description="Print a POSIX sh script with the checks the container probe runs inside "
                                        "images (writable /tmp and home, STARTD_HEALTH_CONTAINER_BINDS, the CVMFS "
                                        "repositories): it exits 1 with one line per failure on stderr. Needs "
                                        "nothing but sh and ls inside the image.")
    inside.set_defaults(func=cmd_inside_script)
    config = sub.add_parser("config", parents=[common, knob_options], help="print the effective configuration",
                            description="Print every STARTD_HEALTH_ knob with its effective value and source.")
    config.set_defaults(func=cmd_config)
    probes = sub.add_parser("probes", parents=[common], help="list the available probes")
    probes.set_defaults(func=cmd_probes)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = make_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(stream=sys.stderr, level=logging.DEBUG if args.debug else logging.WARNING,
                        format="startd-health: %(levelname)s: %(message)s")
    if not getattr(args, "func", None):
        parser.print_usage(sys.stderr)
        print("startd-health: error: a command is required (cron, config, probes)", file=sys.stderr)
        return EXIT_CONFIG
    try:
        return args.func(args)
    except ConfigError as exc:
        print(f"startd-health: error: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    except BrokenPipeError:
        return EXIT_OK


def cron_main() -> None:
    """Entry point for STARTD_CRON_<JOB>_EXECUTABLE: `startd-health cron` that
    prints a complete ad even when its arguments are wrong.

    (Measured on 23.9 and 25.14: the startd passes only the configured ARGS.)
    """
    argv = sys.argv[1:]
    code = EXIT_INTERNAL
    try:
        code = main(["cron", *argv])
    except SystemExit as exc:  # argparse: usage error
        code = exc.code if isinstance(exc.code, int) else EXIT_CONFIG
        if code != EXIT_OK:
            from startd_health.monitor.cron import render_failure
            _emit(render_failure("startd-health-cron: bad arguments (see StartLog)", time.time()))
    except Exception as exc:  # never leave the startd without a complete ad
        logging.getLogger("startd-health").exception("internal error")
        from startd_health.monitor.cron import render_failure
        _emit(render_failure(f"internal error: {type(exc).__name__}: {exc}", time.time()))
    # Abandoned probe threads or children must not keep us alive.
    sys.stdout.flush()
    os._exit(code)


def run() -> None:
    """Entry point for `startd-health`."""
    try:
        code = main()
    except Exception as exc:
        logging.getLogger("startd-health").exception("internal error")
        print(f"startd-health: internal error: {type(exc).__name__}: {exc}", file=sys.stderr)
        code = EXIT_INTERNAL
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
