"""STARTD_CRON renderer: probe results -> ClassAd lines for the condor_startd.

Protocol facts this module is shaped by (see README, "How the cron output is
read"): one `Name = expression` per line, every line newline-terminated, the
ad closed by a `-` line; a malformed line is dropped by the startd with the
rest still merged; only ~9 KiB of output is read at exit. Hence: every value
is rendered by the real ClassAd library's quoting, every string from outside
is cleaned of control characters and bounded in length, and the whole output
is kept under the limit by cutting what matters least (see render): never the
verdict, a probe's Ok and Status, or what job recipes match on.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any, Iterable, List, Optional, Sequence

from startd_health import __version__
from startd_health.core.model import KEYED, Fact, Measurement, ProbeResult, RunReport, keyed_items
from startd_health.core.verdict import Verdict

ATTR_PREFIX = "StartdHealth"
MAX_STRING_CHARS = 300     # one reason in condor_status stays readable
MAX_LIST_ITEMS = 32
MAX_OUTPUT_BYTES = 8 * 1024  # the startd reads ~9 KiB of pending output at exit
CUT_MARK = "..."             # the last element of a list that was cut

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


def _quote(text: str, limit: int = MAX_STRING_CHARS) -> str:
    text = clean_text(text, limit)
    try:
        import classad2  # lazy: only the renderer needs the ClassAd library
    except ImportError:
        # Without the bindings the output must still be valid: after
        # clean_text only backslash and double quote need escaping.
        return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return classad2.quote(text)


def render_value(value: Fact, max_items: int = MAX_LIST_ITEMS, max_chars: int = MAX_STRING_CHARS) -> str:
    """A fact as a ClassAd expression. A list longer than max_items keeps its
    first max_items elements and ends with a CUT_MARK element, so that a
    reader sees it was cut (member() tests on real names are unaffected)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return repr(round(value, 6)) if math.isfinite(value) else "undefined"
    if isinstance(value, tuple):
        items = [_quote(str(v), max_chars) for v in value[:max_items]]
        if len(value) > max_items:
            items.append(_quote(CUT_MARK))
        return "{ " + ", ".join(items) + " }" if items else "{ }"
    return _quote(str(value), max_chars)


def camel(name: str) -> str:
    """'images_ok' -> 'ImagesOk'; anything not [A-Za-z0-9_] is dropped."""
    return "".join(part[:1].upper() + part[1:] for part in re.split(r"[^A-Za-z0-9]+", name) if part)


def label_suffix(value: str) -> str:
    """A label value as an attribute-name suffix: 'el9:latest' -> 'el9_latest'."""
    return _NOT_NAME.sub("_", value).strip("_") or "_"


def attribute(*parts: str) -> str:
    return ATTR_PREFIX + "".join(camel(p) for p in parts)


# What a documented job recipe or a tool outside startd-health matches on
# (README: "Requirement levels and job-side recipes", "Benchmarks"): the size
# limit never drops these. Nor the verdict (the START gate reads StartdHealthOk
# and StartdHealthTimestamp), every probe's Ok and Status, the aliases and the
# OSPool HAS_CVMFS_<repo> names.
MATCHED_ON = frozenset({
    "StartdHealthContainerAvailable", "StartdHealthContainerRequirement", "StartdHealthContainerImagesOk",
    "StartdHealthContainerPlatforms",
    "StartdHealthCvmfsReposOk",
    "StartdHealthBenchmarksDb12Score_wholenode", "StartdHealthBenchmarksMatmulFlops_wholenode",
})
TRUNCATED_LINE = f"{ATTR_PREFIX}Truncated = true"

# What an attribute is, for deciding what to cut when the ad is too big.
KEPT, REASON, AGE, FACT, MEASUREMENT = "kept", "reason", "age", "fact", "measurement"


@dataclass(frozen=True)
class _Entry:
    name: str
    value: Fact
    kind: str


@dataclass(frozen=True)
class _Cut:
    """How much of one probe's block is published."""
    list_items: int     # elements kept of a list that is not KEPT
    text_chars: int     # characters kept of a string or list element that is not KEPT
    reason_chars: int   # characters kept of the probe's Reason
    measurements: bool
    facts: bool
    age: bool


