"""Execute-directory probe: can the starter make a job's scratch directory
where the startd puts it?

Every EXECUTE and SLOT<N>_EXECUTE of HTCondor's configuration (or
STARTD_HEALTH_EXECUTE_DIRS) must be a filesystem mounted read-write where a
file can be created, written, fsynced and removed, with free space and free
inodes above thresholds. HTCondor alone lets a job land on a read-only
EXECUTE ("Failed to create scratch dir", then a rematch loop) or on a full
one (the job starts and fails), and reports it only afterwards.

Each directory is tested by a child (probes/_execute_test.py) with its own
timeout, as the condor user (run as root, the child becomes HTCondor's
account first: root would write where condor cannot): a hung filesystem blocks the child, never the probe. A child that
could not be killed is remembered (system/stuck.py) and, while it lives,
the directory is reported hung without starting another.

Judge: read-only, not writable, hung, or less than EXECUTE_FULL_MB /
EXECUTE_FULL_INODES free -> failed; less than EXECUTE_LOW_MB /
EXECUTE_LOW_INODES, or less than the Disk HTCondor's DISK knob makes the
slots advertise -> degraded.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import time
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence, Tuple

from startd_health.core.config import Count, Knob, parse_list, parse_positive_seconds
from startd_health.core.model import Measurement, Probe, ProbeContext, ProbeResult, Status
from startd_health.system import job_account, programs, stuck

_SLOT_EXECUTE = re.compile(r"^SLOT(\d+)_EXECUTE$")


MIB = 2**20
parse_mib = Count(minimum=0, maximum=10**9)          # MiB: up to about 1 EiB
parse_inodes = Count(minimum=0, maximum=10**10)


def human(value: float) -> str:
    for unit, size in (("TiB", 2**40), ("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if value >= size:
            return f"{value / size:.3g} {unit}"
    return f"{int(value)} B"


@dataclass(frozen=True)
class DirCheck:
    path: str
    knobs: Tuple[str, ...]                    # which of HTCondor's knobs name it
    free_bytes: Optional[int] = None
    total_bytes: Optional[int] = None
    free_inodes: Optional[int] = None
    total_inodes: Optional[int] = None
    read_only: bool = False
    write_ok: bool = False
    error: str = ""                           # the failed step, e.g. "create: Read-only file system (EROFS)"
    errno: str = ""
    hung: str = ""                            # why it counts as hung ("" if it answered)
    seconds: float = 0.0


# ---------------------------------------------------------------- gather

def directories(ctx: ProbeContext) -> List[Tuple[str, Tuple[str, ...]]]:
    """(directory, the knobs naming it), in the order EXECUTE, SLOT1_EXECUTE, ..."""
    configured = ctx.settings.get("dirs") or ()
    if configured:
        return [(path, ("STARTD_HEALTH_EXECUTE_DIRS",)) for path in configured]
    condor = ctx.condor
    if condor is None or not getattr(condor, "available", True):
        return []
    found: Dict[str, List[str]] = {}
    execute = (condor.get("EXECUTE") or "").strip()
    if execute:
        found.setdefault(execute.rstrip("/") or "/", []).append("EXECUTE")
    names = getattr(condor, "names", lambda: ())()
    slots = sorted((int(m.group(1)), name) for name in names for m in [_SLOT_EXECUTE.match(name)] if m)
    for _, name in slots:
        value = (condor.get(name) or "").strip()
        if value:
            found.setdefault(value.rstrip("/") or "/", []).append(name)
    return [(path, tuple(knobs)) for path, knobs in found.items()]


def _record(path: str) -> str:
    return "execute-" + hashlib.sha1(path.encode()).hexdigest()[:12]


def condor_ids(ctx: ProbeContext) -> Tuple[str, ...]:
    """Run as root: (uid, gid) of HTCondor's account (CONDOR_IDS, else condor), as whom the
    starter creates job scratch directories; () otherwise (we are that account already, or none exists)."""
    if os.geteuid() != 0 or ctx.condor is None or not getattr(ctx.condor, "available", True):
        return ()   # (without HTCondor's configuration there is no starter's account to stand for)
    ids = job_account.condor_account(ctx.condor.get("CONDOR_IDS"))
    return (str(ids[0]), str(ids[1])) if ids is not None else ()


def check_dir(ctx: ProbeContext, path: str, knobs: Tuple[str, ...], timeout: float) -> DirCheck:
    scratch = ctx.scratch_dir()
    still = stuck.still_stuck(scratch, _record(path))
    if still is not None:
        return DirCheck(path, knobs, hung=f"an earlier test ({still.describe()}, since {stuck.iso(still.since)}) "
                                          "is still stuck in it")
    started = time.time()
    result = ctx.run(programs.python_argv("startd_health.probes", "_execute_test.py", path, *condor_ids(ctx)),
                     timeout=timeout)
    if result.left_behind:
        stuck.remember(scratch, _record(path), result.left_behind, started)
    lines = result.stdout.splitlines()
    if result.timed_out or not result.ok:
        if result.timed_out:
            where = "writing a file" if "statvfs" in lines else "statvfs"
            return DirCheck(path, knobs, hung=f"no answer within {timeout:g}s ({where}): a hung filesystem?",
                            seconds=result.duration_seconds)
        return DirCheck(path, knobs, error=f"test failed: {result.describe_failure()}", seconds=result.duration_seconds)
    try:
        data = json.loads(lines[-1])
    except (ValueError, IndexError):
        return DirCheck(path, knobs, error=f"test printed no result: {result.stdout[-200:]!r}",
                        seconds=result.duration_seconds)
    error = data.get("error") or {}
    return DirCheck(path, knobs, data.get("free_bytes"), data.get("total_bytes"), data.get("free_inodes"),
                    data.get("total_inodes"), bool(data.get("read_only")), bool(data.get("write_ok")),
                    f"{error['step']}: {error['text']} ({error['errno']})" if error else "", error.get("errno", ""),
                    seconds=result.duration_seconds)


def gather(ctx: ProbeContext) -> List[DirCheck]:
    return [check_dir(ctx, path, knobs, ctx.settings["dir_timeout"]) for path, knobs in directories(ctx)]


def advertised_disk(ctx: ProbeContext) -> Optional[int]:
    """Bytes the slots advertise in total when HTCondor's DISK is a plain number (KiB)."""
    if ctx.condor is None:
        return None
    text = (ctx.condor.get("DISK") or "").strip()
    try:
        return int(float(text)) * 1024 if text else None
    except ValueError:
        return None    # an expression: the startd computes it


