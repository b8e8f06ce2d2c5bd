"""Run external commands so that they can never hang the caller.

Each command starts in its own session (so its own process group). When it
exits, anything it left in its group is killed; on timeout the whole group
gets SIGTERM, then SIGKILL after a short grace; a
child that still does not go away (uninterruptible sleep on a hung FUSE or
autofs mount cannot be killed) is abandoned: we stop waiting, close our
ends of its pipes and report the command as timed out.
"""

from __future__ import annotations

import logging
import os
import re
import signal
import subprocess
import threading
import time
from dataclasses import dataclass
from typing import Callable, Mapping, Optional, Sequence, Tuple

log = logging.getLogger(__name__)

KILL_GRACE_SECONDS = 1.0      # between SIGTERM and SIGKILL (NHC waits 1-3 s)
REAP_WAIT_SECONDS = 1.0       # after SIGKILL, before a child is abandoned
MAX_OUTPUT_BYTES = 256 * 1024  # what we keep of a command's stdout/stderr
POLL_SECONDS = 0.5            # how often a running command is checked for having exited


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


# Every process group started here and not yet finished, so that a SIGTERM to
# us (the startd's KILL) can take our children down with us.
_live_groups: set = set()
_live_lock = threading.Lock()


def kill_live_groups(sig: int = signal.SIGKILL) -> None:
    with _live_lock:
        groups = list(_live_groups)
    for pgid in groups:
        kill_group(pgid, sig)


def kill_group(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass


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
    """
    start = time.monotonic()
    try:
        proc = subprocess.Popen(
            list(argv), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            env=dict(env) if env is not None else None, cwd=cwd, start_new_session=True,
        )
    except OSError as exc:
        return CommandResult(argv, None, "", "", time.monotonic() - start, error=exc.strerror or str(exc))
    pgid = proc.pid  # start_new_session: the child leads its own group
    with _live_lock:
        _live_groups.add(pgid)
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
                    kill_group(pgid, signal.SIGKILL)
                    out, err = _collect(proc)
                    break
                if time.monotonic() >= deadline:
                    out = err = None
                    break
        if out is not None or proc.returncode is not None:
            # The group is ours alone: whatever the command left running in it
            # (a daemonised helper, a forgotten background job) goes too.
            kill_group(pgid, signal.SIGKILL)
            return CommandResult(argv, proc.returncode, _decode(out), _decode(err), time.monotonic() - start,
                                 pid=pgid)
        log.debug("timeout after %.1fs, terminating process group %d: %s", timeout, pgid, argv)
        kill_group(pgid, signal.SIGTERM)
        out = err = b""
        try:
            out, err = proc.communicate(timeout=KILL_GRACE_SECONDS)
        except subprocess.TimeoutExpired:
            kill_group(pgid, signal.SIGKILL)
            try:
                out, err = proc.communicate(timeout=REAP_WAIT_SECONDS)
            except subprocess.TimeoutExpired:
                # Uninterruptible sleep, or a grandchild that left our group
                # still holds the pipes: give up on it rather than hang.
                abandoned = proc.poll() is None
                _abandon(proc)
                log.warning("abandoned %s (pid %d) after %.1fs", argv[0], pgid, time.monotonic() - start)
                return CommandResult(argv, None, "", "", time.monotonic() - start, timed_out=True,
                                     abandoned=abandoned, pid=pgid)
        return CommandResult(argv, None, _decode(out), _decode(err), time.monotonic() - start, timed_out=True,
                             pid=pgid)
    finally:
        with _live_lock:
            _live_groups.discard(pgid)
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