# From everything to the core, one step at a time, applied to the biggest
# block first until the ad fits: long lists (image errors) and the reason are
# cut first (a cut list ends with CUT_MARK), then measurements are dropped,
# then the other facts, then the age. KEPT entries are never cut here.
_CUTS = (
    _Cut(MAX_LIST_ITEMS, MAX_STRING_CHARS, MAX_STRING_CHARS, True, True, True),
    _Cut(8, 120, 200, True, True, True),
    _Cut(2, 80, 120, True, True, True),
    _Cut(2, 80, 120, False, True, True),
    _Cut(0, 0, 120, False, False, True),
    _Cut(0, 0, 60, False, False, False),
)


def measurement_attribute(probe: str, m: Measurement) -> str:
    name = attribute(probe, m.name, m.unit)
    if m.labels:
        name += "_" + "_".join(label_suffix(v) for _, v in m.labels)
    return name


def _number(m: Measurement) -> Fact:
    """Counts, counters and revisions as integers, as HTCondor and OSPool publish them."""
    value = float(m.value)
    return int(value) if m.unit in ("", "total", "timestamp_seconds") and value.is_integer() else value


# OSPool pilot names for CVMFS (osg-flock advertise-base), so that existing job
# requirements such as HAS_CVMFS_oasis_opensciencegrid_org keep matching.
_OSPOOL_CVMFS = {"revision": "REVISION", "nioerr": "NIOERR", "last_ioerr": "LAST_IOERR"}


def _ospool_entries(result: ProbeResult) -> List[_Entry]:
    if result.probe != "cvmfs":
        return []
    usable = set(result.facts.get("repos_ok", ()))
    repos = sorted(usable | set(result.facts.get("repos_failed", ())) | set(result.facts.get("repos_quarantined", ())))
    entries = [_Entry(f"HAS_CVMFS_{label_suffix(repo)}", repo in usable, KEPT) for repo in repos]
    for m in result.measurements:
        labels = dict(m.labels)
        if m.name in _OSPOOL_CVMFS and "repo" in labels:
            entries.append(_Entry(f"CVMFS_{label_suffix(labels['repo'])}_{_OSPOOL_CVMFS[m.name]}", _number(m), FACT))
    return entries


# Keyed facts: a list fact (a tuple) named <what>_by_<key> holds `key=value` elements
# and is published as one attribute per key, StartdHealth<Probe><What>_<key>
# (as measurements are: StartdHealthContainerLaunchSeconds_el9). Jobs select
# images through StartdHealthContainerImage_<platform>: never cut.
MATCHED_ON_KEYED = frozenset({"image_by_platform"})


def _keyed_entries(probe: str, name: str, value: Fact) -> List[_Entry]:
    what = name.split(KEYED, 1)[0]
    kind = KEPT if name in MATCHED_ON_KEYED else FACT
    return [_Entry(f"{attribute(probe, what)}_{label_suffix(key)}", text, kind) for key, text in keyed_items(value)]


# GlideinWMS glidein names (singularity_setup.sh), derived from what is healthy
# here: GLIDEIN_REQUIRED_OS lists the platforms, SINGULARITY_IMAGES_DICT maps
# each (and `default`) to its image.
def _glideinwms_entries(result: ProbeResult) -> List[_Entry]:
    if result.probe != "container" or "platforms" not in result.facts:
        return []
    platforms = result.facts.get("platforms", ())
    images = keyed_items(result.facts.get("image_by_platform", ()))
    return [_Entry("GLIDEIN_REQUIRED_OS", ",".join(platforms), KEPT),
            _Entry("SINGULARITY_IMAGES_DICT", ",".join(f"{k}:{v}" for k, v in images), KEPT)]


def _entries(result: ProbeResult, now: float, age: bool = True, ospool: bool = False,
             glideinwms: bool = False) -> List[_Entry]:
    """One probe's attributes, in the order they are printed."""
    probe = result.probe
    entries = [_Entry(attribute(probe, "ok"), result.status.usable, KEPT),
               _Entry(attribute(probe, "status"), result.status.value, KEPT),
               _Entry(attribute(probe, "reason"), result.reason, REASON)]
    if age:
        entries.append(_Entry(attribute(probe, "age"), int(result.age(now)), AGE))
    for name, value in sorted(result.facts.items()):
        if KEYED in name and isinstance(value, tuple):
            entries.extend(_keyed_entries(probe, name, value))
            continue
        name = attribute(probe, name)
        entries.append(_Entry(name, value, KEPT if name in MATCHED_ON else FACT))
    for m in result.measurements:
        name = measurement_attribute(probe, m)
        entries.append(_Entry(name, _number(m), KEPT if name in MATCHED_ON else MEASUREMENT))
    return entries + (_ospool_entries(result) if ospool else []) + (_glideinwms_entries(result) if glideinwms else [])