# ---------------------------------------------------------------- judge

@dataclass(frozen=True)
class Thresholds:
    full_bytes: int
    low_bytes: int
    full_inodes: int
    low_inodes: int


def judge_dir(d: DirCheck, t: Thresholds, advertised: Optional[int] = None) -> Tuple[Status, str]:
    name = f"{d.path} ({', '.join(d.knobs)})"
    if d.hung:
        return Status.FAILED, f"{name}: {d.hung}"
    if d.read_only or d.errno == "EROFS":
        return Status.FAILED, f"{name} is on a read-only filesystem: the starter cannot create a job's scratch dir"
    if d.errno in ("ENOSPC", "EDQUOT"):
        return Status.FAILED, f"{name} is full: {d.error}"
    if d.error:
        return Status.FAILED, f"{name}: {d.error}"
    if d.free_bytes is not None and d.free_bytes < t.full_bytes:
        return Status.FAILED, f"{name} is full: {human(d.free_bytes)} free (STARTD_HEALTH_EXECUTE_FULL_MB {t.full_bytes // MIB})"
    inodes_counted = bool(d.total_inodes)
    if inodes_counted and d.free_inodes is not None and d.free_inodes < t.full_inodes:
        return Status.FAILED, f"{name} has no inodes left: {d.free_inodes} free (STARTD_HEALTH_EXECUTE_FULL_INODES {t.full_inodes})"
    if d.free_bytes is not None and d.free_bytes < t.low_bytes:
        return Status.DEGRADED, f"{name} is low on space: {human(d.free_bytes)} free (STARTD_HEALTH_EXECUTE_LOW_MB {t.low_bytes // MIB})"
    if inodes_counted and d.free_inodes is not None and d.free_inodes < t.low_inodes:
        return Status.DEGRADED, f"{name} is low on inodes: {d.free_inodes} free (STARTD_HEALTH_EXECUTE_LOW_INODES {t.low_inodes})"
    if advertised is not None and d.free_bytes is not None and d.free_bytes < advertised:
        return Status.DEGRADED, (f"{name} has {human(d.free_bytes)} free, less than the slots advertise "
                                 f"(DISK = {advertised // 1024} KiB)")
    return Status.OK, ""


