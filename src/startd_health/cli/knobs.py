"""Every knob, in groups: the tool's own (the run, cron output, exporter,
hook), the pool exporter's (monitor/pool_knobs.py) and each probe's (its
_PERIOD and _TIMEOUT, then the Knobs its class declares).

A command names the groups (or single knobs) it reads in the command table
(cli/commands.py) and gets exactly those: its options, its --help sections,
its Config. So a knob of a command that is not running is never even parsed.
"""

from __future__ import annotations

import os
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple

from startd_health.core.config import (CondorParams, Knob, parse_bool, parse_list, parse_positive_seconds,
                                       parse_string)

MIN_DEADLINE = 5.0


def _parse_listen(text: str) -> Any:
    from startd_health.monitor.exporter_listen import parse_listen
    return parse_listen(text)


def _format_listen(value: Any) -> str:
    from startd_health.monitor.exporter_listen import format_listen
    return format_listen(value)


def _parse_dir(text: str) -> str:
    return os.path.abspath(text.strip()) if text.strip() else ""


def _default_state_dir(condor: CondorParams) -> Optional[Tuple[str, str]]:
    spool = condor.get("SPOOL")
    if spool and os.path.isabs(spool):
        return os.path.join(spool, "startd_health"), "default (HTCondor $(SPOOL)/startd_health)"
    base = os.environ.get("XDG_STATE_HOME") or os.path.join(os.path.expanduser("~"), ".local", "state")
    return os.path.join(base, "startd-health"), "default ($XDG_STATE_HOME/startd-health)"


def _default_probes(condor: CondorParams) -> Tuple[Tuple[str, ...], str]:
    from startd_health.probes import all_probes
    return tuple(n for n, c in all_probes().items() if c.enabled_by_default), "default (probes enabled by default)"


GENERAL = (
    Knob("PROBES", parse_list, None, "probes to run", "LIST", default_text="every probe enabled by default",
         derive=_default_probes),
    Knob("DEADLINE", parse_positive_seconds, 150.0, "the whole run ends within this many seconds; keep it "
         "below the cron period", "SECONDS"),
    Knob("STATE_DIR", _parse_dir, None, "directory for the last results and the probe locks", "DIR",
         default_text="`$(SPOOL)/startd_health`, standalone `$XDG_STATE_HOME/startd-health`",
         derive=_default_state_dir),
)
CRON_OUTPUT = (
    Knob("TEXTFILE_DIR", _parse_dir, "", "each cron run also writes `DIR/startd_health.prom` for "
         "node_exporter's textfile collector (atomic, mode 0644, no timestamps)", "DIR",
         default_text="empty (off)", needs="prometheus_client"),
    Knob("OSPOOL_ATTRIBUTES", parse_bool, True, "also publish the OSPool pilot's CVMFS attribute names "
         "(`HAS_CVMFS_<repo>`, `CVMFS_<repo>_REVISION`, `_NIOERR`, `_LAST_IOERR`) so existing job requirements "
         "keep matching", "BOOL"),
)
EXPORTER = (
    Knob("EXPORTER_LISTEN", _parse_listen, ("127.0.0.1", 9761), "where `startd-health exporter` listens "
         "(`[::1]:9761`, `:9761` for all interfaces)", "ADDR:PORT", _format_listen),
    Knob("EXPORTER_TLS_CERT", parse_string, "", "TLS certificate file for the exporter and the pool exporter "
         "(with `..._TLS_KEY`)", "FILE", default_text="none (plain HTTP)"),
    Knob("EXPORTER_TLS_KEY", parse_string, "", "TLS private key file for the exporter and the pool exporter",
         "FILE"),
)
HOOK = (
    Knob("HOOK_TIMEOUT", parse_positive_seconds, 20.0, "the pre-job hook decides within this many seconds "
         "(HTCondor gives PREPARE_JOB hooks no timeout)", "SECONDS"),
)

