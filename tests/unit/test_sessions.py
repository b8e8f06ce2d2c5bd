"""Sessions probe: the fork test for real (setsid, escapes from a process-group
kill, cleanup of every test process, also when the test is abandoned), cgroup
parsing on recorded /proc texts, pid namespaces as root and as an
unprivileged user, and the judgement."""

import os
import shutil
import subprocess
import sys
import time

import pytest

from startd_health.core.model import Status
from startd_health.probes import all_probes
from startd_health.probes import sessions
from startd_health.probes.sessions import Cgroups, ForkTest, Gathered, SessionsProbe, condor_settings, gather, judge, parse_cgroups

from .helpers import FakeCondor, make_context, run_probe_as_nobody, REPO, pids_alive, wait_gone

FORK_TEST = os.path.join(os.path.dirname(sessions.__file__), sessions.FORK_TEST)


def context(budget=20.0, condor=None, root="/"):
    return make_context("sessions", budget, condor, system_root=root)


def hanging_fork_test(tmp_path, monkeypatch):
    """Simulated: a supervisor that hangs before its group kill (a copy of
    the real program with a sleep inserted, run instead of it)."""
    with open(FORK_TEST) as handle:
        text = handle.read()
    hang = text.replace('    out = {"reported"', '    time.sleep(60)\n    out = {"reported"', 1)
    assert hang != text
    program = tmp_path / "hanging_fork_test.py"
    program.write_text(hang)
    monkeypatch.setattr(sessions, "python_argv",
                        lambda package, name, *args: [sys.executable, "-I", "-S", str(program), *args])


# ---------------------------------------------------------------- the fork test, for real

def test_registered():
    assert all_probes()["sessions"] is SessionsProbe


def test_gather_for_real_and_nothing_is_left_behind():
    t0 = time.monotonic()
    g = gather(context())
    elapsed = time.monotonic() - t0
    f = g.fork
    assert f.ran and f.error == "", f
    assert f.setsid_ok and f.setsid_error == ""
    assert f.session_escape, "a grandchild in its own session must survive a process-group kill"
    assert not f.double_fork_escape and f.double_fork_reparented, "a re-parented grandchild stays in the group"
    assert len(f.pids) == 3 and f.leftover == ()
    assert pids_alive(list(f.pids)) == [], "test processes left behind"
    assert elapsed < 3.0, elapsed


def test_abandoned_fork_test_leaves_nothing_behind(tmp_path, monkeypatch):
    """The supervisor hangs before its group kill and is killed by ctx.run's
    timeout: the probe kills the test processes by pid from the pid file."""
    hanging_fork_test(tmp_path, monkeypatch)
    t0 = time.monotonic()
    f = sessions.fork_test(context(budget=1.0))
    assert not f.ran and "timed out" in f.error and time.monotonic() - t0 < 3.0
    assert len(f.pids) == 3 and f.leftover == ()
    assert pids_alive(list(f.pids)) == []
    result = judge(Gathered(f, Cgroups()))
    assert result.status is Status.FAILED and result.reason.startswith("session test failed: ")
    assert "timed out" in result.reason


def test_test_processes_exit_by_themselves_when_the_supervisor_is_gone(tmp_path, monkeypatch):
    """Even without the probe's cleanup by pid (a probe thread abandoned by
    the runner never gets there), the lifeline pipe ends them."""
    hanging_fork_test(tmp_path, monkeypatch)
    monkeypatch.setattr(sessions, "kill_test_processes", lambda pids, token, wait=2.0: ())
    f = sessions.fork_test(context(budget=1.0))
    assert len(f.pids) == 3
    assert wait_gone(list(f.pids), timeout=3.0) == []


