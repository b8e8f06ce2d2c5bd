"""Run external commands so that they can never hang the caller, and leave nothing behind.

Each command starts in its own session (so its own process group). Its
"family" is everything it started: whatever is still in its session or
process group, every descendant of those (whatever mount, user or pid
namespace it entered: kill() does not care), and, while we are a child
subreaper (see reaping()), every process re-parented to us since it started
(a helper that daemonised itself with setsid and a double fork, such as a
FUSE server a container runtime left behind). When the command exits, its
family is killed; on timeout the family gets SIGTERM, then SIGKILL after a
short grace. A process that still does not go away (uninterruptible sleep
on a hung FUSE or autofs mount cannot be killed) is abandoned: we stop
waiting, close our ends of its pipes, and name it in the result
(left_behind), so that the caller can avoid starting another one into the
same trap (system/stuck.py).

No cgroup is used: where the cron job runs (the startd's cgroup, as the
condor user) none is writable, and the process tree reaches the same processes.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from typing import Callable, Dict, Iterable, Iterator, List, Mapping, Optional, Sequence, Set, Tuple

from startd_health.system import procfs

log = logging.getLogger(__name__)

KILL_GRACE_SECONDS = 1.0      # between SIGTERM and SIGKILL (NHC waits 1-3 s)
REAP_WAIT_SECONDS = 1.0       # after SIGKILL, before a child is abandoned
MAX_OUTPUT_BYTES = 256 * 1024  # what we keep of a command's stdout/stderr
POLL_SECONDS = 0.5            # how often a running command is checked for having exited
GONE_POLL_SECONDS = 0.02      # how often killed processes are checked for having gone


@dataclass(frozen=True)
class CommandResult:
    argv: Sequence[str]
    returncode: Optional[int]   # None when the command timed out or could not start
    stdout: str
    stderr: str
    duration_seconds: float
    timed_out: bool = False
    abandoned: bool = False     # still alive after SIGKILL: left behind
    error: str = ""             # why it could not start (e.g. not found)
    pid: Optional[int] = None   # also the process group id (own session)
    # pids of the command's family still alive after SIGKILL (uninterruptible
    # sleep): the command itself when abandoned, and whatever else it left
    left_behind: Tuple[int, ...] = ()

    @property
    def ok(self) -> bool:
        return self.returncode == 0

    def describe_failure(self) -> str:
        """One line saying why the command did not succeed."""
        name = os.path.basename(self.argv[0]) if self.argv else "command"
        if self.error:
            return f"{name}: {self.error}"
        if self.timed_out:
            what = "timed out" + (" (unkillable, abandoned)" if self.abandoned else "")
            return f"{name} {what} after {self.duration_seconds:.1f}s"
        detail = last_line(self.stderr) or last_line(self.stdout)
        code = (f"killed by signal {-self.returncode}" if self.returncode is not None and self.returncode < 0
                else f"exit {self.returncode}")
        return f"{name} {code}" + (f": {detail}" if detail else "")


_ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


def last_line(text: str) -> str:
    """The last line that says something (Apptainer colours its messages and
    may end with a bare colour reset, which must not hide the real error)."""
    for line in reversed(text.strip().splitlines()):
        line = _ANSI.sub("", line).strip()
        if line:
            return line
    return ""


def _decode(data: Optional[bytes]) -> str:
    if not data:
        return ""
    return data[:MAX_OUTPUT_BYTES].decode("utf-8", errors="backslashreplace")


# ---------------------------------------------------------------- the process tree

# One reader of /proc/<pid>/stat for the whole package (system/procfs.py).
# Only stat is read: unlike cmdline, environ or maps, it takes no lock that a
# process stuck on a mount may hold, so reading it never blocks.
ProcessInfo = procfs.ProcessStat
process_info = procfs.read_stat


def now_ticks() -> int:
    """Now, on the clock of ProcessInfo.start_ticks (less one tick, so that a
    process started in this tick counts as started after it)."""
    try:
        with open("/proc/uptime") as handle:
            return max(0, int(float(handle.read().split()[0]) * os.sysconf("SC_CLK_TCK")) - 1)
    except (OSError, ValueError, IndexError):
        return 0


def process_table() -> Dict[int, ProcessInfo]:
    """Every process this pid namespace shows (~3 ms for 100 processes)."""
    table: Dict[int, ProcessInfo] = {}
    try:
        entries = os.listdir("/proc")
    except OSError:
        return table
    for entry in entries:
        if entry.isdigit():
            info = process_info(int(entry))
            if info is not None:
                table[info.pid] = info
    return table


def descendants(table: Mapping[int, ProcessInfo], roots: Iterable[int]) -> Set[int]:
    """The roots' descendants (not the roots themselves), by parent links."""
    children: Dict[int, List[int]] = {}
    for info in table.values():
        children.setdefault(info.ppid, []).append(info.pid)
    found: Set[int] = set()
    todo = list(roots)
    while todo:
        for child in children.get(todo.pop(), ()):
            if child not in found:
                found.add(child)
                todo.append(child)
    return found


