"""`startd-health daemon`: the probes run continuously, under the startd.

The startd runs it as a STARTD_CRON job in WaitForExit mode (HTCondor's own
`StartdCronContinuous` / GPU monitor shape, 54-startd-health-daemon.conf):
it never exits on its own and prints one complete ad after another, each
ended by a `-` line, which the startd merges into the slot ads at once.

- Each probe runs on its own schedule (its _PERIOD), through the same runner
  as `cron` (budgets, abandonment, per-probe locks, results kept in the state
  directory, so they survive restarts and `check`, the hook and the exporter
  read them). A probe whose abandoned thread is still alive is not started
  again: threads, descriptors and children stay bounded.
- An ad is printed whenever the verdict or any published value changes
  (`- update:true`: an immediate collector update where the startd honours
  it), and at least every STARTD_HEALTH_HEARTBEAT seconds with a fresh
  StartdHealthTimestamp, so the MAX_AGE gate also catches a hung daemon.
- Events (system/watch.py) re-run just the affected probe at once; requests
  on <STATE_DIR>/recheck.sock (monitor/recheck.py) re-run probes on demand,
  at most once per STARTD_HEALTH_RECHECK_INTERVAL each.
- It exits (0) on SIGTERM, SIGINT or SIGHUP (the startd's reconfig: it
  starts us again with the new configuration) and when its stdout is closed
  (the startd went away), killing the commands its probes still run. Its
  log goes to <STATE_DIR>/daemon.log, bounded: the startd keeps a running
  job's whole stderr in memory until the job exits.

The main thread sleeps in poll() on stdout (to see it closed) and a wake-up
pipe; it starts one short-lived thread per probe run, which runs the probe
through core.runner and hands the result back through a queue.
"""

from __future__ import annotations

import logging
import math
import os
import queue
import re
import select
import signal
import threading
import time
from dataclasses import dataclass, replace
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple

from startd_health.core.model import Probe, ProbeResult, RunReport, Status, failed
from startd_health.core.runner import OVERRUN_GRACE_SECONDS, REUSE_FRACTION, run_probes, settings_digest, stale_if_old
from startd_health.core.state import StateDir, StateError
from startd_health.core.verdict import judge
from startd_health.monitor.cron import render

log = logging.getLogger(__name__)

# An event re-runs a probe at most this often (a flapping mount must not
# keep a probe running back to back).
TRIGGER_MIN_SECONDS = 2.0
# A probe that another process (a cron job, the exporter) is running: how
# long its lock is waited for before its cached result is published.
LOCK_WAIT_SECONDS = 5.0
# The ad lines that change on every print without anything having changed.
_VOLATILE = re.compile(r"^StartdHealth(?:Timestamp|RunDuration|\w*Age) = .*\n", re.MULTILINE)
UPDATE_SEPARATOR = "- update:true\n"


@dataclass
class _Schedule:
    probe: Probe
    settings: Mapping[str, Any]
    next_due: float                      # time.monotonic() of the next periodic run
    running: Optional[threading.Thread] = None
    wanted_at: Optional[float] = None    # monotonic: an on-demand run is wanted from then on
    last_on_demand: float = -math.inf    # monotonic start of the last on-demand run
    forced: bool = False                 # the run under way is an on-demand one
    started: float = 0.0                 # monotonic start of the run under way
    started_wall: float = 0.0            # its time.time()
    why: str = ""                        # what asked for the wanted on-demand run ("an event", "a request")
    running_why: str = ""                # ... for the run under way

    @property
    def name(self) -> str:
        return self.probe.name

    @property
    def period(self) -> float:
        return float(self.settings["period"])

    @property
    def timeout(self) -> float:
        return float(self.settings["timeout"])

    @property
    def run_bound(self) -> float:
        """Seconds after its start by which a run has answered or been
        abandoned (its budget, the kill sequence, a margin)."""
        return self.timeout + OVERRUN_GRACE_SECONDS + 5.0


