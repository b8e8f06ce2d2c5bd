"""Site checks: the commands a site already has (Nagios/Icinga plugins, LBNL
NHC-style scripts, node-problem-detector custom plugins), each a probe of its
own, under the same budget, abandonment and verdict as the built-in probes.

Configuration (HTCondor style, like STARTD_CRON_JOBLIST):

    STARTD_HEALTH_SITE_CHECKS = disk, load
    STARTD_HEALTH_SITE_CHECK_DISK = /usr/lib/nagios/plugins/check_disk -w 10% -c 5% -p /
    STARTD_HEALTH_SITE_CHECK_DISK_PERIOD = 600        # optional, as every probe's
    STARTD_HEALTH_SITE_CHECK_DISK_TIMEOUT = 20        # optional
    STARTD_HEALTH_SITE_CHECK_DISK_ARGS = -e           # optional, appended
    STARTD_HEALTH_SITE_CHECK_DISK_PROTOCOL = nagios   # or npd
    STARTD_HEALTH_SITE_CHECKS_DIR = /etc/startd-health/checks.d   # every executable in it, too

A check named `disk` is the probe `site_disk`, published as
StartdHealthSiteDisk*. Its command line is split as HTCondor splits a
STARTD_CRON job's ARGS: white space separates words, single quotes group
them ('' is a quote inside), nothing is expanded and no shell runs it.

What the exit status and output mean is system/plugin_protocol.py (pure).
Here: the dynamic probe classes, and the run: a child we can abandon (a
check stuck in uninterruptible sleep on a dead mount is left behind,
remembered in the probe's scratch directory with system/stuck.py, and not
started again while it lives, as the cvmfs probe does for a hung repository).
"""

from __future__ import annotations

import os
import re
import time
from typing import Any, Callable, Dict, List, Optional, Tuple, Type

from startd_health.core.config import ConfigError, Knob, parse_absolute_path, parse_list
from startd_health.core.model import Measurement, Probe, ProbeContext, ProbeResult, Status

PROBE_PREFIX = "site_"
KNOB_PREFIX = "SITE_CHECK_"
FAMILY = "site_check"          # the metric family every site check's measurements share
HUNG = "hung"                  # the stuck.py record of a check left in uninterruptible sleep
DEFAULT_PERIOD = 300.0
DEFAULT_TIMEOUT = 30.0         # NHC's default watchdog; Nagios gives a service check 60 s
_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_]*$")
MAX_NAME_CHARS = 40


# ---------------------------------------------------------------- knob values

def split_args(text: str) -> Tuple[str, ...]:
    """A command line split as HTCondor splits ARGS (its "new" syntax, without
    the surrounding double quotes): white space separates words; single
    quotes group them, '' inside is one quote; double quotes, backslashes and
    $ are ordinary characters."""
    words: List[str] = []
    current: List[str] = []
    started = quoted = False
    i = 0
    while i < len(text):
        char = text[i]
        if quoted:
            if char == "'":
                if text[i + 1:i + 2] == "'":
                    current.append("'")
                    i += 1
                else:
                    quoted = False
            else:
                current.append(char)
        elif char == "'":
            quoted = started = True
        elif char.isspace():
            if started:
                words.append("".join(current))
            current, started = [], False
        else:
            current.append(char)
            started = True
        i += 1
    if quoted:
        raise ValueError("unbalanced single quote (write '' for a quote inside quotes)")
    if started:
        words.append("".join(current))
    return tuple(words)


def format_args(words: Tuple[str, ...]) -> str:
    return " ".join(w if w and not re.search(r"[\s']", w) else "'" + w.replace("'", "''") + "'" for w in words)


def parse_command(text: str) -> Tuple[str, ...]:
    return split_args(text)


def parse_protocol(text: str) -> str:
    from startd_health.system.plugin_protocol import PROTOCOLS
    value = text.strip().lower()
    if value not in PROTOCOLS:
        raise ValueError(f"expected one of {', '.join(PROTOCOLS)}")
    return value


def parse_names(text: str) -> Tuple[str, ...]:
    names: List[str] = []
    for name in parse_list(text):
        if not _NAME.match(name) or len(name) > MAX_NAME_CHARS:
            raise ValueError(f"{name!r} is not a check name (a letter, then letters, digits or _; "
                             f"at most {MAX_NAME_CHARS} characters)")
        if name.lower() not in (n.lower() for n in names):
            names.append(name)
    return tuple(names)


