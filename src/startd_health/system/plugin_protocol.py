"""What a site check's exit status and output mean: the Nagios plugin
protocol and node-problem-detector's custom-plugin convention. Pure: an
exit status and the text a check printed in, a judgement out.

Nagios (monitoring-plugins' development guidelines): exit 0 OK, 1 WARNING,
2 CRITICAL, 3 UNKNOWN. The first line of output is the short text, optionally
followed by ``|`` and performance data; later lines are long text, and the
first later line with a ``|`` starts more performance data, which runs to the
end of the output::

    DISK OK - free space: / 75738MiB (72% inode=96%);| /=29525803008B;243497277849;;0;270552530944
    LONG TEXT ... | more=1;;
    even_more=2s

Performance data is ``'label'=value[UOM];[warn];[crit];[min];[max]`` items
separated by spaces (a label with spaces or ``=`` is single-quoted, ``''`` is a
quote inside it). Values are converted to Prometheus base units: s, ms, us ->
seconds; % -> ratio (0..1); B, KB, MB, GB, TB (also KiB ... TiB; multiples
of 1024, as monitoring-plugins compute them) -> bytes; c (a continuous
counter) -> total; none or anything else -> unitless. ``U`` (undetermined)
values are skipped.

node-problem-detector (custom plugin monitor): exit 0 OK, 1 NonOK (a problem),
2 Unknown; the output is the message.

How each outcome is judged (Status values of core.model):

    nagios 0 OK / npd 0 OK                  -> ok
    nagios 1 WARNING                        -> degraded
    nagios 2 CRITICAL / npd 1 NonOK         -> failed
    nagios 3 UNKNOWN / npd 2 Unknown        -> degraded, "unknown: <text>": the check
                                               could not judge (bad arguments, a
                                               missing file); the node is not refused
                                               for it, but the defect is shown
    any other exit status                   -> failed, "exit N (not a <protocol> status)":
                                               e.g. a shell's 126/127, a script dying
                                               under `set -e`
    killed by a signal / timed out / could
    not start (not found, not executable)   -> failed (decided by the caller, probes/site.py):
                                               a configured check that cannot run leaves
                                               the node unchecked, like a probe that crashed
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import List, Optional, Tuple

NAGIOS, NPD = "nagios", "npd"
PROTOCOLS = (NAGIOS, NPD)
# Nagios 3 read at most 8 KiB of a plugin's output; more is not output, it is a bug.
MAX_OUTPUT_CHARS = 8192
MAX_REASON_CHARS = 240
MAX_PERFDATA_ITEMS = 32       # per check: more is cut (the ad and the metrics stay bounded)
MAX_LABEL_CHARS = 64

OK, DEGRADED, FAILED = "ok", "degraded", "failed"   # core.model.Status values (this module imports nothing)

NAGIOS_STATES = {0: "OK", 1: "WARNING", 2: "CRITICAL", 3: "UNKNOWN"}
NPD_STATES = {0: "OK", 1: "NonOK", 2: "Unknown"}

# UOM -> (unit, factor). Bytes in multiples of 1024: check_disk's "MB" is MiB.
UNITS = {
    "s": ("seconds", 1.0), "ms": ("seconds", 1e-3), "us": ("seconds", 1e-6),
    "%": ("ratio", 0.01),
    "b": ("bytes", 1.0), "kb": ("bytes", 1024.0), "mb": ("bytes", 1024.0 ** 2), "gb": ("bytes", 1024.0 ** 3),
    "tb": ("bytes", 1024.0 ** 4), "kib": ("bytes", 1024.0), "mib": ("bytes", 1024.0 ** 2),
    "gib": ("bytes", 1024.0 ** 3), "tib": ("bytes", 1024.0 ** 4),
    "c": ("total", 1.0),
}


@dataclass(frozen=True)
class Perfdata:
    label: str
    value: float                    # in base units
    unit: str                       # "seconds", "bytes", "ratio", "total" or "" (unitless)
    uom: str = ""                   # as the check wrote it
    warn: Optional[float] = None    # thresholds and range, in base units, when plain numbers
    crit: Optional[float] = None
    minimum: Optional[float] = None
    maximum: Optional[float] = None


@dataclass(frozen=True)
class Judgement:
    status: str                     # OK, DEGRADED or FAILED
    state: str                      # the protocol's own word (CRITICAL, NonOK, ...) or "exit N"
    reason: str                     # one line, bounded
    perfdata: Tuple[Perfdata, ...] = ()


def _number(text: str) -> Optional[float]:
    try:
        value = float(text)
    except ValueError:
        return None
    return value if value == value and value not in (float("inf"), float("-inf")) else None


_VALUE = re.compile(r"^([-+]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][-+]?[0-9]+)?)([a-zA-Z%]*)$")


def _split_items(text: str) -> List[str]:
    """Space-separated items; a quoted label may hold spaces ('' is a quote)."""
    items, current, quoted, i = [], "", False, 0
    while i < len(text):
        char = text[i]
        if char == "'":
            if quoted and text[i + 1:i + 2] == "'":
                current += "''"
                i += 2
                continue
            quoted = not quoted
            current += char
        elif char.isspace() and not quoted:
            if current:
                items.append(current)
            current = ""
        else:
            current += char
        i += 1
    if current:
        items.append(current)
    return items


def parse_perfdata(text: str) -> List[Perfdata]:
    """Every well-formed item of performance data in text; malformed ones are skipped."""
    found: List[Perfdata] = []
    for item in _split_items(text):
        label, sep, rest = item.rpartition("=")
        if not sep or not label:
            continue
        if len(label) >= 2 and label[0] == label[-1] == "'":
            label = label[1:-1].replace("''", "'")
        label = label.strip()
        fields = rest.split(";")
        match = _VALUE.match(fields[0].strip())
        if not label or not match:   # "U" (undetermined) and garbage alike
            continue
        uom = match.group(2)
        unit, factor = UNITS.get(uom.lower(), ("", 1.0))
        extra = [_number(f.strip()) if f.strip() else None for f in fields[1:5]] + [None] * 4
        warn, crit, low, high = (None if v is None else v * factor for v in extra[:4])
        found.append(Perfdata(label[:MAX_LABEL_CHARS], float(match.group(1)) * factor, unit, uom, warn, crit, low, high))
        if len(found) >= MAX_PERFDATA_ITEMS:
            break
    return found


def split_output(output: str) -> Tuple[str, str, str]:
    """(short text, long text, performance data) of a Nagios plugin's output."""
    lines = output[:MAX_OUTPUT_CHARS].splitlines()
    if not lines:
        return "", "", ""
    first, _, perf = lines[0].partition("|")
    long_lines: List[str] = []
    more: List[str] = []
    for index, line in enumerate(lines[1:], start=1):
        if "|" in line:
            text, _, rest = line.partition("|")
            long_lines.append(text)
            more = [rest] + lines[index + 1:]
            break
        long_lines.append(line)
    return first.strip(), "\n".join(long_lines).strip(), " ".join([perf] + more).strip()


