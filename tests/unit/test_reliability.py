"""Reliability of the real CLI (`python -m startd_health cron`) against the ways a
node really breaks it, with shell stand-ins for the container runtime:

- SIGKILL at random moments of a run, and at the moment a result file is
  being written (inotify on the state directory): the next run always prints
  a valid ad with the right verdict and the state stays readable;
- a runtime that hangs on `--version`, and an image whose `exec` hangs: the
  run ends within its deadline, the ad parses, the verdict is failed with the
  reason, and nothing the run started is left behind;
- a probe command that exits but leaves a background process in its process
  group: nothing is left.

(20 concurrent runs: test_concurrency.py; read-only and full state
directories: test_cli_state.py.)
"""

from __future__ import annotations

import ctypes
import json
import os
import random
import select
import signal
import struct
import subprocess
import sys
import time

import pytest

from startd_health.system.procs import run_command
from startd_health.core.state import StateDir

from .helpers import REPO, parse_cron_output, pids_alive, wait_gone

KILL_ITERATIONS = 30
IMAGES = "t=/img"

# A runtime that works: answers --version, and runs the inside script on the
# host for `exec` (what test_concurrency.py's stand-in does, minus the sleep).
WORKING_RUNTIME = """#!/bin/sh
if [ "$1" = --version ]; then echo "apptainer version 1.4.5"; exit 0; fi
while [ "$1" != /bin/sh ]; do shift; done; exec "$@"
"""


def stand_in(tmp_path, name: str, body: str) -> str:
    path = tmp_path / name
    path.write_text(body)
    path.chmod(0o755)
    return str(path)


def cron_argv(state_dir: str, runtime: str, *extra: str) -> list:
    return [sys.executable, "-m", "startd_health", "cron", "--no-condor-config", "--state-dir", state_dir,
            "--container-runtime", runtime, "--container-images", IMAGES, "--container-requirement", "REQUIRED",
            "--probes", "container", *extra]


