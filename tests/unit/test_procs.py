"""run_command against real processes: groups, double forks, escapes, hangs."""

import os
import time

from startd_health.system.procs import run_command

from .helpers import wait_gone


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
    escaped = int(pidfile.read_text())
    os.kill(escaped, 9)


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