@pytest.mark.root   # becomes nobody with setpriv
def test_gather_as_an_unprivileged_user():
    """As a STARTD_CRON job runs: not root. The system Python (no os.unshare
    before 3.12, whatever this one is) and the user-namespace pid check."""
    out = run_probe_as_nobody("sessions", {}, extra="{'how': g.pid_namespace_check, 'pids': g.fork.pids}")
    out.update(out.pop("extra"))
    assert out["how"] == "unshare --user --pid"
    assert out["facts"]["setsid_ok"] and out["facts"]["session_escape"] and not out["facts"]["double_fork_escape"]
    assert pids_alive(out["pids"]) == []


@pytest.mark.parametrize("new_session", [True, False])
def test_in_own_session_for_real(new_session):
    code = "from startd_health.probes.sessions import in_own_session; print(in_own_session())"
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=30,
                          start_new_session=new_session)
    assert proc.stdout.strip() == str(new_session), proc.stderr


def test_pid_namespace_check_for_real():
    works, how, why = sessions.pid_namespace_check(context())
    if shutil.which("unshare"):
        assert how == ("unshare --pid as root" if os.geteuid() == 0 else "unshare --user --pid")
    assert works or why


# ---------------------------------------------------------------- cgroups from recorded /proc texts

# This machine (Debian 12 guest, systemd hybrid layout), 2026-11-25.
HYBRID_CGROUP = """9:name=systemd:/
8:pids:/
7:blkio:/
6:freezer:/
5:devices:/
4:memory:/process_api/819c06fc1b0009691c7b41128ad591a5
3:cpuset:/
2:cpuacct:/
1:cpu:/
0::/
"""
HYBRID_MOUNTINFO = """22 1 259:2 / / rw,relatime shared:1 - ext4 /dev/vda rw
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
33 31 0:30 / /sys/fs/cgroup/cpuacct rw,relatime - cgroup cgroup rw,cpuacct
34 31 0:31 / /sys/fs/cgroup/cpuset rw,relatime - cgroup cgroup rw,cpuset
35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
36 31 0:33 / /sys/fs/cgroup/devices rw,relatime - cgroup cgroup rw,devices
37 31 0:34 / /sys/fs/cgroup/freezer rw,relatime - cgroup cgroup rw,freezer
38 31 0:35 / /sys/fs/cgroup/blkio rw,relatime - cgroup cgroup rw,blkio
39 31 0:36 / /sys/fs/cgroup/pids rw,relatime - cgroup cgroup rw,pids
40 31 0:37 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,name=systemd
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
"""
# A Debian 12 / EL9 execute node, unified hierarchy, the startd's cron job.
V2_CGROUP = "0::/system.slice/condor.service\n"
V2_MOUNTINFO = """22 1 259:2 / / rw,relatime shared:1 - ext4 /dev/nvme0n1p2 rw,errors=remount-ro
35 24 0:30 / /sys/fs/cgroup rw,nosuid,nodev,noexec,relatime shared:9 - cgroup2 cgroup2 rw,nsdelegate,memory_recursiveprot
"""
# EL7 (kernel 3.10: no 0:: line), v1 only.
V1_CGROUP = """11:cpuset:/
10:hugetlb:/
9:pids:/system.slice/condor.service
8:perf_event:/
7:memory:/system.slice/condor.service
6:blkio:/system.slice/condor.service
5:net_prio,net_cls:/
4:freezer:/
3:cpuacct,cpu:/system.slice/condor.service
2:devices:/system.slice/condor.service
1:name=systemd:/system.slice/condor.service
"""
V1_MOUNTINFO = """25 18 0:21 / /sys/fs/cgroup ro,nosuid,nodev,noexec shared:8 - tmpfs tmpfs ro,mode=755
26 25 0:22 / /sys/fs/cgroup/systemd rw,nosuid,nodev,noexec,relatime shared:9 - cgroup cgroup rw,xattr,release_agent=/usr/lib/systemd/systemd-cgroups-agent,name=systemd
29 25 0:25 / /sys/fs/cgroup/memory rw,nosuid,nodev,noexec,relatime shared:12 - cgroup cgroup rw,memory
30 25 0:26 / /sys/fs/cgroup/cpu,cpuacct rw,nosuid,nodev,noexec,relatime shared:13 - cgroup cgroup rw,cpuacct,cpu
33 25 0:29 / /sys/fs/cgroup/freezer rw,nosuid,nodev,noexec,relatime shared:16 - cgroup cgroup rw,freezer
"""
# A pilot in a Docker container: private cgroup namespace, cgroupfs read-only.
DOCKER_CGROUP = "0::/\n"
DOCKER_MOUNTINFO = ("612 590 0:30 / /sys/fs/cgroup ro,nosuid,nodev,noexec,relatime - cgroup2 cgroup "
                    "rw,nsdelegate,memory_recursiveprot\n")