DAEMON = (
    Knob("HEARTBEAT", parse_positive_seconds, 60.0, "`startd-health daemon` prints its whole ad at least this "
         "often, also when nothing changed, so that `StartdHealthTimestamp` stays fresh (54-startd-health-"
         "daemon.conf's `STARTD_HEALTH_MAX_AGE` counts on it)", "SECONDS"),
    Knob("TRIGGERS", parse_bool, True, "the daemon re-runs a probe at once on an event that shows a change "
         "it depends on: a configured image or the runtime replaced or removed, a CVMFS mount gone or back, "
         "EXECUTE read-only", "BOOL"),
    Knob("WATCH_INTERVAL", parse_positive_seconds, 1.0, "how often the daemon `stat()`s the files those events "
         "concern (images, the runtime, EXECUTE); a mount or unmount wakes it at once", "SECONDS"),
    Knob("RECHECK_INTERVAL", parse_positive_seconds, 10.0, "a probe re-runs on request (`recheck.sock`: "
         "`check --now`, the pre-job hook) at most once per this many seconds; a later request waits for it",
         "SECONDS"),
)


CORE_GROUPS = (("general", "general", GENERAL), ("cron", "cron output", CRON_OUTPUT),
               ("exporter", "exporter", EXPORTER), ("hook", "pre-job hook", HOOK), ("daemon", "daemon", DAEMON))


def probe_knobs(name: str, cls: Any) -> Tuple[Knob, ...]:
    """A probe's knobs: _PERIOD and _TIMEOUT for every probe, then its own."""
    upper = name.upper()
    again = ("`startd-health benchmark` re-uses a younger result unless --force" if not cls.periodic
             else "else its last result is re-published with its age")
    return (
        Knob(f"{upper}_PERIOD", parse_positive_seconds, cls.default_period,
             f"re-run the {name} probe when its last result is older than this ({again})", "SECONDS"),
        Knob(f"{upper}_TIMEOUT", parse_positive_seconds, cls.default_timeout,
             f"budget for one run of the {name} probe", "SECONDS"),
    ) + tuple(cls.knobs)


def probe_classes() -> Dict[str, Any]:
    from startd_health.probes import all_probes
    return all_probes()


def _pool_knobs() -> Tuple[Knob, ...]:
    # Imported only by the commands that read them (pool-exporter, config):
    # the periodic cron run never parses a pool knob.
    from startd_health.monitor.pool_knobs import POOL_KNOBS
    return POOL_KNOBS


class Group:
    """A --help section / README table: a title and its knobs."""

    def __init__(self, key: str, title: str, knobs: Sequence[Knob]) -> None:
        self.key, self.title, self.knobs = key, title, tuple(knobs)


def _selected(selectors: Iterable[str]) -> Tuple[set, set]:
    """(group keys, knob names) that selectors name. 'periodic probes' and
    'on-demand probes' stand for those probes' groups (with the knobs they
    share from other probes)."""
    keys, names = set(), set()
    for selector in selectors:
        if selector in ("periodic probes", "on-demand probes"):
            periodic = selector == "periodic probes"
            for name, cls in probe_classes().items():
                if cls.periodic == periodic:
                    keys.add(name)
                    names.update(cls.shared_knobs)
        elif selector.isupper():
            names.add(selector)
        else:
            keys.add(selector)
    return keys, names


def knob_groups(selectors: Sequence[str]) -> List[Group]:
    """The groups a command reads, each cut down to the selected knobs; "all" is every knob.

    Only what the selectors can name is loaded: a command without a pool
    knob never imports the pool exporter's declarations."""
    keys, names = _selected(selectors)
    everything = "all" in selectors
    core = [Group(key, title, knobs) for key, title, knobs in CORE_GROUPS]
    if everything or "pool" in keys or any(n.startswith("POOL_") for n in names):
        core.append(Group("pool", "pool exporter", _pool_knobs()))
    groups = core
    if everything or keys - {g.key for g in core} or names - {k.name for g in core for k in g.knobs}:
        groups = core + [Group(name, f"{name} probe", probe_knobs(name, cls))
                         for name, cls in probe_classes().items()]
    chosen = []
    for group in groups:
        knobs = group.knobs if everything or group.key in keys else [k for k in group.knobs if k.name in names]
        if knobs:
            chosen.append(Group(group.key, group.title, knobs))
    found = {k.name for g in chosen for k in g.knobs}
    missing = [n for n in names if n not in found]
    if missing:  # a typo in the command table, not the user's fault
        raise KeyError(f"no such knob: {', '.join(sorted(missing))}")
    return chosen


def knobs_of(groups: Sequence[Group]) -> List[Knob]:
    return [knob for group in groups for knob in group.knobs]


def all_knobs() -> List[Knob]:
    return knobs_of(knob_groups(["all"]))