@dataclass
class _Suspicion:
    """The node's own evidence that a probe's last result no longer holds
    (HTCondor's container test hanging; a re-check of a probe that answers
    in milliseconds when healthy, not answering): the probe's result is
    published as failed, "re-checking: WHY", until a run that started at or
    after `since` returns, or until `until` (that run hung past its budget:
    its own result rules)."""
    why: str
    since: float    # time.time(): a run that started at or after this answers it
    until: float    # time.monotonic()


@dataclass
class _Done:
    name: str
    result: ProbeResult
    reused: bool
    state_error: str
    duration: float


@dataclass
class DaemonOptions:
    heartbeat: float = 60.0
    watch_interval: float = 1.0
    recheck_interval: float = 10.0
    ospool: bool = True
    textfile_dir: str = ""


class Daemon:
    def __init__(self, probes: Sequence[Probe], settings: Mapping[str, Mapping[str, Any]], state: StateDir,
                 options: DaemonOptions, condor: Any = None, watcher: Any = None,
                 on_demand: Callable[[], List[ProbeResult]] = list,
                 write: Optional[Callable[[str], None]] = None) -> None:
        """on_demand: the last results of on-demand probes (benchmarks),
        published with their age, never judged. write: where ads go (stdout)."""
        self.state = state
        self.options = options
        self.condor = condor
        self.watcher = watcher
        self.on_demand = on_demand
        self.write = write or _write_stdout
        now = time.monotonic()
        self.schedules: Dict[str, _Schedule] = {}
        for index, probe in enumerate(probes):
            # First runs now, staggered a little (as the exporter does).
            self.schedules[probe.name] = _Schedule(probe, settings[probe.name], now + 0.2 * index)
        self.latest: Dict[str, ProbeResult] = {}
        self.suspicions: Dict[str, _Suspicion] = {}
        self.state_error = ""
        self.last_duration = 0.0
        self._done: "queue.Queue[_Done]" = queue.Queue()
        self._lock = threading.Lock()              # schedules' on-demand fields (the socket thread asks)
        self._wake_r, self._wake_w = os.pipe()
        for fd in (self._wake_r, self._wake_w):
            os.set_blocking(fd, False)
            os.set_inheritable(fd, False)
        self._signature = ""
        self._last_emit = -math.inf
        self._first_ad_by = now + options.heartbeat   # the first ad waits for the first runs, this long at most
        self._emitted = False
        self.ads = 0                                # ads printed (for tests and the soak benchmark)
        self.runs = 0                               # probe runs finished

    # ------------------------------------------------------------ start-up
    def restore(self) -> None:
        """Results kept in the state directory by an earlier daemon (or a
        cron run) that are still fresh are published at once and the probe's
        next run is when they expire: a restart costs no probe run."""
        wall, mono = time.time(), time.monotonic()
        for sched in self.schedules.values():
            cached = self.state.load(sched.name, settings_digest(sched.settings))
            if cached is None:
                continue
            age = cached.age(wall)
            if age < REUSE_FRACTION * sched.period:
                self.latest[sched.name] = cached
                self._watch_tested(cached)
                sched.next_due = mono + max(0.0, sched.period - age)

    # ------------------------------------------------------------ requests
    def request(self, names: Sequence[str], min_interval: float, why: str) -> str:
        """Queue an on-demand run of each probe, no sooner than min_interval
        after its previous on-demand run. Returns the re-check reply line.
        Called from the socket thread and the main loop."""
        now = time.monotonic()
        queued: List[str] = []
        deferred: List[Tuple[str, float]] = []
        with self._lock:
            for name in names:
                sched = self.schedules.get(name)
                if sched is None:
                    continue
                at = max(now, sched.last_on_demand + min_interval)
                if sched.wanted_at is None or at < sched.wanted_at:
                    sched.wanted_at = at
                sched.why = why
                wait = sched.wanted_at - now
                if wait > 0.05:
                    deferred.append((name, wait))
                else:
                    queued.append(name)
        log.debug("%s: re-run %s", why, " ".join(names))
        self.wake()
        if not deferred:
            return "queued " + " ".join(queued)
        reply = "rate-limited " + " ".join(f"{name}={math.ceil(wait)}" for name, wait in deferred)
        return reply + ("; queued " + " ".join(queued) if queued else "")

    def handle_recheck(self, names: List[str]) -> str:
        return self.request(names, self.options.recheck_interval, "a request")

    def wake(self) -> None:
        try:
            os.write(self._wake_w, b"x")
        except (BlockingIOError, OSError):
            pass   # the pipe is full: the loop wakes anyway

    # ------------------------------------------------------------ runs
    def _start_due(self, now: float) -> None:
        for sched in self.schedules.values():
            if sched.running is not None:
                continue
            with self._lock:
                on_demand = sched.wanted_at is not None and sched.wanted_at <= now
                if not on_demand and sched.next_due > now:
                    continue
                if _probe_thread_alive(sched.name):
                    # Its last run was abandoned and its thread still hangs:
                    # a new one would only pile up beside it. Its result says
                    # "abandoned" until the thread has gone.
                    sched.next_due = now + min(sched.period, 10.0)
                    continue
                if on_demand:
                    sched.last_on_demand = now
                    sched.wanted_at = None
            sched.forced = on_demand
            sched.started, sched.started_wall = now, time.time()
            sched.running_why = sched.why if on_demand else ""
            sched.running = threading.Thread(target=self._run_one, args=(sched, on_demand),
                                             name=f"run-{sched.name}", daemon=True)
            sched.running.start()

    def _run_one(self, sched: _Schedule, force: bool) -> None:
        try:
            report = run_probes([sched.probe], {sched.name: sched.settings},
                                sched.timeout + OVERRUN_GRACE_SECONDS + 1, state=self.state,
                                lock_wait_seconds=LOCK_WAIT_SECONDS, force=force, condor=self.condor)
            done = _Done(sched.name, report.results[0], sched.name in report.reused, report.state_error,
                         report.duration_seconds)
        except Exception as exc:   # never lose a run: a crashed runner is a failed probe
            log.exception("running probe %s", sched.name)
            done = _Done(sched.name, failed(sched.name, f"probe run crashed: {type(exc).__name__}: {exc}"),
                         False, "", 0.0)
        self._done.put(done)
        self.wake()

    def _collect(self, now: float) -> bool:
        """Take finished runs; True if any."""
        got = False
        while True:
            try:
                done = self._done.get_nowait()
            except queue.Empty:
                return got
            got = True
            sched = self.schedules[done.name]
            if sched.running is not None:
                sched.running.join(0.5)   # it has put its result: only its return is left
            sched.running = None
            self.latest[done.name] = done.result
            suspicion = self.suspicions.get(done.name)
            if suspicion is not None and done.result.started_at >= suspicion.since - 0.5 and not done.reused:
                del self.suspicions[done.name]   # the re-check answered: its result rules
            self._watch_tested(done.result)
            self.state_error = done.state_error
            self.last_duration = done.duration
            self.runs += 1
            if done.reused:   # another process ran it a moment ago: run when that result expires
                sched.next_due = now + max(1.0, sched.period - done.result.age())
            else:
                sched.next_due = now + sched.period

    def suspect(self, found: Mapping[str, str], now_mono: float) -> bool:
        """Fence on the node's own evidence until the re-check (already
        requested by the trigger) answers. True if a new suspicion."""
        new = False
        for name, why in found.items():
            sched = self.schedules.get(name)
            if sched is None:
                continue
            if name not in self.suspicions:
                new = True
                log.info("suspect: %s: %s; refusing jobs until it has re-run", name, why)
            # Bounded: a wait for the re-check's start (the trigger's rate limit), then its run.
            self.suspicions[name] = _Suspicion(why, time.time(), now_mono + TRIGGER_MIN_SECONDS + sched.run_bound)
        return new

    def _unanswered(self, now_mono: float) -> bool:
        """An on-demand re-check (an event, a request) of a probe that answers
        within `answers_within` seconds when healthy, still running after
        that: the node refuses until it answers (a hung CVMFS repository is
        known at once, not after CVMFS_REPO_TIMEOUT). A healthy node answers
        first, so a request costs it nothing. True if a new suspicion."""
        new = False
        for sched in self.schedules.values():
            due = self._answer_due(sched)
            if due is None or now_mono < due:
                continue
            why = (f"the re-check after {sched.running_why or 'a request'} has not answered in "
                   f"{sched.probe.answers_within:g} s")
            log.info("suspect: %s: %s; refusing jobs until it answers", sched.name, why)
            self.suspicions[sched.name] = _Suspicion(why, sched.started_wall, sched.started + sched.run_bound)
            new = True
        return new

    def _answer_due(self, sched: _Schedule) -> Optional[float]:
        """When (monotonic) the on-demand run under way of a probe with
        `answers_within` is late, if it is such a run and not yet suspect."""
        within = sched.probe.answers_within
        if within <= 0 or sched.running is None or not sched.forced or sched.name in self.suspicions:
            return None
        return sched.started + within

    def _expire_suspicions(self, now_mono: float) -> bool:
        expired = [name for name, s in self.suspicions.items() if now_mono >= s.until]
        for name in expired:
            log.info("suspect: %s: no re-check answered in time; its last result rules", name)
            del self.suspicions[name]
        return bool(expired)

    def _watch_tested(self, result: ProbeResult) -> None:
        """The images the container probe launched, found in IMAGE_DIRS
        included, are watched from now on (the configured ones always are),
        and how long its launches took sets when a test of HTCondor's is slow."""
        if self.watcher is None or result.probe != "container":
            return
        images = tuple(result.facts.get("images_ok", ())) + tuple(result.facts.get("images_failed", ()))
        self.watcher.found_files("container", [p for p in images if isinstance(p, str)])
        launches = [m.value for m in result.measurements if m.name == "launch"]
        if launches:
            self.watcher.launches_take(max(launches))

    # ------------------------------------------------------------ output
    def compose(self, now: float) -> Tuple[str, str, bool]:
        """(ad, signature without the lines that change every time, verdict ok)."""
        results = []
        for sched in self.schedules.values():
            result = self.latest.get(sched.name)
            if result is None:
                result = failed(sched.name, "no result yet: the daemon's first run of this probe is under way")
            suspicion = self.suspicions.get(sched.name)
            if suspicion is not None and result.status is not Status.FAILED:
                result = replace(result, status=Status.FAILED, reason="re-checking: " + suspicion.why)
            # A result kept past its period (its run hangs, or the clock
            # jumped) is no evidence of health any more.
            results.append(stale_if_old(result, 2 * sched.period + sched.timeout, now))
        verdict = judge(results)
        report = RunReport(results + list(self.on_demand()), state_error=self.state_error,
                           duration_seconds=self.last_duration)
        text = render(report, verdict, now, ospool=self.options.ospool)
        return text, _VOLATILE.sub("", text), verdict.ok

    def publish(self, now_mono: float, changed_results: bool = True) -> None:
        """Print the ad if it changed, or if the heartbeat is due.
        changed_results=False: no new result since the last call, so only
        the heartbeat (or the first ad's deadline) can make one (an ad is
        not even composed otherwise)."""
        heartbeat_due = now_mono - self._last_emit >= self.options.heartbeat
        first_due = not self._emitted and now_mono >= self._first_ad_by
        if not (changed_results or heartbeat_due or first_due):
            return
        waiting = [s.name for s in self.schedules.values() if s.name not in self.latest]
        if not self._emitted and waiting and not first_due:
            return   # the first ad waits for the first runs (bounded by one heartbeat)
        wall = time.time()
        text, signature, _ = self.compose(wall)
        changed = signature != self._signature
        if not (changed or heartbeat_due):
            return
        if changed:   # ask for an immediate collector update (25.x honours it)
            text = text[:-2] + UPDATE_SEPARATOR
        self.write(text)
        self._signature, self._last_emit, self._emitted = signature, now_mono, True
        self.ads += 1

    def _write_textfile(self) -> None:
        from startd_health.monitor.textfile import write_textfile
        results = [self.latest[n] for n in self.schedules if n in self.latest]
        error = write_textfile(self.options.textfile_dir, results + list(self.on_demand()), judge(results))
        if error:
            self.state_error = self.state_error or error

    # ------------------------------------------------------------ loop
    def _next_wakeup(self, now: float, next_watch: float) -> float:
        times = [self._last_emit + self.options.heartbeat, next_watch]
        times.extend(s.until for s in self.suspicions.values())
        if not self._emitted:
            times.append(self._first_ad_by)
        with self._lock:
            for sched in self.schedules.values():
                due = self._answer_due(sched)
                if due is not None:
                    times.append(due)
                if sched.running is None:
                    times.append(sched.next_due)
                    if sched.wanted_at is not None:
                        times.append(sched.wanted_at)
        return max(0.0, min(times) - now)

    def run(self, stop: Optional[threading.Event] = None, out_fd: Optional[int] = 1) -> str:
        """Until stdout is closed (or stop is set): why it ended."""
        poller = select.poll()
        poller.register(self._wake_r, select.POLLIN)
        if out_fd is not None:
            # No events asked: poll still reports POLLERR/POLLHUP, which is
            # what a pipe's write end gets when the startd closes its end.
            poller.register(out_fd, 0)
        watcher = self.watcher if self.watcher is not None and not self.watcher.empty else None
        mounts_fd = watcher.mounts_fd() if watcher is not None else None
        if mounts_fd is not None:
            poller.register(mounts_fd, select.POLLPRI)   # a mount or unmount
        kmsg_fd = watcher.kmsg_fd() if watcher is not None else None
        if kmsg_fd is not None:
            poller.register(kmsg_fd, select.POLLIN)   # the kernel logged something
        periodic = watcher is not None and (watcher.periodic or mounts_fd is None)
        next_watch = time.monotonic() if watcher is not None else math.inf
        mounts_changed = True
        while stop is None or not stop.is_set():
            now = time.monotonic()
            suspected = False
            if watcher is not None and (now >= next_watch or mounts_changed):
                changed = watcher.poll(mounts_changed or mounts_fd is None)
                mounts_changed = False
                if changed:
                    log.info("event: re-run %s (%s)", " ".join(sorted(changed)),
                             self.request(sorted(changed), TRIGGER_MIN_SECONDS, "an event"))
                suspected = self.suspect(watcher.take_suspicions(), now)
                next_watch = now + self.options.watch_interval if periodic else math.inf
            got = self._collect(now)
            if got and self.options.textfile_dir:   # its last-run timestamps move with every run
                self._write_textfile()
            # Suspicions change the ad, not the results (nor the textfile).
            suspected = any([self._unanswered(now), self._expire_suspicions(now), suspected])
            self._start_due(now)
            self.publish(now, got or suspected)
            timeout = self._next_wakeup(time.monotonic(), next_watch)
            for fd, events in poller.poll(min(timeout, 3600.0) * 1000):
                if fd == self._wake_r:
                    try:
                        while os.read(self._wake_r, 4096):
                            pass
                    except (BlockingIOError, OSError):
                        pass
                elif fd == mounts_fd:
                    mounts_changed = True
                elif fd == kmsg_fd:
                    if events & (select.POLLHUP | select.POLLERR | select.POLLNVAL):
                        poller.unregister(fd)   # a pipe whose writer went away: nothing more will come
                    serious = watcher.kmsg_drain()
                    if serious:
                        log.info("event: re-run kernel (%s)", self.request(sorted(serious), TRIGGER_MIN_SECONDS,
                                                                           "an event"))
                elif events & (select.POLLERR | select.POLLHUP | select.POLLNVAL):
                    return "stdout closed"
        return "stopped"


