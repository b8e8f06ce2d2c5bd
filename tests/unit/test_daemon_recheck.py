"""The re-check socket (monitor/recheck.py): its protocol against a real
daemon subprocess, hostile input, and a client that never blocks."""

from __future__ import annotations

import os
import pathlib
import shutil
import socket
import stat
import subprocess
import sys
import tempfile
import time

import pytest

from startd_health.monitor.recheck import (BadRequest, RecheckServer, parse_request, request_recheck,
                                           requested_seconds, socket_path)

from .helpers import PACKAGE_PARENT
from .test_daemon import DaemonProc


@pytest.fixture
def running(tmp_path):
    d = DaemonProc(tmp_path, "--recheck-interval", "30", probes="container,userns")
    d.next_ad(timeout=20)
    yield d
    d.stop()


def _raw(path: str, data: bytes, wait: float = 2.0) -> bytes:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(wait)
        sock.connect(path)
        try:
            sock.sendall(data)
        except OSError:
            pass   # the server may cut a huge request off before reading it all
        reply = b""
        try:
            while not reply.endswith(b"\n"):
                chunk = sock.recv(1024)
                if not chunk:
                    break
                reply += chunk
        except ConnectionResetError:
            pass
        return reply


@pytest.mark.slow
def test_protocol_queued_then_rate_limited_then_unknown(running):
    state = running.state
    mode = stat.S_IMODE(os.stat(socket_path(state)).st_mode)
    assert mode == 0o666, oct(mode)   # any local user (the hook runs as the job's user)
    assert request_recheck(state, ["container"]) == "queued container"
    reply = request_recheck(state, ["container", "userns"])
    # container ran on request a moment ago: its next run waits for the interval (30 s).
    assert reply.startswith("rate-limited container=") and reply.endswith("; queued userns"), reply
    assert 25 <= requested_seconds(reply) <= 30
    assert request_recheck(state, ["nosuch"]).startswith("unknown probe nosuch")
    assert request_recheck(state).startswith("rate-limited")   # no probe named: all of them


@pytest.mark.slow
def test_garbage_is_refused_with_one_line_and_the_daemon_lives_on(running):
    path = socket_path(running.state)
    assert _raw(path, b"\xff\xfe recheck\n").startswith(b"bad request: not ASCII")
    assert _raw(path, b"set verdict healthy\n").startswith(b"bad request: expected 'recheck")
    assert _raw(path, b"recheck " + b"x" * 100000 + b"\n").startswith(b"bad request: longer than")
    assert _raw(path, b"recheck container").startswith(b"bad request: no complete line within")
    assert _raw(path, b"recheck ../../etc\n").startswith(b"unknown probe '../../etc'")
    assert _raw(path, b"recheck " + b"userns " * 40 + b"\n").startswith(b"bad request: more than 32")
    # A client that connects and says nothing costs the server its budget, then it serves the next one.
    silent = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    silent.connect(path)
    t0 = time.monotonic()
    assert request_recheck(running.state, ["userns"], timeout=3.0) == "queued userns"
    assert time.monotonic() - t0 < 1.5
    silent.close()
    assert running.proc.poll() is None
    running.next_ad(timeout=5)   # still streaming


def test_the_client_says_none_without_a_daemon_and_never_blocks(tmp_path):
    assert request_recheck(str(tmp_path)) is None                 # no socket
    assert request_recheck(str(tmp_path / "missing" / "dir")) is None
    # A socket that accepts (the kernel's backlog) but never answers: None within the timeout.
    mute = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    mute.bind(socket_path(str(tmp_path)))
    mute.listen(1)
    t0 = time.monotonic()
    assert request_recheck(str(tmp_path), ["container"], timeout=0.3) is None
    assert time.monotonic() - t0 < 0.6
    mute.close()
    # A stale socket file (a daemon killed by SIGKILL): refused at once.
    assert request_recheck(str(tmp_path), timeout=1.0) is None


def test_parse_request():
    known = ["container", "cvmfs"]
    assert parse_request(b"recheck", known) == known
    assert parse_request(b"recheck cvmfs cvmfs", known) == ["cvmfs"]
    for bad, why in ((b"", "expected"), (b"RECHECK cvmfs", "expected"), (b"recheck gpu", "unknown probe gpu"),
                     (b"recheck \xc3\xa9", "not ASCII")):
        with pytest.raises(BadRequest, match=why):
            parse_request(bad, known)


def test_a_new_server_replaces_a_stale_socket_and_removes_only_its_own(tmp_path):
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(socket_path(str(tmp_path)))
    stale.close()
    server = RecheckServer(str(tmp_path), ["container"], lambda probes: "queued " + " ".join(probes))
    assert server.start() == ""
    assert request_recheck(str(tmp_path), ["container"]) == "queued container"
    # Another daemon took the path over meanwhile: closing must not remove its socket.
    os.unlink(socket_path(str(tmp_path)))
    other = RecheckServer(str(tmp_path), ["container"], lambda probes: "other")
    assert other.start() == ""
    server.close()
    assert request_recheck(str(tmp_path), ["container"]) == "other"
    other.close()
    assert not os.path.exists(socket_path(str(tmp_path)))


def test_a_socket_path_too_long_is_a_warning_not_a_crash(tmp_path):
    deep = tmp_path / ("d" * 120)
    deep.mkdir()
    server = RecheckServer(str(deep), ["container"], lambda probes: "")
    assert "re-check socket" in server.start()
    assert request_recheck(str(deep)) is None


@pytest.mark.slow
@pytest.mark.root
def test_another_user_can_ask(tmp_path):
    """The pre-job hook runs as the job's user: uid 65534 may connect to a
    daemon running as root in a state directory of mode 0755 (searchable)."""
    base = tempfile.mkdtemp(prefix="recheck-", dir="/tmp")
    os.chmod(base, 0o755)
    try:
        d = DaemonProc(pathlib.Path(base), probes="container,userns")
        d.next_ad(timeout=20)
        code = ("from startd_health.monitor.recheck import request_recheck as r; "
                f"print(r({d.state!r}, ['userns']))")
        python = "/usr/bin/python3" if os.path.exists("/usr/bin/python3") else sys.executable
        proc = subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", python, "-c", code],
                              cwd="/", env={"PATH": "/usr/bin:/bin", "PYTHONPATH": PACKAGE_PARENT},
                              capture_output=True, text=True, timeout=30)
        d.stop()
        assert proc.stdout.strip() == "queued userns", proc.stderr
    finally:
        shutil.rmtree(base, ignore_errors=True)