def run_cron(argv, env, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run(argv, env=env, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL,
                          cwd=REPO)


# ---------------------------------------------------------------- SIGKILL

IN_CREATE, IN_MOVED_TO = 0x100, 0x80


class Inotify:
    """Just enough inotify (ctypes) to learn the moment a file appears in a directory."""

    def __init__(self, directory: str) -> None:
        self.libc = ctypes.CDLL(None, use_errno=True)
        self.fd = self.libc.inotify_init1(os.O_NONBLOCK | os.O_CLOEXEC)
        if self.fd < 0:
            raise OSError(ctypes.get_errno(), "inotify_init1")
        if self.libc.inotify_add_watch(self.fd, directory.encode(), IN_CREATE | IN_MOVED_TO) < 0:
            os.close(self.fd)
            raise OSError(ctypes.get_errno(), "inotify_add_watch")

    def wait_for(self, predicate, timeout: float) -> bool:
        """Wait for a created file whose name satisfies predicate."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            ready, _, _ = select.select([self.fd], [], [], max(0.0, deadline - time.monotonic()))
            if not ready:
                return False
            data = os.read(self.fd, 65536)
            offset = 0
            while offset < len(data):
                _, _, _, length = struct.unpack_from("iIII", data, offset)
                name = data[offset + 16:offset + 16 + length].rstrip(b"\0").decode(errors="replace")
                offset += 16 + length
                if predicate(name):
                    return True
        return False

    def close(self) -> None:
        os.close(self.fd)


def check_state_readable(state_dir: str) -> None:
    """Every result file is whole JSON, and loads as a result (atomic writes: never half a file)."""
    results = os.path.join(state_dir, "results")
    for name in os.listdir(results):
        if name.endswith(".json") and not name.startswith("."):
            with open(os.path.join(results, name)) as handle:
                json.load(handle)
    assert "container" in StateDir(state_dir).load_all()


@pytest.mark.slow
def test_sigkill_at_random_moments_and_mid_write_next_run_recovers(tmp_path, cli_env):
    runtime = stand_in(tmp_path, "apptainer", WORKING_RUNTIME)
    state = str(tmp_path / "state")
    results_dir = os.path.join(state, "results")
    os.makedirs(results_dir)
    argv = cron_argv(state, runtime, "--force", "--deadline", "20")
    # How long one forced run takes here, to spread the kills over it.
    t0 = time.monotonic()
    first = run_cron(argv, cli_env)
    duration = time.monotonic() - t0
    assert first.returncode == 0, first.stderr
    rng = random.Random(int(os.environ.get("STARTD_HEALTH_TEST_SEED", "7")))
    mid_write = random_moment = 0
    for iteration in range(KILL_ITERATIONS):
        watch = Inotify(results_dir)
        try:
            proc = subprocess.Popen(argv, env=cli_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                    stdin=subprocess.DEVNULL, cwd=REPO)
            if iteration % 2:
                # The moment write_atomic creates its temporary file: kill in the write.
                hit = watch.wait_for(lambda name: name.startswith(".") and name.endswith(".tmp"), 30)
                mid_write += hit
            else:
                time.sleep(rng.uniform(0.0, 1.2 * duration))
                random_moment += 1
            proc.send_signal(signal.SIGKILL)
            proc.communicate(timeout=30)
        finally:
            watch.close()
        # The next (ordinary, non-forced) run: a complete ad, the right verdict, readable state.
        after = run_cron(cron_argv(state, runtime, "--deadline", "20"), cli_env)
        assert after.returncode == 0, (iteration, after.stderr)
        assert "Traceback" not in after.stderr
        ad = parse_cron_output(after.stdout)
        assert ad["StartdHealthOk"] is True, (iteration, ad.get("StartdHealthReason"))
        assert ad["StartdHealthContainerImagesOk"] == ["t"]
        assert "StartdHealthOverlapped" not in ad, "a killed run's lock outlived it"
        assert "StartdHealthStateError" not in ad, ad.get("StartdHealthStateError")
        check_state_readable(state)
    assert mid_write >= KILL_ITERATIONS // 4, f"only {mid_write} kills landed in a result write"
    leftovers = [n for n in os.listdir(results_dir) if n.endswith(".tmp")]
    print(f"{KILL_ITERATIONS} SIGKILLs ({mid_write} at a result write, {random_moment} at random moments in "
          f"a {duration:.2f}s run); temporary files left by killed writes: {len(leftovers)}")


# ---------------------------------------------------------------- hangs

def pids_in(path) -> list:
    try:
        return [int(p) for p in path.read_text().split()]
    except FileNotFoundError:
        return []


@pytest.mark.slow
@pytest.mark.parametrize("where", ["version", "exec"])
def test_hung_runtime_run_ends_within_its_deadline(tmp_path, cli_env, where):
    """A runtime that hangs on --version, or an image whose exec hangs (and ignores SIGTERM)."""
    pids = tmp_path / "pids"
    hang = f'trap "" TERM; echo $$ >> {pids}; while :; do sleep 1; done'
    if where == "version":
        body = f'#!/bin/sh\nif [ "$1" = --version ]; then {hang}; fi\necho "apptainer version 1.4.5"\n'
    else:
        body = f'#!/bin/sh\nif [ "$1" = --version ]; then echo "apptainer version 1.4.5"; exit 0; fi\n{hang}\n'
    runtime = stand_in(tmp_path, "apptainer", body)
    deadline = 5.0
    t0 = time.monotonic()
    proc = run_cron(cron_argv(str(tmp_path / "state"), runtime, "--deadline", str(deadline)), cli_env, timeout=60)
    elapsed = time.monotonic() - t0
    assert proc.returncode == 0, proc.stderr
    # The deadline covers the whole run; interpreter start-up is the only thing outside it.
    assert elapsed < deadline + 1.5, f"run took {elapsed:.1f}s with a {deadline:g}s deadline"
    ad = parse_cron_output(proc.stdout)
    assert ad["StartdHealthOk"] is False
    assert ad["StartdHealthFailedProbes"] == ["container"]
    reason = ad["StartdHealthContainerReason"]
    assert "timed out" in reason, reason
    if where == "version":
        assert "--version" in reason, reason
    else:
        assert ad["StartdHealthContainerImagesFailed"] == ["t"]
    hung = pids_in(pids)
    assert hung, "the stand-in never ran"
    # The hung runtime and its children were killed with their process group.
    assert wait_gone(hung, 3.0) == [], f"left behind: {pids_alive(hung)}"


# ---------------------------------------------------------------- leaked children

def test_finished_command_leaves_nothing_in_its_group(tmp_path):
    """Exit 0, with a background child (output redirected) still running in the group."""
    pidfile = tmp_path / "pid"
    t0 = time.monotonic()
    result = run_command(["/bin/sh", "-c", f"sleep 300 >/dev/null 2>&1 & echo $! > {pidfile}; echo done"], timeout=10)
    assert result.ok and result.stdout == "done\n" and not result.timed_out
    assert time.monotonic() - t0 < 2.0
    assert wait_gone([int(pidfile.read_text())], 2.0) == []


def test_finished_command_whose_child_holds_its_stdout_is_not_a_timeout(tmp_path):
    """Exit 0, with a background child that inherited stdout: done when the command exits, child killed."""
    pidfile = tmp_path / "pid"
    t0 = time.monotonic()
    result = run_command(["/bin/sh", "-c", f"sleep 300 & echo $! > {pidfile}; echo done"], timeout=5)
    elapsed = time.monotonic() - t0
    leaked = int(pidfile.read_text())
    assert wait_gone([leaked], 2.0) == []
    assert result.ok and result.stdout == "done\n" and not result.timed_out, result
    assert elapsed < 2.0, elapsed


def test_runtime_that_leaves_a_daemon_behind_through_the_cli(tmp_path, cli_env):
    """The stand-in starts a background helper on every call and exits: after the run, none is left."""
    pids = tmp_path / "pids"
    body = (f'#!/bin/sh\nsleep 300 >/dev/null 2>&1 </dev/null & echo $! >> {pids}\n'
            + WORKING_RUNTIME.split("\n", 1)[1])
    runtime = stand_in(tmp_path, "apptainer", body)
    t0 = time.monotonic()
    proc = run_cron(cron_argv(str(tmp_path / "state"), runtime, "--deadline", "20"), cli_env)
    assert proc.returncode == 0, proc.stderr
    assert time.monotonic() - t0 < 10
    ad = parse_cron_output(proc.stdout)
    assert ad["StartdHealthOk"] is True, ad["StartdHealthReason"]
    leaked = pids_in(pids)
    assert len(leaked) == 2, leaked   # --version, exec
    assert wait_gone(leaked, 2.0) == [], f"left behind: {pids_alive(leaked)}"