# The knobs that say which checks exist: read before any other knob (the
# others' names depend on them), so they belong to no probe.
DYNAMIC_KNOBS = (
    Knob("SITE_CHECKS", parse_names, (), "site checks to run, HTCondor-style list like `STARTD_CRON_JOBLIST`; "
         "check NAME runs `STARTD_HEALTH_SITE_CHECK_<NAME>` (with optional `_ARGS`, `_PERIOD`, `_TIMEOUT`, "
         "`_PROTOCOL` = nagios or npd) and is the probe `site_<name>`", "LIST",
         default_text="none (no site checks)"),
    Knob("SITE_CHECKS_DIR", parse_absolute_path, "", "every executable file in this (local) directory is a site check "
         "too, named after the file without its extension (`check_nfs.sh` -> `site_check_nfs`)", "DIR",
         default_text="none"),
)

# Left behind by package managers and editors: never a check.
_IGNORED = re.compile(r"(^\.|~$|\.(rpmsave|rpmnew|rpmorig|dpkg-[a-z]+|disabled|bak|swp)$)")


def dir_checks(directory: str) -> Dict[str, str]:
    """NAME (upper case) -> path for every executable regular file in directory."""
    try:
        entries = sorted(os.listdir(directory))
    except OSError as exc:
        raise ConfigError(f"STARTD_HEALTH_SITE_CHECKS_DIR = {directory}: cannot be read: "
                          f"{exc.strerror or exc}") from None
    found: Dict[str, str] = {}
    for entry in entries:
        path = os.path.join(directory, entry)
        if _IGNORED.search(entry) or not os.path.isfile(path) or not os.access(path, os.X_OK):
            continue
        name = re.sub(r"[^A-Za-z0-9_]+", "_", entry.split(".")[0]).strip("_")
        if not name or not name[0].isalpha():
            name = "x" + name
        name = name[:MAX_NAME_CHARS].upper()
        if name in found:
            raise ConfigError(f"STARTD_HEALTH_SITE_CHECKS_DIR = {directory}: {os.path.basename(found[name])} and "
                              f"{entry} would both be the check {name.lower()}: rename one")
        found[name] = path
    return found


# ---------------------------------------------------------------- the probes

Lookup = Callable[[str], Optional[Tuple[str, str]]]


def dynamic_probes(lookup: Lookup) -> Dict[str, Type[Probe]]:
    """The configured checks as probe classes. lookup(NAME) -> (raw value,
    where it came from) or None: the knob as flags, environment and
    HTCondor's configuration set it (core.config's order). Raises
    ConfigError for a bad list, directory or a listed check without a command."""
    names = _value(lookup, DYNAMIC_KNOBS[0])
    directory = _value(lookup, DYNAMIC_KNOBS[1])
    from_dir = dir_checks(directory) if directory else {}
    checks: Dict[str, Optional[str]] = {name.upper(): None for name in names}
    for name, path in from_dir.items():
        checks.setdefault(name, path)
    classes: Dict[str, Type[Probe]] = {}
    for upper, path in checks.items():
        knob = KNOB_PREFIX + upper
        found = lookup(knob)
        if path is None and (found is None or not found[0].strip()):
            raise ConfigError(f"STARTD_HEALTH_SITE_CHECKS names {upper.lower()}, but STARTD_HEALTH_{knob} "
                              f"(its command line) is not set: set it, or remove {upper.lower()} from the list")
        cls = make_probe(upper, path or (found[0] if found else ""), from_dir=path is not None)
        classes[cls.name] = cls
    return classes


def _value(lookup: Lookup, knob: Knob) -> Any:
    found = lookup(knob.name)
    if found is None or not found[0].strip():
        return knob.default
    raw, source = found
    try:
        return knob.parse(raw)
    except ValueError as exc:
        raise ConfigError(f"{knob.param_name} = {raw!r} ({source}): {exc}") from None