def _line(entry: _Entry, cut: _Cut = _CUTS[0]) -> Optional[str]:
    if entry.kind == KEPT:
        return f"{entry.name} = {render_value(entry.value)}"
    if entry.kind == REASON:
        return f"{entry.name} = {render_value(entry.value, max_chars=cut.reason_chars)}"
    if {AGE: cut.age, FACT: cut.facts, MEASUREMENT: cut.measurements}[entry.kind]:
        return f"{entry.name} = {render_value(entry.value, cut.list_items, cut.text_chars)}"
    return None


def _block(entries: Sequence[_Entry], cut: _Cut) -> List[str]:
    return [line for line in (_line(e, cut) for e in entries) if line is not None]


def _size(lines: Iterable[str]) -> int:
    return sum(len(line.encode("utf-8")) + 1 for line in lines)


def _fitted(entry: _Entry, room: int) -> Optional[str]:
    """entry's line in at most room bytes: a list keeps the elements that fit."""
    line = _line(entry, _CUTS[-1])
    items = min(len(entry.value), MAX_LIST_ITEMS) if isinstance(entry.value, tuple) else 0
    while line is not None and _size([line]) > room and items > 0:
        items -= 1
        line = f"{entry.name} = {render_value(entry.value, items)}"
    return line if line is not None and _size([line]) <= room else None


def _core(blocks: Sequence[Sequence[_Entry]], room: int) -> List[str]:
    """Last resort, when even the most cut blocks do not fit (hundreds of
    repositories or images): every probe's Ok and Status (each block's first
    two entries), what the recipes match on, the other KEPT entries shortest
    first, then the reasons, each while it fits."""
    kept = [e for entries in blocks for e in entries[2:] if e.kind == KEPT]
    ordered = [e for entries in blocks for e in entries[:2]] + [e for e in kept if e.name in MATCHED_ON]
    ordered += sorted((e for e in kept if e.name not in MATCHED_ON), key=lambda e: _size([_line(e)]))
    ordered += [e for entries in blocks for e in entries if e.kind == REASON]
    lines = []
    for entry in ordered:
        line = _fitted(entry, room)
        if line is not None:
            lines.append(line)
            room -= _size([line])
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
    lines = [line for r in results for line in _block(_entries(r, now, age=False), _CUTS[0])]
    return "".join(line + "\n" for line in lines + alias_lines(results)) + "-\n"


def render(report: RunReport, verdict: Verdict, now: float, ospool: bool = True, glideinwms: bool = False) -> str:
    """The complete cron output: attribute lines, then the closing `-` line,
    in at most MAX_OUTPUT_BYTES.

    ospool: also publish the OSPool pilot's CVMFS attribute names.
    glideinwms: also publish GlideinWMS' GLIDEIN_REQUIRED_OS and SINGULARITY_IMAGES_DICT.
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
    lines.extend(alias_lines(report.results))
    blocks = [_entries(result, now, ospool=ospool, glideinwms=glideinwms) for result in report.results]
    cuts = [0] * len(blocks)
    body = [_block(entries, _CUTS[0]) for entries in blocks]
    room = MAX_OUTPUT_BYTES - _size(lines) - 2  # the closing "-\n"
    if _size(line for block in body for line in block) > room:
        # Keep what jobs match on rather than overflow the startd's buffer:
        # cut the biggest block one step, until everything fits.
        room -= _size([TRUNCATED_LINE])
        lines.append(TRUNCATED_LINE)
        while _size(line for block in body for line in block) > room:
            cuttable = [i for i, cut in enumerate(cuts) if cut + 1 < len(_CUTS)]
            if not cuttable:
                body = [_core(blocks, room)]
                break
            biggest = max(cuttable, key=lambda i: _size(body[i]))
            cuts[biggest] += 1
            body[biggest] = _block(blocks[biggest], _CUTS[cuts[biggest]])
    lines.extend(line for block in body for line in block)
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