def _write_stdout(text: str) -> None:
    data = text.encode("utf-8")
    while data:
        written = os.write(1, data)
        data = data[written:]


def _probe_thread_alive(name: str) -> bool:
    """A probe thread of core.runner (named probe-<name>) still running."""
    return any(t.name == f"probe-{name}" and t.is_alive() for t in threading.enumerate())


# ---------------------------------------------------------------- process

class DaemonLock:
    """One daemon per state directory (the startd may start a new one while
    the old one is still ending): the second one waits for the lock."""

    def __init__(self, state: StateDir) -> None:
        self.path = os.path.join(state.path, "daemon.lock")
        self.fd: Optional[int] = None

    def acquire(self, wait: float) -> bool:
        import fcntl
        try:
            self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except OSError:
            return False
        deadline = time.monotonic() + wait
        while True:
            try:
                fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return True
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    return False
                time.sleep(0.1)


COMMANDS_FILE = "daemon.commands"


def journal_commands(state: StateDir) -> List[int]:
    """Kill what a previous daemon's commands left (it was SIGKILLed: they
    lived on), then keep our own running commands in the same file. Only
    called by the daemon holding the DaemonLock. Returns the pids killed."""
    import json

    from startd_health.core.state import write_atomic
    from startd_health.system import procs

    path = os.path.join(state.path, COMMANDS_FILE)
    killed: List[int] = []
    try:
        with open(path) as handle:
            recorded = {int(k): int(v) for k, v in json.load(handle).items()}
        killed = sorted(procs.kill_recorded(recorded))
    except FileNotFoundError:
        pass
    except (OSError, ValueError, AttributeError) as exc:
        log.warning("ignoring %s: %s", path, exc)

    def record(groups: Dict[int, int]) -> None:
        write_atomic(path, json.dumps(groups).encode())

    record({})
    procs.set_journal(record)
    return killed


