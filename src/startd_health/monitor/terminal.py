"""Terminal renderer for `startd-health check`: what an admin reads on a node."""

from __future__ import annotations

import json
import shutil
from typing import Any, Dict, Sequence

from startd_health import __version__
from startd_health.core.model import ProbeResult, Status
from startd_health.core.verdict import Verdict
from startd_health.system.stuck import iso

COLOURS = {Status.OK: "32", Status.DEGRADED: "33", Status.FAILED: "31;1", Status.SKIPPED: "2"}


def exit_status(results: Sequence[ProbeResult]) -> int:
    """0 healthy, 1 degraded, 2 failed (the monitoring-plugin convention)."""
    if any(r.status is Status.FAILED for r in results):
        return 2
    if any(r.status is Status.DEGRADED for r in results):
        return 1
    return 0


def human_age(seconds: float) -> str:
    seconds = int(seconds)
    if seconds < 120:
        return f"{seconds}s"
    if seconds < 7200:
        return f"{seconds // 60}m"
    return f"{seconds // 3600}h"


def figures(result: ProbeResult) -> str:
    parts = []
    for m in result.measurements:
        if m.unit == "total" and not m.value:
            continue    # counters initialised to 0 (kernel events): only those that counted something
        label = ",".join(v for _, v in m.labels)
        if m.unit == "seconds":
            value = f"{m.value:.2f}s"
        elif m.unit == "timestamp_seconds":   # an epoch: a time a person reads (0: never)
            value = iso(m.value) if m.value > 0 else "never"
        else:
            value = f"{m.value:g}{(' ' + m.unit) if m.unit else ''}"
        parts.append(f"{m.name}{'[' + label + ']' if label else ''}={value}")
    return " ".join(parts)


def table(results: Sequence[ProbeResult], verdict: Verdict, now: float, colour: bool) -> str:
    width = shutil.get_terminal_size((120, 24)).columns
    rows = [("PROBE", "STATUS", "AGE", "REASON")]
    for r in results:
        reason = r.reason + (f"  [{figures(r)}]" if figures(r) else "")
        rows.append((r.probe, r.status.value, human_age(r.age(now)), reason))
    widths = [max(len(row[i]) for row in rows) for i in range(3)]
    lines = []
    for index, (probe, status, age, reason) in enumerate(rows):
        fixed = f"{probe:<{widths[0]}}  {status:<{widths[1]}}  {age:>{widths[2]}}  "
        text = reason if len(fixed) + len(reason) <= width or not colour else reason[: max(20, width - len(fixed) - 1)]
        if colour and index:
            code = COLOURS[Status(status)]
            fixed = fixed.replace(status, f"\033[{code}m{status}\033[0m", 1)
        lines.append(fixed + text)
    word = "healthy" if verdict.ok else "UNHEALTHY"
    if colour:
        word = f"\033[{'32' if verdict.ok else '31;1'}m{word}\033[0m"
    lines.append("")
    lines.append(f"node: {word}" + (f" ({verdict.reason})" if verdict.reason else ""))
    return "\n".join(lines) + "\n"


def as_json(results: Sequence[ProbeResult], verdict: Verdict, now: float) -> str:
    doc: Dict[str, Any] = {
        "version": __version__,
        "healthy": verdict.ok,
        "failed": list(verdict.failed),
        "degraded": list(verdict.degraded),
        "reason": verdict.reason,
        "probes": [dict(r.to_json(), age_seconds=round(r.age(now), 3)) for r in results],
    }
    return json.dumps(doc, indent=2, sort_keys=True) + "\n"