def judge(checks: Sequence[DirCheck], t: Thresholds, advertised: Optional[int] = None) -> ProbeResult:
    if not checks:
        return ProbeResult("execute", Status.SKIPPED, "no execute directory: HTCondor is not configured here and "
                           "STARTD_HEALTH_EXECUTE_DIRS is empty", {"dirs": ()})
    verdicts = [(d, *judge_dir(d, t, advertised)) for d in checks]
    failed = tuple(d.path for d, s, _ in verdicts if s is Status.FAILED)
    low = tuple(d.path for d, s, _ in verdicts if s is Status.DEGRADED)
    facts: Dict[str, Any] = {"dirs": tuple(d.path for d in checks), "dirs_failed": failed, "dirs_low": low}
    measurements: List[Measurement] = []
    for d in checks:
        labels = {"dir": d.path}
        if d.free_bytes is not None:
            measurements.append(Measurement("free", float(d.free_bytes), "bytes", labels))
        if d.total_inodes and d.free_inodes is not None:
            measurements.append(Measurement("free", float(d.free_inodes), "inodes", labels))
    first = checks[0]
    if first.free_bytes is not None:
        facts["free_bytes"] = min(d.free_bytes for d in checks if d.free_bytes is not None)
    reasons = "; ".join(r for _, s, r in verdicts if s is not Status.OK)
    if failed:
        return ProbeResult("execute", Status.FAILED, reasons, facts, tuple(measurements))
    if low:
        return ProbeResult("execute", Status.DEGRADED, reasons, facts, tuple(measurements))
    summary = ", ".join(f"{d.path} {human(d.free_bytes or 0)} free" for d in checks)
    return ProbeResult("execute", Status.OK, f"writable: {summary}", facts, tuple(measurements))


class ExecuteProbe(Probe):
    name = "execute"
    description = "EXECUTE / SLOT<N>_EXECUTE: read-write, a file can be created, written, fsynced and removed, " \
                  "free space and inodes"
    default_period = 60.0
    default_timeout = 30.0
    # Create, write, fsync and remove one small file: well under a second on
    # a working disk, even a busy one; the 10 s directory timeout is for a
    # struggling one.
    answers_within = 5.0
    knobs = (
        Knob("EXECUTE_DIRS", parse_list, (), "directories to test", "LIST",
             default_text="HTCondor's `EXECUTE` and every `SLOT<N>_EXECUTE`; without HTCondor, none (skipped)"),
        Knob("EXECUTE_DIR_TIMEOUT", parse_positive_seconds, 10.0, "budget for one directory's test (a hung "
             "filesystem fails it)", "SECONDS"),
        Knob("EXECUTE_FULL_MB", parse_mib, 64, "less free space than this many MiB fails the node (a job "
             "cannot even unpack its input)", "MIB"),
        Knob("EXECUTE_LOW_MB", parse_mib, 2048, "less free space than this many MiB degrades the node", "MIB"),
        Knob("EXECUTE_FULL_INODES", parse_inodes, 1000, "fewer free inodes than this fails the node", "COUNT"),
        Knob("EXECUTE_LOW_INODES", parse_inodes, 50000, "fewer free inodes than this degrades the node", "COUNT"),
    )

    def run(self, ctx: ProbeContext) -> ProbeResult:
        s = ctx.settings
        thresholds = Thresholds(s["full_mb"] * MIB, s["low_mb"] * MIB, s["full_inodes"], s["low_inodes"])
        return judge(gather(ctx), thresholds, advertised_disk(ctx))
