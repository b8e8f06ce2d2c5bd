"""run_command against real processes: groups, double forks, escapes, daemons, hangs."""

import os
import sys
import threading
import time

from startd_health.system import procs
from startd_health.system.procs import process_info, run_command
from tests import cvmfs_sim as sim

from .helpers import pids_alive, wait_gone


def test_success_and_output():
    result = run_command(["/bin/sh", "-c", "echo out; echo err >&2; exit 3"], timeout=5)
    assert result.returncode == 3 and result.stdout == "out\n" and result.stderr == "err\n"
    assert result.describe_failure() == "sh exit 3: err"


def test_missing_command_is_reported_not_raised():
    result = run_command(["/nonexistent/apptainer", "--version"], timeout=5)
    assert result.returncode is None and "No such file" in result.error
    assert result.describe_failure().startswith("apptainer: No such file")


def test_timeout_kills_whole_group_including_grandchildren(tmp_path):
    pidfile = tmp_path / "pids"
    # A child that ignores SIGTERM and a double-forked grandchild: both must die.
    script = f"""
        trap '' TERM
        ( ( trap '' TERM; sleep 300 ) & echo $! >> {pidfile} ) 
        sleep 300 & echo $! >> {pidfile}
        wait
    """
    t0 = time.monotonic()
    result = run_command(["/bin/sh", "-c", script], timeout=0.5)
    elapsed = time.monotonic() - t0
    assert result.timed_out and result.returncode is None
    assert elapsed < 0.5 + 1.0 + 1.0 + 0.5, elapsed  # timeout + TERM grace + reap wait
    pids = [int(p) for p in pidfile.read_text().split()]
    assert len(pids) == 2 and wait_gone(pids) == []


def test_escaped_grandchild_holding_the_pipe_is_abandoned_not_waited_for(tmp_path):
    pidfile = tmp_path / "pid"
    # setsid: the grandchild leaves our process group (as a job escaping the
    # batch system's kill would) and keeps stdout open.
    script = f"setsid sleep 30 & echo $! > {pidfile}; sleep 300"
    t0 = time.monotonic()
    result = run_command(["/bin/sh", "-c", script], timeout=0.5)
    assert result.timed_out and time.monotonic() - t0 < 4.0
    assert wait_gone([int(pidfile.read_text())], timeout=0) == []   # and it went with the rest


def test_live_group_registry_is_cleared():
    from startd_health.system import procs
    run_command(["/bin/true"], timeout=5)
    assert not procs._live_groups


def test_children_left_behind_by_a_finished_command_are_killed(tmp_path):
    pidfile = tmp_path / "pid"
    result = run_command(["/bin/sh", "-c", f"sleep 300 >/dev/null 2>&1 & echo $! > {pidfile}; echo done"], timeout=5)
    assert result.ok and result.stdout == "done\n"
    assert wait_gone([int(pidfile.read_text())]) == []


def test_a_command_that_exited_is_done_even_if_a_child_holds_its_stdout(tmp_path):
    pidfile = tmp_path / "pid"
    t0 = time.monotonic()
    result = run_command(["/bin/sh", "-c", f"sleep 300 & echo $! > {pidfile}; echo done"], timeout=20)
    assert result.ok and not result.timed_out and result.stdout == "done\n"
    assert time.monotonic() - t0 < 2.0  # noticed within a poll slice, not after the 20 s timeout
    assert wait_gone([int(pidfile.read_text())]) == []


def test_colour_codes_do_not_hide_the_error():
    result = run_command(["/bin/sh", "-c", r"printf '\033[31mFATAL:\033[0m Failed to create user namespace\n\033[0m\n' >&2;"
                                           " exit 1"], timeout=5)
    assert result.describe_failure() == "sh exit 1: FATAL: Failed to create user namespace"


# ---------------------------------------------------------------- leftovers: the whole family goes

# A daemon as daemons make themselves: fork, setsid (a session and group of
# its own: a process-group kill does not reach it), fork again, the middle
# exits, stdio away from the caller's pipes. The command prints the daemon's
# pid and its parent once the daemon has been re-parented, then exits.
DAEMONIZE = r"""
import os, sys, time
r, w = os.pipe()
if os.fork() == 0:
    os.setsid()
    middle = os.getpid()
    if os.fork() == 0:
        null = os.open(os.devnull, os.O_RDWR)
        for fd in (0, 1, 2):
            os.dup2(null, fd)
        while os.getppid() == middle:
            time.sleep(0.005)
        os.write(w, b"%d %d" % (os.getpid(), os.getppid()))
        time.sleep(float(sys.argv[1]))
        os._exit(0)
    os._exit(0)
os.close(w)
print(os.read(r, 100).decode())
time.sleep(float(sys.argv[2]))
"""


