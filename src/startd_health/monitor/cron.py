"""STARTD_CRON renderer: probe results -> ClassAd lines for the condor_startd.

Protocol facts this module is shaped by (see README, "How the cron output is
read"): one `Name = expression` per line, every line newline-terminated, the
ad closed by a `-` line; a malformed line is dropped by the startd with the
rest still merged; only ~9 KiB of output is read at exit. Hence: every value
is rendered by the real ClassAd library's quoting, every string from outside
is cleaned of control characters and bounded in length, and the whole output
is kept well under the limit.
"""

from __future__ import annotations

import math
import re
from typing import Any, Iterable, List, Sequence

from startd_health import __version__
from startd_health.core.model import Fact, Measurement, ProbeResult, RunReport
from startd_health.core.verdict import Verdict

ATTR_PREFIX = "StartdHealth"
MAX_STRING_CHARS = 300     # one reason in condor_status stays readable
MAX_LIST_ITEMS = 32
MAX_OUTPUT_BYTES = 8 * 1024  # the startd reads ~9 KiB of pending output at exit

_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]+")
_NOT_NAME = re.compile(r"[^A-Za-z0-9_]+")


def clean_text(text: Any, limit: int = MAX_STRING_CHARS) -> str:
    """Text from the outside world, made safe to show on one line.

    Non-UTF-8 bytes and lone surrogates become backslash escapes; control
    characters (newlines included) become single spaces; the result is
    bounded. Quoting (not this) is what prevents injection; this keeps the
    value readable and the line short.
    """
    if isinstance(text, bytes):
        text = text.decode("utf-8", errors="backslashreplace")
    text = str(text).encode("utf-8", errors="backslashreplace").decode("utf-8")
    text = _CONTROL.sub(" ", text).strip()
    if len(text) > limit:
        text = text[: limit - 3].rstrip() + "..."
    return text


def _quote(text: str) -> str:
    text = clean_text(text)
    try:
        import classad2  # lazy: only the renderer needs the ClassAd library
    except ImportError:
        # Without the bindings the output must still be valid: after
        # clean_text only backslash and double quote need escaping.
        return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return classad2.quote(text)


def render_value(value: Fact) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return repr(round(value, 6)) if math.isfinite(value) else "undefined"
    if isinstance(value, tuple):
        items = list(value[:MAX_LIST_ITEMS])
        return "{ " + ", ".join(_quote(str(v)) for v in items) + " }" if items else "{ }"
    return _quote(str(value))


def camel(name: str) -> str:
    """'images_ok' -> 'ImagesOk'; anything not [A-Za-z0-9_] is dropped."""
    return "".join(part[:1].upper() + part[1:] for part in re.split(r"[^A-Za-z0-9]+", name) if part)


def label_suffix(value: str) -> str:
    """A label value as an attribute-name suffix: 'el9:latest' -> 'el9_latest'."""
    return _NOT_NAME.sub("_", value).strip("_") or "_"


def attribute(*parts: str) -> str:
    return ATTR_PREFIX + "".join(camel(p) for p in parts)


def probe_lines(result: ProbeResult, now: float, facts: bool = True, measurements: bool = True) -> List[str]:
    lines = [
        f"{attribute(result.probe, 'ok')} = {render_value(result.status.usable)}",
        f"{attribute(result.probe, 'status')} = {render_value(result.status.value)}",
        f"{attribute(result.probe, 'reason')} = {render_value(result.reason)}",
        f"{attribute(result.probe, 'age')} = {int(result.age(now))}",
    ]
    for name, value in sorted(result.facts.items()) if facts else ():
        lines.append(f"{attribute(result.probe, name)} = {render_value(value)}")
    for m in result.measurements if measurements else ():
        name = attribute(result.probe, m.name, m.unit)
        if m.labels:
            name += "_" + "_".join(label_suffix(v) for _, v in m.labels)
        lines.append(f"{name} = {render_value(_number(m))}")
    return lines


def _number(m: Measurement) -> Fact:
    """Counts and revisions (no unit) as integers, as HTCondor and OSPool publish them."""
    value = float(m.value)
    return int(value) if m.unit in ("", "timestamp_seconds") and value.is_integer() else value


# OSPool pilot names for CVMFS (osg-flock advertise-base), so that existing job
# requirements such as HAS_CVMFS_oasis_opensciencegrid_org keep matching.
_OSPOOL_CVMFS = {"revision": "REVISION", "nioerr": "NIOERR", "last_ioerr": "LAST_IOERR"}