# The same with the host's cgroup namespace: our path is the mount's root.
DOCKER_HOSTNS_CGROUP = "0::/system.slice/docker-3f2a9c.scope\n"
DOCKER_HOSTNS_MOUNTINFO = ("612 590 0:30 /system.slice/docker-3f2a9c.scope /sys/fs/cgroup ro,nosuid,nodev,noexec,"
                           "relatime - cgroup2 cgroup rw,nsdelegate,memory_recursiveprot\n")


@pytest.mark.parametrize("proc_cgroup,mountinfo,expected", [
    (HYBRID_CGROUP, HYBRID_MOUNTINFO,
     Cgroups("hybrid", "/process_api/819c06fc1b0009691c7b41128ad591a5",
             "/sys/fs/cgroup/memory/process_api/819c06fc1b0009691c7b41128ad591a5", True)),
    (V2_CGROUP, V2_MOUNTINFO,
     Cgroups("v2", "/system.slice/condor.service", "/sys/fs/cgroup/system.slice/condor.service", True)),
    (V1_CGROUP, V1_MOUNTINFO,
     Cgroups("v1", "/system.slice/condor.service", "/sys/fs/cgroup/memory/system.slice/condor.service", True)),
    (DOCKER_CGROUP, DOCKER_MOUNTINFO, Cgroups("v2", "/", "/sys/fs/cgroup", False)),
    (DOCKER_HOSTNS_CGROUP, DOCKER_HOSTNS_MOUNTINFO,
     Cgroups("v2", "/system.slice/docker-3f2a9c.scope", "/sys/fs/cgroup", False)),
    # v1 without the memory controller mounted: the next hierarchy we are in
    ("2:freezer:/condor\n1:memory:/condor\n",
     "29 25 0:25 / /sys/fs/cgroup/freezer rw,relatime - cgroup cgroup rw,freezer\n",
     Cgroups("v1", "/condor", "/sys/fs/cgroup/freezer/condor", True)),
    ("0::/\n", "22 1 259:2 / / rw,relatime shared:1 - ext4 /dev/vda rw\n", Cgroups()),
    ("", "", Cgroups()),
])
def test_parse_cgroups(proc_cgroup, mountinfo, expected):
    assert parse_cgroups(proc_cgroup, mountinfo) == expected


def test_cgroups_of_this_machine_match_the_recording():
    with open("/proc/self/cgroup") as a, open("/proc/self/mountinfo") as b:
        here = parse_cgroups(a.read(), b.read())
    assert here.version in ("v1", "v2", "hybrid", "none")
    if here.directory:
        assert os.path.isdir(here.directory), here




def test_condor_settings():
    assert condor_settings(None) == (False, True)
    assert condor_settings(FakeCondor(BASE_CGROUP="htcondor", USE_PROCESS_GROUPS="True")) == (False, True)
    # htcondor2.param answers None for a knob set to nothing
    assert condor_settings(FakeCondor(BASE_CGROUP=None, USE_PROCESS_GROUPS="false")) == (True, False)


# ---------------------------------------------------------------- judge

RAN = ForkTest(True, setsid_ok=True, session_escape=True, double_fork_escape=False, double_fork_reparented=True)
V2 = Cgroups("v2", "/system.slice/condor.service", "/sys/fs/cgroup/system.slice/condor.service", True)