def log_to_file(state: StateDir, keep_stderr: bool) -> None:
    """The daemon's log: <STATE_DIR>/daemon.log, at most 2 x 1 MiB. Not
    stderr: the startd keeps a running job's whole stderr in memory. Without
    a usable state directory the log stays on stderr, cut after
    STDERR_RECORDS records."""
    import logging.handlers
    root = logging.getLogger()
    try:
        handler: logging.Handler = logging.handlers.RotatingFileHandler(
            os.path.join(state.path, "daemon.log"), maxBytes=1 << 20, backupCount=1)
    except OSError:
        for old in root.handlers:
            old.addFilter(_AtMost(STDERR_RECORDS))
        return
    handler.setFormatter(logging.Formatter("%(asctime)s %(process)d %(levelname)s %(message)s"))
    if not keep_stderr:
        for old in list(root.handlers):
            root.removeHandler(old)
    root.addHandler(handler)
    if root.level > logging.INFO:
        root.setLevel(logging.INFO)


STDERR_RECORDS = 50


class _AtMost(logging.Filter):
    def __init__(self, limit: int) -> None:
        super().__init__()
        self.left = limit

    def filter(self, record: logging.LogRecord) -> bool:
        self.left -= 1
        if self.left == 0:
            record.msg, record.args = "(no more log lines on stderr: the startd keeps them all in memory)", ()
        return self.left >= 0