def make_probe(upper: str, default_command: str, from_dir: bool = False) -> Type[Probe]:
    """The probe class of check `upper` (its knobs: SITE_CHECK_<UPPER>[_ARGS|_PROTOCOL], and
    _PERIOD/_TIMEOUT from cli/knobs.probe_knobs through knob_prefix)."""
    prefix = KNOB_PREFIX + upper
    # A file of the checks directory is its default command (a path, never
    # split); a listed check has none: dynamic_probes insists on the knob.
    default = (default_command,) if from_dir else ()
    knobs = (
        Knob(prefix, parse_command, default, f"command line of the site check {upper.lower()}, split as "
             "HTCondor splits ARGS", "COMMAND", format_args, default_text=f"`{default_command}` (in the "
             "checks directory)" if from_dir else ""),
        Knob(prefix + "_ARGS", parse_command, (), f"more arguments for the site check {upper.lower()}", "ARGS",
             format_args),
        Knob(prefix + "_PROTOCOL", parse_protocol, "nagios", f"what the exit status of the site check "
             f"{upper.lower()} means: nagios (0 ok, 1 warning, 2 critical, 3 unknown) or npd "
             "(node-problem-detector: 0 ok, 1 problem, 2 unknown)", "PROTOCOL"),
    )
    return type(f"SiteCheck_{upper}", (SiteCheckProbe,), {
        "name": PROBE_PREFIX + upper.lower(),
        "description": f"site check {upper.lower()}: {default_command or 'STARTD_HEALTH_' + prefix}",
        "knob_prefix": prefix,
        "knobs": knobs,
        "__module__": __name__,
    })


class SiteCheckProbe(Probe):
    """The base of every site check's class (make_probe); never a probe itself (no name)."""

    description = "a site check"
    default_period = DEFAULT_PERIOD
    default_timeout = DEFAULT_TIMEOUT
    dynamic = True

    def run(self, ctx: ProbeContext) -> ProbeResult:
        from startd_health.system import stuck
        command = tuple(ctx.settings[self.knob_prefix.lower()]) + tuple(ctx.settings["args"])
        scratch = ctx.scratch_dir()
        held = stuck.still_stuck(scratch, HUNG)
        if held is not None:
            return ProbeResult(self.name, Status.FAILED, f"still hung since {stuck.iso(held.since)} "
                               f"({held.describe()} stuck in it; not started again)")
        started = time.time()
        result = run_check(ctx, command)
        if result.left_behind:
            stuck.remember(scratch, HUNG, result.left_behind, started)
        return judge(self.name, ctx.settings["protocol"], result)


def run_check(ctx: ProbeContext, command: Tuple[str, ...]) -> Any:
    from startd_health.system.procs import command_budget
    # C locale: perfdata and messages with "." decimals, whatever the node's locale.
    env = dict(os.environ, LC_ALL="C")
    # cwd "/": the check must not pin, or stumble on, the directory we were started in.
    return ctx.run(command, timeout=command_budget(ctx.remaining()), env=env, cwd="/")


def measurements(perfdata: Any, returncode: Optional[int]) -> Tuple[Measurement, ...]:
    found = [Measurement("exit_code", float(returncode), "", family=FAMILY)] if returncode is not None else []
    seen = set()
    for p in perfdata:
        if p.label in seen:   # a label twice: the first wins (one series per label)
            continue
        seen.add(p.label)
        found.append(Measurement("perfdata", p.value, p.unit, {"label": p.label}, family=FAMILY))
    return tuple(found)


def judge(probe: str, protocol: str, result: Any) -> ProbeResult:
    """A finished run of the check (procs.CommandResult) -> the probe's result."""
    from startd_health.system import plugin_protocol
    name = os.path.basename(result.argv[0]) if result.argv else "check"
    if result.error:
        why = result.error if result.timed_out else f"{name}: cannot run: {result.error}"
        return ProbeResult(probe, Status.FAILED, why)
    if result.timed_out:
        left = (f"; {len(result.left_behind)} process(es) unkillable, left behind (pid "
                f"{', '.join(map(str, result.left_behind))})" if result.left_behind else "")
        return ProbeResult(probe, Status.FAILED, f"{name} timed out after {result.duration_seconds:.1f}s "
                           f"(abandoned){left}")
    if result.returncode < 0:
        return ProbeResult(probe, Status.FAILED, f"{name} killed by signal {-result.returncode}")
    verdict = plugin_protocol.judge(protocol, result.returncode, result.stdout, result.stderr)
    facts = {"state": verdict.state}
    return ProbeResult(probe, Status(verdict.status), verdict.reason, facts,
                       measurements(verdict.perfdata, result.returncode))
