"""Run probes under time budgets; nothing a probe does can take the run down.

Each probe runs in its own (daemon) thread with a budget = min(its timeout,
what is left of the overall deadline). External commands go through
BudgetedContext.run, whose timeout is clamped to that budget and whose process
groups the runner kills if the probe overruns. A probe that raises becomes a
failed result naming the exception; one that does not return in time becomes
a failed result saying so, and its thread is abandoned, never joined.

While probes run we are a child subreaper (procs.reaping): whatever a
command daemonised is re-parented to us, killed with its command's family,
and at the latest when the run ends.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import signal
import threading
import time
from dataclasses import dataclass, replace
from typing import Any, Dict, List, Mapping, Optional, Sequence, Set, Tuple

from startd_health.system import procs
from startd_health.core.model import Probe, ProbeResult, RunReport, Status, failed
from startd_health.core.state import ProbeLock, StateDir, StateError, write_atomic

log = logging.getLogger(__name__)

# A probe gets this long past its budget to report its own, more precise
# timeout (its command's TERM/KILL/abandon sequence) before the runner
# declares it hung.
OVERRUN_GRACE_SECONDS = procs.KILL_GRACE_SECONDS + procs.REAP_WAIT_SECONDS + 0.5
# A fresh result is re-used when younger than this fraction of the probe's
# period, so that a probe and a cron job with the same period do not skip
# every other run because of scheduling jitter.
REUSE_FRACTION = 0.9


class BudgetedContext:
    """The model's ProbeContext: a probe's settings, its budget, and a safe way to run commands."""

    def __init__(self, probe: str, settings: Mapping[str, Any], deadline: float,
                 condor: Any = None, scratch_root: Optional[str] = None, system_root: str = "/") -> None:
        self.probe = probe
        self.settings = settings
        self.deadline = deadline  # time.monotonic() value
        self.condor = condor      # core.config.CondorParams, for HTCondor's own knobs
        self.system_root = system_root  # where /proc, /sys, /dev, /etc are read (a recorded tree in tests)
        self._scratch_root = scratch_root
        self._groups: Set[int] = set()
        self._lock = threading.Lock()
        self._cancelled = threading.Event()

    def scratch_dir(self, probe: Optional[str] = None) -> Optional[str]:
        """A directory of this probe's own that outlives the run (markers,
        quarantine windows, pids of abandoned children); None without a
        usable state directory. Write files in it with write_scratch.
        probe: another probe's, to READ what it knows (e.g. the container
        probe reads the cvmfs probe's records of hung repositories)."""
        if self._scratch_root is None:
            return None
        path = os.path.join(self._scratch_root, probe or self.probe)
        try:
            os.makedirs(path, mode=0o755, exist_ok=True)
        except OSError as exc:
            log.warning("scratch directory %s: %s", path, exc)
            return None
        return path

    def write_scratch(self, name: str, data: bytes) -> None:
        directory = self.scratch_dir()
        if directory is None:
            raise OSError(f"no scratch directory for probe {self.probe} (no usable state directory)")
        write_atomic(os.path.join(directory, name), data)

    def remaining(self) -> float:
        return max(0.0, self.deadline - time.monotonic())

    def run(self, argv: Sequence[str], timeout: Optional[float] = None,
            env: Optional[Mapping[str, str]] = None, cwd: Optional[str] = None) -> procs.CommandResult:
        budget = self.remaining() if timeout is None else min(timeout, self.remaining())
        if self._cancelled.is_set() or budget <= 0:
            return procs.CommandResult(argv, None, "", "", 0.0, timed_out=True, error="no time left in the probe's budget")
        return procs.run_command(argv, budget, env=env, cwd=cwd, on_start=self._started, on_end=self._ended)

    def _started(self, pgid: int) -> None:
        with self._lock:
            self._groups.add(pgid)
        if self._cancelled.is_set():  # raced with cancel(): do not let it live
            procs.kill_command(pgid, signal.SIGKILL)

    def _ended(self, pgid: int) -> None:
        with self._lock:
            self._groups.discard(pgid)

    def cancel(self) -> None:
        """Kill every process group the probe still has; later run() calls fail at once."""
        self._cancelled.set()
        with self._lock:
            groups = list(self._groups)
        for pgid in groups:
            procs.kill_command(pgid, signal.SIGKILL)


def settings_digest(settings: Mapping[str, Any]) -> str:
    return hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _execute(probe: Probe, ctx: BudgetedContext, box: Dict[str, ProbeResult]) -> None:
    started_at, t0 = time.time(), time.monotonic()
    try:
        result = probe.run(ctx)
        if not isinstance(result, ProbeResult):
            raise TypeError(f"run() returned {type(result).__name__}, not ProbeResult")
    except Exception as exc:  # a crashing probe is a failed probe, never a crashed run
        log.warning("probe %s crashed", probe.name, exc_info=True)
        result = failed(probe.name, f"probe crashed: {type(exc).__name__}: {exc}")
    box["result"] = result.with_timing(started_at, time.monotonic() - t0)


def stale_if_old(result: ProbeResult, max_age: float, now: float) -> ProbeResult:
    """A cached result older than max_age is not evidence of health any more."""
    age = result.age(now)
    if age <= max_age or result.status is Status.FAILED:
        return result
    return ProbeResult(result.probe, Status.FAILED, f"last result is stale ({age:.0f}s old)",
                       result.facts, result.measurements, result.started_at, result.duration_seconds)