def ospool_lines(results: Sequence[ProbeResult]) -> List[str]:
    lines: List[str] = []
    for r in results:
        if r.probe != "cvmfs":
            continue
        usable = set(r.facts.get("repos_ok", ()))
        repos = sorted(usable | set(r.facts.get("repos_failed", ())) | set(r.facts.get("repos_quarantined", ())))
        for repo in repos:
            lines.append(f"HAS_CVMFS_{label_suffix(repo)} = {render_value(repo in usable)}")
        for m in r.measurements:
            labels = dict(m.labels)
            if m.name in _OSPOOL_CVMFS and "repo" in labels:
                lines.append(f"CVMFS_{label_suffix(labels['repo'])}_{_OSPOOL_CVMFS[m.name]} = "
                             f"{render_value(_number(m))}")
    return lines


# Well-known attribute names under which tools outside startd-health read some
# measurements, published next to ours: (probe, measurement, labels) -> name.
ALIASES = {
    # CMS (and DIRAC-style tooling) read the node's DB12 score per core as
    # DIRACBenchmark: the mean over one copy per core, run together.
    ("benchmarks", "db12", (("mode", "wholenode"),)): "DIRACBenchmark",
}


def alias_lines(results: Iterable[ProbeResult]) -> List[str]:
    return [f"{ALIASES[(r.probe, m.name, m.labels)]} = {render_value(float(m.value))}"
            for r in results for m in r.measurements
            if (r.probe, m.name, m.labels) in ALIASES and math.isfinite(m.value)]


def render_probes(results: Iterable[ProbeResult], now: float) -> str:
    """What an on-demand job (`startd-health benchmark`) prints: its probes'
    attributes and aliases, then the `-` line. Never the verdict (the
    periodic job owns StartdHealthOk and StartdHealthTimestamp) and no Age:
    the startd keeps each job's last output, so an age printed here would
    stay frozen, while every cron run re-publishes the current one."""
    results = list(results)
    lines = [line for r in results for line in probe_lines(r, now)
             if not line.startswith(attribute(r.probe, "age") + " ")]
    return "".join(line + "\n" for line in lines + alias_lines(results)) + "-\n"


def render(report: RunReport, verdict: Verdict, now: float, ospool: bool = True) -> str:
    """The complete cron output: attribute lines, then the closing `-` line.

    ospool: also publish the OSPool pilot's CVMFS attribute names.
    """
    lines = [
        f"{ATTR_PREFIX}Ok = {render_value(verdict.ok)}",
        f"{ATTR_PREFIX}FailedProbes = {render_value(verdict.failed)}",
        f"{ATTR_PREFIX}DegradedProbes = {render_value(verdict.degraded)}",
        f"{ATTR_PREFIX}Reason = {render_value(verdict.reason)}",
        f"{ATTR_PREFIX}Version = {render_value(__version__)}",
        f"{ATTR_PREFIX}RunDuration = {render_value(round(report.duration_seconds, 3))}",
        f"{ATTR_PREFIX}Timestamp = {int(now)}",
    ]
    if report.state_error:
        lines.append(f"{ATTR_PREFIX}StateError = {render_value(report.state_error)}")
    if report.overlapped:
        lines.append(f"{ATTR_PREFIX}Overlapped = true")
    lines.extend(alias_lines(report.results))  # names other tools read: before anything that may be cut
    if ospool:
        lines.extend(ospool_lines(report.results))  # what jobs match on: before anything that may be cut
    budget = MAX_OUTPUT_BYTES - sum(len(line) + 1 for line in lines) - 2
    for result in report.results:
        # Keep the verdict intact rather than overflow the startd's buffer:
        # drop measurements first, then facts, then the probe's block.
        for facts, measurements in ((True, True), (True, False), (False, False)):
            block = probe_lines(result, now, facts, measurements)
            size = sum(len(line) + 1 for line in block)
            if size <= budget:
                lines.extend(block)
                budget -= size
                break
    return "".join(line + "\n" for line in lines) + "-\n"


def render_failure(reason: str, now: float) -> str:
    """The ad printed when the tool itself cannot run: never healthy, never empty."""
    lines = [
        f"{ATTR_PREFIX}Ok = false",
        f"{ATTR_PREFIX}FailedProbes = {{ }}",
        f"{ATTR_PREFIX}Reason = {render_value(reason)}",
        f"{ATTR_PREFIX}Version = {render_value(__version__)}",
        f"{ATTR_PREFIX}Timestamp = {int(now)}",
    ]
    return "".join(line + "\n" for line in lines) + "-\n"