def install_exit_handlers(cleanup: Callable[[], None]) -> None:
    """SIGTERM/SIGINT (the startd stops the job) and SIGHUP (its reconfig:
    it starts us again with the new configuration): kill what our probes
    still run, clean up, exit 0. Done in the handler itself, so that even a
    write blocked on a full pipe cannot keep us."""
    def handler(signum: int, frame: Any) -> None:
        from startd_health.system.procs import kill_live_groups
        try:
            kill_live_groups()
            cleanup()
            log.info("exiting on signal %d", signum)
        finally:
            os._exit(0)
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, handler)


def watcher_for(probes: Sequence[Probe], settings: Mapping[str, Mapping[str, Any]], condor: Any) -> Any:
    """What the configured probes depend on that an event can show (the
    probes' own listings, given their settings and HTCondor's configuration)."""
    from types import SimpleNamespace

    from startd_health.system.watch import StarterLogs, Watcher

    names = {p.name for p in probes}
    files: Dict[str, List[str]] = {}
    present: Dict[str, List[str]] = {}
    mounts: Dict[str, List[str]] = {}
    writable: Dict[str, List[str]] = {}
    if "cvmfs" in names:
        mounts["cvmfs"] = [settings["cvmfs"]["root"]]
    if "container" in names and settings["container"]["requirement"] != "NEVER":
        from startd_health.probes.container import images_to_test
        own = settings["container"]
        # The images the probe launches, as it lists them (named, HTCondor's
        # default image, IMAGES_DICT); those IMAGE_DIRS finds join after each run (_watch_tested).
        paths = [image.path for image in images_to_test(SimpleNamespace(settings=own, condor=condor))[0]]
        runtime = _runtime_path(own, condor)
        files["container"] = [p for p in paths + ([runtime] if runtime else []) if os.path.isabs(p)]
        if condor is not None and own.get("starter_launch", True):
            # The starter's test (and the probe's launch of the starter's
            # arguments) fails when a path SINGULARITY_EXTRA_ARGUMENTS binds is gone.
            from startd_health.system.starter_launch import extra_bind_sources
            binds = extra_bind_sources(str(condor.get("SINGULARITY_EXTRA_ARGUMENTS") or ""))
            present["container"] = [p for p in binds if os.path.isabs(p)]
        root = own.get("cvmfs_root") or "/cvmfs"
        if any(p.startswith(root.rstrip("/") + "/") for p in paths) or (own.get("cvmfs") and own.get("cvmfs_repositories")):
            mounts["container"] = [root]
    full_bytes = 0
    if "execute" in names:
        from startd_health.probes.execute import MIB, directories
        own = settings["execute"]
        dirs = [path for path, _ in directories(SimpleNamespace(settings=own, condor=condor)) if os.path.isabs(path)]
        writable["execute"] = dirs
        full_bytes = own["full_mb"] * MIB
    if "container" in names and settings["container"].get("starter_launch", True) and condor is not None:
        # The starter's launch makes its scratch directory in EXECUTE: a
        # read-only or full EXECUTE fails it too (and its reason names the launch).
        execute = (condor.get("EXECUTE") or "").strip()
        if os.path.isabs(execute):
            writable["container"] = [execute]
    kernel_log = ("kernel", settings["kernel"]["log"]) if "kernel" in names else None
    starter_logs = None
    site_images: List[str] = []
    starter_log = _starter_log(condor)
    if "container" in files and starter_log:
        starter_logs = StarterLogs(os.path.dirname(starter_log), os.path.basename(starter_log),
                                   nv_probe="gpu" if "gpu" in names else "")
        site_images = [p for p in paths if os.path.isabs(p)]
    return Watcher(files, mounts, writable, full_bytes=full_bytes, kernel_log=kernel_log, starter_logs=starter_logs,
                   site_images=site_images, present=present)