def gathered(fork=RAN, cgroups=V2, **kw):
    kw.setdefault("cgroup_kill", cgroups.version == "v2")
    kw.setdefault("pid_namespace", True)
    kw.setdefault("pid_namespace_check", "unshare --user --pid")
    return Gathered(fork, cgroups, **kw)


def test_judge_escape_caught_by_cgroups_is_ok():
    r = judge(gathered())
    assert r.status is Status.OK
    assert r.reason == ("setsid works; a setsid() grandchild survived a process-group kill, cgroup v2 tracking with "
                        "cgroup.kill can catch it; pid namespaces work; shares its parent's session")
    assert r.facts == {"cgroup_version": "v2", "cgroup_path": "/system.slice/condor.service", "cgroup_kill": True,
                       "cgroup_tracked": True, "pid_namespace": True, "in_own_session": False, "setsid_ok": True,
                       "session_escape": True, "double_fork_escape": False}


@pytest.mark.parametrize("cgroups,kw,why", [
    (Cgroups(), {}, "no cgroup filesystem"),
    (Cgroups("v2", "/", "/sys/fs/cgroup", False), {}, "the cgroup v2 filesystem is read-only"),
    (V2, {"base_cgroup_disabled": True}, "HTCondor's BASE_CGROUP is empty"),
    (Cgroups("v1"), {}, "our cgroup is not in a mounted cgroup v1 hierarchy"),
])
def test_judge_escape_without_cgroup_tracking_is_degraded(cgroups, kw, why):
    r = judge(gathered(cgroups=cgroups, **kw))
    assert r.status is Status.DEGRADED and r.facts["cgroup_tracked"] is False
    assert r.reason.startswith("jobs can escape a process-group kill (a setsid() grandchild survived a "
                               f"process-group kill) and no cgroup tracking can catch them ({why})"), r.reason


def test_judge_no_escape_is_ok_even_without_cgroups():
    fork = ForkTest(True, setsid_ok=True, session_escape=False, double_fork_escape=False)
    r = judge(gathered(fork=fork, cgroups=Cgroups(), pid_namespace=False, pid_namespace_check="unshare --pid as root",
                       pid_namespace_error="unshare exit 1: unshare failed: Operation not permitted",
                       in_own_session=True))
    assert r.status is Status.OK
    assert r.reason == ("setsid works; a process-group kill reaches every grandchild; no cgroup tracking (no cgroup "
                        "filesystem); pid namespaces unavailable (unshare exit 1: unshare failed: Operation not "
                        "permitted); own session")


def test_judge_setsid_impossible_fails_unless_process_groups_are_off():
    fork = ForkTest(True, setsid_ok=False, setsid_error="Operation not permitted")
    r = judge(gathered(fork=fork))
    assert r.status is Status.FAILED
    assert r.reason.startswith("setsid() fails (Operation not permitted): jobs cannot start (USE_PROCESS_GROUPS)")
    assert r.facts["setsid_ok"] is False
    assert judge(gathered(fork=fork, use_process_groups=False)).status is Status.DEGRADED


def test_judge_test_that_did_not_run_fails_and_leftovers_are_named():
    r = judge(gathered(fork=ForkTest(False, error="python timed out after 15.0s", leftover=(4242,))))
    assert r.status is Status.FAILED
    assert r.reason == "session test failed: python timed out after 15.0s; test processes 4242 could not be killed"
    assert "setsid_ok" not in r.facts
    stuck = judge(gathered(fork=ForkTest(True, setsid_ok=True, session_escape=True, leftover=(4242,))))
    assert stuck.status is Status.DEGRADED and stuck.reason.endswith("test processes 4242 could not be killed")


def test_kernel_support_only_is_said():
    r = judge(gathered(pid_namespace_check="kernel support only (no unshare)"))
    assert "pid namespaces work (kernel support only (no unshare))" in r.reason