# ---------------------------------------------------------------- child subreaper

PR_SET_CHILD_SUBREAPER = 36
_subreaper_users = 0
_subreaper_since = 0          # clock ticks since boot when the outermost reaping() began
_subreaper_lock = threading.Lock()
_libc = None


def _set_subreaper(on: bool) -> bool:
    """prctl(PR_SET_CHILD_SUBREAPER): orphans of our descendants are
    re-parented to us instead of to init. Linux >= 3.4; False elsewhere."""
    global _libc
    if not sys.platform.startswith("linux"):
        return False
    try:
        if _libc is None:
            import ctypes   # lazily: only where commands are run
            _libc = ctypes.CDLL(None, use_errno=True)
        return _libc.prctl(PR_SET_CHILD_SUBREAPER, 1 if on else 0, 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


@contextlib.contextmanager
def reaping() -> Iterator[None]:
    """Within: we are a child subreaper, so that a helper a command
    daemonised (setsid + double fork) re-parents to us and is killed with the
    command's family instead of living on under init. Leaving the outermost
    reaping() kills whatever was re-parented to us meanwhile and is still
    there (reap_orphans), then turns the subreaper off again: a process that
    is a subreaper for good (e.g. a test runner) would collect the zombies of
    daemons it starts later (condor_master forks into the background) and
    could never tell that they had exited."""
    global _subreaper_users, _subreaper_since
    with _subreaper_lock:
        _subreaper_users += 1
        if _subreaper_users == 1:
            _subreaper_since = now_ticks()
            _set_subreaper(True)
    try:
        yield
    finally:
        with _subreaper_lock:
            _subreaper_users -= 1
            last = _subreaper_users == 0
        if last:
            reap_orphans(_subreaper_since)
            with _subreaper_lock:
                if _subreaper_users == 0:
                    _set_subreaper(False)


# ---------------------------------------------------------------- families

# Every command started here and not yet finished (process group id -> its
# start ticks), so that a SIGTERM to us (the startd's KILL) can take our
# children down with us, and so that one command's cleanup never takes
# another's processes.
_live_groups: Dict[int, int] = {}
_live_lock = threading.Lock()
_spawning = 0                 # Popen calls under way: their children are not registered yet
_unreaped: Set[int] = set()   # killed orphans of ours not yet reaped (unkillable so far)
# Processes some command left behind, unkillable: already accounted for (in
# that command's left_behind), never to be taken for another command's.
_abandoned: Set[int] = set()


def kill_group(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def _signal(pids: Iterable[int], sig: int) -> None:
    me = os.getpid()
    for pid in pids:
        if pid > 1 and pid != me:
            try:
                os.kill(pid, sig)
            except (ProcessLookupError, PermissionError):
                pass


def _orphans(table: Mapping[int, ProcessInfo], since_ticks: int, live: Mapping[int, int]) -> Set[int]:
    """Processes re-parented to us (we are their parent, but not as a
    command we started and still run) that started at or after since_ticks
    and cannot be a running command's: in no running command's session or
    group, and older than every running command (an orphan nothing tells
    apart from a helper a running command daemonised and still uses, such as
    the sessions probe's escapees, is left to that command's end, or to the
    end of the run)."""
    me, own_group = os.getpid(), os.getpgrp()
    oldest_running = min(live.values(), default=None)
    # Not in our own group: a child some other code of ours started without
    # a session of its own; a helper that stayed in a command's group is
    # found by that group.
    return {p.pid for p in table.values()
            if p.ppid == me and p.pid not in live and p.session not in live and p.pgrp not in live
            and p.pgrp != own_group and p.start_ticks >= since_ticks
            and (oldest_running is None or p.start_ticks < oldest_running)}


def family(leader: int, since_ticks: int, table: Optional[Mapping[int, ProcessInfo]] = None) -> Set[int]:
    """The command's processes: the leader, whatever is in its session or
    process group, processes re-parented to us since it started (when no
    other command is being started: its child would look the same), and
    every descendant of these."""
    table = process_table() if table is None else table
    with _live_lock:
        live = {pgid: ticks for pgid, ticks in _live_groups.items() if pgid != leader}
        spawning = _spawning
    roots = {p.pid for p in table.values() if leader in (p.pid, p.session, p.pgrp)}
    if not spawning:
        roots |= _orphans(table, since_ticks, live)
    found = roots | descendants(table, roots)
    me = os.getpid()
    with _live_lock:
        _abandoned.intersection_update(table)   # those that have gone
        taken = set(_abandoned)
    return {pid for pid in found if pid != me and pid not in live and (pid not in taken or leader in
                                                                        (pid, table[pid].session, table[pid].pgrp))}


def kill_command(pgid: int, sig: int = signal.SIGKILL) -> None:
    """Signal a running command's whole family (see family())."""
    with _live_lock:
        since = _live_groups.get(pgid)
    if since is None:
        kill_group(pgid, sig)
    else:
        _signal(family(pgid, since), sig)


# A long-lived process (the daemon) keeps the running commands on disk too:
# killed by SIGKILL it cannot end them, but the next one can (kill_recorded).
_journal: Optional[Callable[[Dict[int, int]], None]] = None
_journal_lock = threading.Lock()


def set_journal(callback: Optional[Callable[[Dict[int, int]], None]]) -> None:
    """callback(process group id -> start ticks of every running command),
    called whenever a command starts or ends."""
    global _journal
    _journal = callback


def _write_journal() -> None:
    callback = _journal
    if callback is None:
        return
    with _journal_lock:   # in order: a late writer must not put back a group that has ended
        with _live_lock:
            snapshot = dict(_live_groups)
        try:
            callback(snapshot)
        except Exception:   # the journal is a help for the next start, never a reason to fail a command
            log.debug("command journal", exc_info=True)


def kill_recorded(groups: Mapping[int, int]) -> Set[int]:
    """SIGKILL what is left of commands a killed process recorded (process
    group id -> the leader's start ticks): their sessions and groups and
    everything below. A leader pid now used by another process means that
    command is long gone (Linux reuses no pid still naming a session or
    group). Returns the pids signalled."""
    table = process_table()
    victims: Set[int] = set()
    for pgid, ticks in groups.items():
        leader = table.get(pgid)
        if leader is not None and leader.start_ticks != ticks:
            continue
        victims |= {p.pid for p in table.values() if pgid in (p.pid, p.session, p.pgrp)}
    victims |= descendants(table, victims)
    _signal(victims, signal.SIGKILL)
    return victims


def kill_live_groups(sig: int = signal.SIGKILL) -> None:
    """Every command still running and everything it started (we are going away)."""
    with _live_lock:
        groups = list(_live_groups)
    table = process_table()
    victims: Set[int] = set()
    for pgid in groups:
        kill_group(pgid, sig)
        victims |= {p.pid for p in table.values() if pgid in (p.pid, p.session, p.pgrp)}
    victims |= descendants(table, victims)
    _signal(victims, sig)


def _reap(pids: Iterable[int]) -> None:
    """Collect the exit status of orphans re-parented to us, so that no
    zombie stays (Popen reaps the commands themselves)."""
    for pid in pids:
        try:
            done, _ = os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:   # not (or no longer) our child
            done = pid
        if done:
            _unreaped.discard(pid)
        else:
            _unreaped.add(pid)


def _our_children() -> Optional[Set[int]]:
    """Our children, from /proc/self/task/*/children (each thread's own:
    a child belongs to the thread that forked it); None where the kernel
    does not offer these files."""
    children: Set[int] = set()
    try:
        tids = os.listdir("/proc/self/task")
    except OSError:
        return None
    for tid in tids:
        try:
            with open(f"/proc/self/task/{tid}/children") as handle:
                children.update(int(pid) for pid in handle.read().split())
        except FileNotFoundError:   # the thread has just ended
            continue
        except (OSError, ValueError):
            return None
    return children


def _nothing_left(leader: Optional[int]) -> bool:
    """The cheap common case, without reading the whole process table:
    nothing is left in the command's group, and no child of ours but
    running commands (whatever else the command left would have been
    re-parented to us, or still be in its group, or below one of these)."""
    if leader is not None:
        try:
            os.killpg(leader, 0)
            return False
        except ProcessLookupError:
            pass
        except PermissionError:
            return False
    children = _our_children()
    if children is None:
        return False
    with _live_lock:
        others = children - set(_live_groups) - _abandoned
    return not others


def _end_family(leader: int, since_ticks: int, wait: float) -> Tuple[int, ...]:
    """SIGKILL what is left of the command's family; wait up to `wait` for it
    to go; reap the orphans among it. Returns the pids still alive then."""
    if _nothing_left(leader):
        return ()
    victims = family(leader, since_ticks)
    me = os.getpid()
    if victims:
        _signal(victims, signal.SIGKILL)
        log.debug("killed %d leftover process(es) of command %d: %s", len(victims), leader, sorted(victims))
    deadline = time.monotonic() + wait
    alive = sorted(victims)
    while True:
        infos = {pid: process_info(pid) for pid in alive}
        _reap(pid for pid, info in infos.items() if info is not None and info.ppid == me and pid != leader)
        alive = [pid for pid, info in infos.items() if info is not None and info.state not in ("Z", "X")]
        if not alive or time.monotonic() >= deadline:
            break
        time.sleep(GONE_POLL_SECONDS)
    if _unreaped:
        _reap(list(_unreaped))
    if alive:
        log.warning("command %d left %d unkillable process(es): %s", leader, len(alive), alive)
        with _live_lock:
            _abandoned.update(alive)
    return tuple(alive)


def reap_orphans(since_ticks: int = 0) -> Tuple[int, ...]:
    """Kill and reap every process re-parented to us since since_ticks (and
    its descendants) that belongs to no running command; the pids still
    alive after that."""
    if _nothing_left(None):
        return ()
    table = process_table()
    with _live_lock:
        live = dict(_live_groups)
        spawning = _spawning
    if spawning:   # a command being started would look like an orphan: the next sweep takes them
        return ()
    victims = _orphans(table, since_ticks, live)
    victims |= descendants(table, victims)
    victims.discard(os.getpid())
    _signal(victims, signal.SIGKILL)
    time.sleep(GONE_POLL_SECONDS if victims else 0)
    _reap(victims | _unreaped)
    return tuple(sorted(pid for pid in victims if procfs.start_ticks(pid) is not None))


def run_command(
    argv: Sequence[str],
    timeout: float,
    env: Optional[Mapping[str, str]] = None,
    cwd: Optional[str] = None,
    on_start: Optional[Callable[[int], None]] = None,
    on_end: Optional[Callable[[int], None]] = None,
) -> CommandResult:
    """Run argv with stdin from /dev/null; never blocks much longer than timeout.

    on_start/on_end receive the process group id, so that a supervisor (the
    runner) can kill the group if the calling thread itself is abandoned.
    When it returns, nothing the command started is left but what could not
    be killed (CommandResult.left_behind).
    """
    with reaping():
        return _run_command(argv, timeout, env, cwd, on_start, on_end)


def _run_command(argv: Sequence[str], timeout: float, env: Optional[Mapping[str, str]], cwd: Optional[str],
                 on_start: Optional[Callable[[int], None]], on_end: Optional[Callable[[int], None]]) -> CommandResult:
    global _spawning
    start = time.monotonic()
    with _live_lock:
        _spawning += 1
    try:
        proc = subprocess.Popen(
            list(argv), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            env=dict(env) if env is not None else None, cwd=cwd, start_new_session=True,
        )
    except OSError as exc:
        with _live_lock:
            _spawning -= 1
        return CommandResult(argv, None, "", "", time.monotonic() - start, error=exc.strerror or str(exc))
    pgid = proc.pid  # start_new_session: the child leads its own group
    # What the command starts is not older than the command (at the clock's
    # resolution, 10 ms: a helper another command orphaned within the same
    # tick would be taken for this command's).
    since = procfs.start_ticks(pgid) or now_ticks()
    with _live_lock:
        _live_groups[pgid] = since
        _spawning -= 1
    _write_journal()
    if on_start:
        on_start(pgid)
    try:
        deadline = start + max(0.0, timeout)
        while True:
            try:
                # In slices: a command can exit while a child it left behind
                # still holds its pipes open, and EOF would then never come.
                out, err = proc.communicate(timeout=max(0.0, min(POLL_SECONDS, deadline - time.monotonic())))
                break
            except subprocess.TimeoutExpired:
                if proc.poll() is not None:   # the command itself is done: the rest is leftovers
                    _signal(family(pgid, since), signal.SIGKILL)
                    out, err = _collect(proc)
                    break
                if time.monotonic() >= deadline:
                    out = err = None
                    break
        if out is not None or proc.returncode is not None:
            # Whatever the command left running (a daemonised helper, a
            # forgotten background job, a FUSE server in a namespace of its own) goes too.
            left = _end_family(pgid, since, REAP_WAIT_SECONDS)
            return CommandResult(argv, proc.returncode, _decode(out), _decode(err), time.monotonic() - start,
                                 pid=pgid, abandoned=bool(left), left_behind=left)
        log.debug("timeout after %.1fs, terminating command %d and what it started: %s", timeout, pgid, argv)
        _signal(family(pgid, since), signal.SIGTERM)
        out = err = b""
        try:
            out, err = proc.communicate(timeout=KILL_GRACE_SECONDS)
        except subprocess.TimeoutExpired:
            _signal(family(pgid, since), signal.SIGKILL)
            try:
                out, err = proc.communicate(timeout=REAP_WAIT_SECONDS)
            except subprocess.TimeoutExpired:
                # Uninterruptible sleep, or a process that left our group
                # still holds the pipes: give up on it rather than hang.
                abandoned = proc.poll() is None
                _abandon(proc)
                left = _end_family(pgid, since, GONE_POLL_SECONDS)
                log.warning("abandoned %s (pid %d) after %.1fs", argv[0], pgid, time.monotonic() - start)
                return CommandResult(argv, None, "", "", time.monotonic() - start, timed_out=True,
                                     abandoned=abandoned or bool(left), pid=pgid, left_behind=left)
        left = _end_family(pgid, since, REAP_WAIT_SECONDS)
        return CommandResult(argv, None, _decode(out), _decode(err), time.monotonic() - start, timed_out=True,
                             pid=pgid, abandoned=bool(left), left_behind=left)
    finally:
        with _live_lock:
            _live_groups.pop(pgid, None)
        _write_journal()
        if on_end:
            on_end(pgid)


def _collect(proc: subprocess.Popen) -> Tuple[bytes, bytes]:
    """What an exited command wrote, without waiting on pipes that a child
    (killed, but maybe unkillable) may still hold."""
    try:
        return proc.communicate(timeout=REAP_WAIT_SECONDS)
    except subprocess.TimeoutExpired:
        _abandon(proc)
        return b"", b""


def _abandon(proc: subprocess.Popen) -> None:
    """Close our pipe ends and reap the child in the background if it ever exits."""
    for stream in (proc.stdout, proc.stderr):
        try:
            if stream:
                stream.close()
        except OSError:
            pass
    threading.Thread(target=_reap_quietly, args=(proc,), daemon=True, name=f"reap-{proc.pid}").start()


def _reap_quietly(proc: subprocess.Popen) -> None:
    try:
        proc.wait()
    except Exception:  # pragma: no cover - the process is gone either way
        pass
