"""Re-check on demand: a Unix stream socket in the state directory through
which any local user (the pre-job hook runs as the job's user,
`startd-health check --now` as whoever types it) asks the daemon to re-run
probes now.

Protocol: the client sends ONE line, `recheck [PROBE ...]\\n` (no probe: every
probe the daemon runs); the daemon answers ONE line and closes:

- `queued PROBE ...`: a fresh run of each starts now (or is already under way
  and another follows it);
- `rate-limited PROBE=SECONDS ...[; queued PROBE ...]`: those probes ran on
  request less than STARTD_HEALTH_RECHECK_INTERVAL ago; their next run is
  queued for SECONDS from now (the probes after `; queued` start now);
- `unknown probe NAME` / `bad request: WHY`: nothing was queued.

(`request_recheck` returns None when no daemon listens.) The caller can only
ask for a probe run: nothing it sends reaches a verdict, a result or a knob.
A request is at most MAX_REQUEST_BYTES and must arrive within
REQUEST_SECONDS; the server handles one connection at a time, with a pause
between connections, and re-runs each probe on request at most once per
RECHECK_INTERVAL, so a job looping on the socket costs the node at most one
probe run per interval (and a few milliseconds of the daemon per second).
"""

from __future__ import annotations

import errno
import logging
import os
import re
import socket
import threading
import time
from typing import Any, Callable, List, Mapping, Optional, Sequence

log = logging.getLogger(__name__)

SOCKET_NAME = "recheck.sock"
MAX_REQUEST_BYTES = 512
REQUEST_SECONDS = 0.5          # a client has this long to send its line
PAUSE_SECONDS = 0.02           # between connections: at most ~50 requests/s reach the daemon
MAX_PROBES = 32
_PROBE_NAME = re.compile(r"^[a-z][a-z0-9_]{0,63}$")


def socket_path(state_dir: str) -> str:
    return os.path.join(state_dir, SOCKET_NAME)


# ---------------------------------------------------------------- protocol

class BadRequest(Exception):
    """str() is the reply line."""


def parse_request(data: bytes, known: Sequence[str]) -> List[str]:
    """The probes a request line names (all of `known` when it names none);
    BadRequest (its text is the reply) otherwise."""
    try:
        line = data.decode("ascii")
    except UnicodeDecodeError:
        raise BadRequest("bad request: not ASCII") from None
    words = line.split()
    if not words or words[0] != "recheck":
        raise BadRequest("bad request: expected 'recheck [PROBE ...]'")
    names = words[1:]
    if len(names) > MAX_PROBES:
        raise BadRequest(f"bad request: more than {MAX_PROBES} probes")
    for name in names:
        if not _PROBE_NAME.match(name) or name not in known:
            shown = name if _PROBE_NAME.match(name) else repr(name[:40])
            raise BadRequest(f"unknown probe {shown} (known: {' '.join(known)})")
    return list(dict.fromkeys(names)) if names else list(known)


def read_line(conn: socket.socket, budget: float = REQUEST_SECONDS, limit: int = MAX_REQUEST_BYTES) -> bytes:
    """One newline-terminated line of at most `limit` bytes within `budget`
    seconds (BadRequest otherwise)."""
    deadline = time.monotonic() + budget
    data = b""
    while b"\n" not in data:
        left = deadline - time.monotonic()
        if left <= 0:
            raise BadRequest(f"bad request: no complete line within {budget:g}s")
        conn.settimeout(left)
        try:
            chunk = conn.recv(limit + 1 - len(data))
        except socket.timeout:
            raise BadRequest(f"bad request: no complete line within {budget:g}s") from None
        if not chunk:
            break
        data += chunk
        if len(data) > limit and b"\n" not in data[:limit + 1]:
            raise BadRequest(f"bad request: longer than {limit} bytes")
    line, newline, _ = data.partition(b"\n")
    if not newline:
        raise BadRequest("bad request: no newline")
    return line


# ---------------------------------------------------------------- server