def _reason(text: str, fallback: str) -> str:
    text = " ".join(text.split())
    text = text or fallback
    return text if len(text) <= MAX_REASON_CHARS else text[:MAX_REASON_CHARS - 3].rstrip() + "..."


def judge(protocol: str, returncode: int, stdout: str, stderr: str = "") -> Judgement:
    """The judgement of a check that exited with returncode (>= 0)."""
    if protocol == NPD:
        text, perf = stdout[:MAX_OUTPUT_CHARS].strip().splitlines()[:1], ""
        short = text[0] if text else ""
        states, ok, bad, unknown = NPD_STATES, 0, {1: FAILED}, 2
    else:
        short, _, perf = split_output(stdout)
        states, ok, bad, unknown = NAGIOS_STATES, 0, {1: DEGRADED, 2: FAILED}, 3
    if not short:   # nothing on stdout: what it said on stderr is the best reason there is
        lines = [line.strip() for line in stderr[:MAX_OUTPUT_CHARS].splitlines() if line.strip()]
        short = lines[-1] if lines else ""
    perfdata = tuple(parse_perfdata(perf)) if perf else ()
    state = states.get(returncode, f"exit {returncode}")
    if returncode == ok:
        return Judgement(OK, state, _reason(short, f"{state} (no output)"), perfdata)
    if returncode in bad:
        return Judgement(bad[returncode], state, _reason(short, f"{state} (no output)"), perfdata)
    if returncode == unknown:
        return Judgement(DEGRADED, state, _reason("unknown: " + (short or "no output"), ""), perfdata)
    return Judgement(FAILED, state, _reason(f"exit {returncode} (not a {protocol} status)"
                                            + (f": {short}" if short else ""), ""), perfdata)