def _starter_log(condor: Any) -> str:
    """HTCondor's STARTER_LOG (each starter appends its slot's name to it),
    by default $(LOG)/StarterLog; "" when neither is an absolute path."""
    if condor is None:
        return ""
    path = (condor.get("STARTER_LOG") or "").strip()
    if not path:
        log_dir = (condor.get("LOG") or "").strip()
        path = os.path.join(log_dir, "StarterLog") if log_dir else ""
    return path if os.path.isabs(path) else ""


def _runtime_path(own: Mapping[str, Any], condor: Any) -> str:
    """The runtime file the container probe tests (watched even while it is missing)."""
    from startd_health.system.container import runtime_path
    if own.get("module") and not own.get("runtime"):
        return ""   # found by a module command: nothing fixed to watch
    return runtime_path(own.get("runtime") or "", condor.get("SINGULARITY") if condor is not None else None)


def wait_for_exit_signal(seconds: float) -> None:
    """After a configuration error: stay (printing nothing more) for a while
    before exiting, so that a startd restarting us at once does not spin."""
    end = time.monotonic() + seconds
    poller = select.poll()
    poller.register(1, 0)
    while time.monotonic() < end:
        if poller.poll(max(0.0, end - time.monotonic()) * 1000):
            return


def ensure_state(state: StateDir) -> str:
    try:
        state.ensure()
        return ""
    except StateError as exc:
        return str(exc)