class RecheckServer:
    """Listens on <state_dir>/recheck.sock in a thread of its own.
    handle(probes) -> reply line: the daemon's decision (queued/rate-limited)."""

    def __init__(self, state_dir: str, known: Sequence[str], handle: Callable[[List[str]], str]) -> None:
        self.path = socket_path(state_dir)
        self.known = list(known)
        self.handle = handle
        self._sock: Optional[socket.socket] = None
        self._thread: Optional[threading.Thread] = None
        self._identity: Optional[tuple] = None   # (dev, ino) of the socket file we made

    def start(self) -> str:
        """Bind and serve; '' or why the socket cannot be used (the daemon runs on without it)."""
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            try:
                os.unlink(self.path)   # a socket left by a killed daemon (only one daemon per state dir: its lock)
            except FileNotFoundError:
                pass
            sock.bind(self.path)
            # Any local user may ask (the hook runs as the job's user); what
            # they can ask is only "run a probe", rate-limited.
            os.chmod(self.path, 0o666)
            sock.listen(16)
            st = os.stat(self.path)
            self._identity = (st.st_dev, st.st_ino)
        except OSError as exc:
            sock.close()
            return f"re-check socket {self.path}: {exc.strerror or exc}"
        self._sock = sock
        self._thread = threading.Thread(target=self._serve, name="recheck-server", daemon=True)
        self._thread.start()
        return ""

    def _serve(self) -> None:
        assert self._sock is not None
        while True:
            try:
                conn, _ = self._sock.accept()
            except OSError as exc:
                if exc.errno in (errno.EBADF, errno.EINVAL):   # closed: we are stopping
                    return
                time.sleep(PAUSE_SECONDS)
                continue
            with conn:
                self._one(conn)
            time.sleep(PAUSE_SECONDS)

    def _one(self, conn: socket.socket) -> None:
        try:
            try:
                probes = parse_request(read_line(conn), self.known)
                reply = self.handle(probes)
            except BadRequest as exc:
                reply = str(exc)
            log.info("re-check request from uid %s: %s", _peer_uid(conn), reply)
            conn.settimeout(REQUEST_SECONDS)
            conn.sendall(reply.encode("ascii", "replace")[:MAX_REQUEST_BYTES] + b"\n")
        except OSError:
            pass   # the client went away: nothing to tell it

    def close(self) -> None:
        """Stop listening and remove the socket file if it is still ours."""
        if self._sock is not None:
            try:
                self._sock.close()
            except OSError:
                pass
        try:
            st = os.stat(self.path)
            if self._identity == (st.st_dev, st.st_ino):
                os.unlink(self.path)
        except OSError:
            pass


def _peer_uid(conn: socket.socket) -> str:
    try:
        import struct
        creds = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
        return str(struct.unpack("3i", creds)[1])
    except (OSError, AttributeError, ImportError):
        return "?"


# ---------------------------------------------------------------- client

def request_recheck(state_dir: str, probes: Sequence[str] = (), timeout: float = 1.0) -> Optional[str]:
    """Ask the daemon of state_dir to re-run probes (none: all). The reply
    line (see the module doc), or None when no daemon listens or answers in
    time. Never raises; returns within `timeout` seconds."""
    deadline = time.monotonic() + max(0.0, timeout)
    try:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    except OSError:
        return None
    try:
        sock.settimeout(max(0.001, deadline - time.monotonic()))
        sock.connect(socket_path(state_dir))
        request = " ".join(["recheck", *probes]) + "\n"
        sock.sendall(request.encode("ascii", "replace"))
        data = b""
        while b"\n" not in data and len(data) <= MAX_REQUEST_BYTES:
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            sock.settimeout(left)
            chunk = sock.recv(MAX_REQUEST_BYTES + 1)
            if not chunk:
                break
            data += chunk
        line = data.partition(b"\n")[0].decode("ascii", "replace").strip()
        return line or None
    except (OSError, ValueError):
        return None
    finally:
        sock.close()


def recheck_and_wait(state: Any, probes: Sequence[str], settings: Mapping[str, Mapping[str, Any]],
                     poll_seconds: float = 0.2) -> bool:
    """`check --now`: ask the daemon of state (a core.state.StateDir) to re-run
    probes and wait, bounded, until each has a result that ended after the
    request. False when no daemon answered (the caller runs them itself);
    True otherwise, even if the wait ran out (the caller then shows the last
    results, a warning names the probes)."""
    asked = time.time()
    reply = request_recheck(state.path, probes, timeout=2.0)
    if reply is None:
        log.info("no daemon answers on %s: running the probes here", socket_path(state.path))
        return False
    if not reply.startswith(("queued", "rate-limited")):
        log.warning("the daemon answered %r: running the probes here", reply)
        return False
    # A run may have to wait for the rate limit, then takes up to its budget.
    budget = requested_seconds(reply) + max(float(settings[p]["timeout"]) for p in probes) + 10.0
    deadline = time.monotonic() + budget
    waiting = list(probes)
    while waiting and time.monotonic() < deadline:
        waiting = [p for p in waiting if not _ended_after(state.load(p), asked)]
        if waiting:
            time.sleep(poll_seconds)
    if waiting:
        log.warning("the daemon has no fresh result of %s after %.0fs: showing the last ones",
                    " ".join(waiting), budget)
    return True


def _ended_after(result: Any, moment: float) -> bool:
    return result is not None and result.started_at >= moment


def requested_seconds(reply: str) -> float:
    """The longest wait a reply announces (rate-limited PROBE=SECONDS), 0 if none."""
    waits = [float(m) for m in re.findall(r"=([0-9]+(?:\.[0-9]+)?)", reply)] if reply.startswith("rate-limited") else []
    return max(waits, default=0.0)