def run_probes(
    probes: Sequence[Probe],
    probe_settings: Mapping[str, Mapping[str, Any]],
    deadline_seconds: float,
    state: Optional[StateDir] = None,
    lock_wait_seconds: float = 5.0,
    force: bool = False,
    condor: Any = None,
    system_root: str = "/",
) -> RunReport:
    """Run (or re-use recent results of) probes; always returns within the deadline.

    probe_settings[name] must hold "period" and "timeout" (seconds) plus the
    probe's own knobs. A probe that another process is running right now (its
    lock is held) is not run again: after up to lock_wait_seconds its latest
    cached result is published instead. system_root: where probes read /proc,
    /sys, /dev and /etc ("/"; a recorded tree in tests).
    """
    t0 = time.monotonic()
    deadline = t0 + deadline_seconds
    state_error = ""
    if state is not None:
        try:
            state.ensure()
        except StateError as exc:
            state_error, state = str(exc), None
            log.warning("%s; running without cached results or locks", state_error)
    # Daemonised helpers of our commands re-parent to us, so that they die
    # with their command's family, or at the latest when this run ends.
    with procs.reaping():
        report = _run(probes, probe_settings, deadline, state, lock_wait_seconds, force, condor, system_root)
    report.state_error = state_error or report.state_error
    if report.state_error:
        log.warning("%s", report.state_error)
    report.duration_seconds = time.monotonic() - t0
    return report


@dataclass
class _Running:
    probe: Probe
    digest: str
    ctx: BudgetedContext
    box: Dict[str, ProbeResult]
    thread: threading.Thread
    budget_end: float      # time.monotonic() when the budget runs out
    budget: float          # seconds granted
    started_at: float      # epoch


def _run(probes: Sequence[Probe], settings: Mapping[str, Mapping[str, Any]], deadline: float,
         state: Optional[StateDir], lock_wait: float, force: bool, condor: Any, system_root: str) -> RunReport:
    now = time.time()
    report = RunReport([])
    results: Dict[str, ProbeResult] = {}
    running: List[_Running] = []
    busy: List[Tuple[Probe, str, ProbeLock]] = []   # probes another process is running now
    held: List[ProbeLock] = []

    def fresh_cached(probe: Probe, digest: str) -> Optional[ProbeResult]:
        if state is None or force:
            return None
        cached = state.load(probe.name, digest)
        period = settings[probe.name]["period"]
        return cached if cached is not None and cached.age(now) < REUSE_FRACTION * period else None

    try:
        for probe in probes:
            digest = settings_digest(settings[probe.name])
            cached = fresh_cached(probe, digest)
            if cached is None and state is not None:
                lock = state.lock(probe.name)
                try:
                    if not lock.try_acquire():
                        busy.append((probe, digest, lock))
                        continue
                    held.append(lock)
                except StateError as exc:  # run it anyway: a missing lock is better than no result
                    report.state_error = report.state_error or str(exc)
                cached = fresh_cached(probe, digest)  # another run may have finished it just before we locked
            if cached is not None:
                results[probe.name] = cached
                report.reused.add(probe.name)
                continue
            running.append(_start(probe, digest, settings[probe.name], deadline, condor, state, system_root))

        for run in running:
            previous = state.load(run.probe.name) if state is not None else None
            results[run.probe.name] = _with_last_success(_finish(run), previous)
            if state is not None:
                try:
                    state.save(results[run.probe.name], run.digest)
                except StateError as exc:
                    report.state_error = report.state_error or str(exc)
        for lock in held:
            lock.release()
        held.clear()

        for probe, digest, lock in busy:
            report.overlapped = True
            log.warning("another run is running probe %s: publishing its cached result", probe.name)
            try:
                lock.acquire(max(0.0, min(lock_wait, deadline - OVERRUN_GRACE_SECONDS - time.monotonic())))
            finally:
                lock.release()
            cached = state.load(probe.name, digest) if state is not None else None
            if cached is None:
                results[probe.name] = failed(probe.name, "no result yet: another run is still running this probe")
            else:
                period, timeout = settings[probe.name]["period"], settings[probe.name]["timeout"]
                results[probe.name] = stale_if_old(cached, 2 * period + timeout, time.time())
                report.reused.add(probe.name)
    finally:
        for lock in held:
            lock.release()
    report.results = [results[p.name] for p in probes]
    return report


def _with_last_success(result: ProbeResult, previous: Optional[ProbeResult]) -> ProbeResult:
    if result.status.usable:
        return replace(result, last_success_at=result.ended_at)
    return replace(result, last_success_at=previous.last_success_at if previous is not None else 0.0)


def _start(probe: Probe, digest: str, settings: Mapping[str, Any], deadline: float, condor: Any,
           state: Optional[StateDir], system_root: str) -> _Running:
    budget_end = min(deadline - OVERRUN_GRACE_SECONDS, time.monotonic() + settings["timeout"])
    ctx = BudgetedContext(probe.name, settings, budget_end, condor, state.probes_dir if state is not None else None,
                          system_root)
    box: Dict[str, ProbeResult] = {}
    thread = threading.Thread(target=_execute, args=(probe, ctx, box), name=f"probe-{probe.name}", daemon=True)
    thread.start()
    return _Running(probe, digest, ctx, box, thread, budget_end, budget_end - time.monotonic(), time.time())


def _finish(run: _Running) -> ProbeResult:
    run.thread.join(max(0.0, run.budget_end + OVERRUN_GRACE_SECONDS - time.monotonic()))
    if "result" in run.box:
        return run.box["result"]
    run.ctx.cancel()
    log.warning("probe %s did not finish within its budget; abandoned", run.probe.name)
    return failed(run.probe.name, f"probe did not finish within {run.budget:.0f}s (abandoned)").with_timing(
        run.started_at, time.time() - run.started_at)