def gone_and_reaped(pid):
    """Not alive, and not a zombie of ours either."""
    return pids_alive([pid]) == [] and not os.path.exists(f"/proc/{pid}/stat")


def test_a_daemonised_helper_is_reparented_to_us_and_killed_when_the_command_ends():
    result = run_command([sys.executable, "-I", "-S", "-c", DAEMONIZE, "300", "0"], timeout=10)
    assert result.ok and not result.left_behind, result
    daemon, new_parent = map(int, result.stdout.split())
    assert new_parent == os.getpid()    # we are a subreaper while a command runs: it came to us, not to init
    assert gone_and_reaped(daemon)      # killed and reaped before run_command returned


def test_a_child_that_setsids_and_outlives_the_command_is_killed(tmp_path):
    code = ("import os, time\n"
            "pid = os.fork()\n"
            "if pid == 0:\n"
            "    os.setsid(); null = os.open(os.devnull, os.O_RDWR)\n"
            "    [os.dup2(null, fd) for fd in (0, 1, 2)]\n"
            "    time.sleep(300); os._exit(0)\n"
            "print(pid)\n")
    result = run_command([sys.executable, "-I", "-S", "-c", code], timeout=10)
    assert result.ok
    assert gone_and_reaped(int(result.stdout))


def test_another_running_commands_daemon_is_left_alone_until_that_command_ends(tmp_path):
    """Two commands at once (the runner runs probes in parallel): one
    ending must not kill what the other started and still uses."""
    box = {}
    long = threading.Thread(target=lambda: box.setdefault(
        "r", run_command([sys.executable, "-I", "-S", "-c", DAEMONIZE, "300", "1.5"], timeout=10)))
    long.start()
    daemon = find_daemon()
    assert daemon is not None
    time.sleep(0.05)   # a later clock tick than the daemon's start (10 ms resolution)
    assert run_command(["/bin/true"], timeout=5).ok
    assert pids_alive([daemon]) == [daemon]     # the other command's helper lives on
    long.join(10)
    assert box["r"].ok and gone_and_reaped(daemon)


def find_daemon(timeout=5.0):
    """Our child that leads no group of its own: not a command (each leads
    its group) but a daemon re-parented to us."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for pid in sim.children_of(os.getpid()):
            info = process_info(pid)
            if info is not None and info.pgrp != pid:
                return pid
        time.sleep(0.02)
    return None


def test_a_daemon_started_while_another_command_runs_is_left_to_its_own_command():
    """The other way round (the sessions probe's escapees while a launch
    runs): a command that ends must not take a helper that another, still
    running command daemonised after the first one had started."""
    box = {}
    short = threading.Thread(target=lambda: box.setdefault("short", run_command(["sleep", "0.7"], timeout=5)))
    short.start()
    time.sleep(0.05)
    long = threading.Thread(target=lambda: box.setdefault(
        "long", run_command([sys.executable, "-I", "-S", "-c", DAEMONIZE, "300", "2"], timeout=10)))
    long.start()
    daemon = find_daemon()
    assert daemon is not None
    short.join(5)
    assert box["short"].ok and "long" not in box
    assert pids_alive([daemon]) == [daemon]     # the short command ended; the long one's helper lives on
    long.join(10)
    assert box["long"].ok and gone_and_reaped(daemon)


def test_subreaper_only_while_commands_run():
    import ctypes
    libc = ctypes.CDLL(None, use_errno=True)

    def subreaper():
        value = ctypes.c_int(-1)
        assert libc.prctl(37, ctypes.byref(value), 0, 0, 0) == 0   # PR_GET_CHILD_SUBREAPER
        return value.value

    assert subreaper() == 0
    with procs.reaping():
        assert subreaper() == 1
        with procs.reaping():
            run_command(["/bin/true"], timeout=5)
        assert subreaper() == 1
    assert subreaper() == 0   # a test runner must not collect the zombies of daemons started later
