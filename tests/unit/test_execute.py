"""Execute-directory probe (probes/execute.py) on REAL filesystems: a
directory of the test machine, a read-only tmpfs, a full tmpfs, a small one
(low), and a FUSE mount that never answers (tests/cvmfs_sim.py's HungMount:
the one simulated piece, a hung server). The judgement is also tested on
recorded facts. Mounts need root (marker `root`); they are made under
tmp_path and always unmounted."""

import os
import subprocess
import time

import pytest

from startd_health.core.model import Status
from startd_health.probes import all_probes
from startd_health.probes.execute import DirCheck, ExecuteProbe, Thresholds, directories, judge, judge_dir

from .helpers import FakeCondor, make_context, parse_cron_output, run_cli

T = Thresholds(full_bytes=64 * 2**20, low_bytes=2 * 2**30, full_inodes=1000, low_inodes=50000)


class Condor(FakeCondor):
    def names(self):
        return tuple(self.values)


def run_probe(*dirs, **knobs):
    ctx = make_context("execute", dirs=tuple(str(d) for d in dirs), **knobs)
    return ExecuteProbe().run(ctx)


@pytest.fixture
def tmpfs(tmp_path):
    """mount(name, options) -> path of a fresh tmpfs under tmp_path; unmounted afterwards."""
    if os.geteuid() != 0:
        pytest.fail("mounting a tmpfs needs root (deselect with -m 'not root')")
    mounted = []

    def mount(name, options):
        path = tmp_path / name
        path.mkdir()
        subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)], check=True)
        mounted.append(path)
        return path
    yield mount
    for path in reversed(mounted):
        subprocess.run(["umount", "-l", str(path)], check=False)


def fill(path):
    """Write until the filesystem is full."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        while os.write(fd, b"\0" * 4096):
            pass
    except OSError:
        pass
    finally:
        os.close(fd)


def test_registered():
    assert all_probes()["execute"] is ExecuteProbe


def test_directories_from_htcondor_each_once_with_the_knobs_naming_it():
    ctx = make_context("execute", condor=Condor(EXECUTE="/var/lib/condor/execute", SLOT2_EXECUTE="/scratch2",
                                                 SLOT1_EXECUTE="/var/lib/condor/execute/", SLOT10_EXECUTE="/s10"))
    assert directories(ctx) == [("/var/lib/condor/execute", ("EXECUTE", "SLOT1_EXECUTE")),
                                ("/scratch2", ("SLOT2_EXECUTE",)), ("/s10", ("SLOT10_EXECUTE",))]
    assert run_probe().status is Status.SKIPPED     # standalone, nothing configured


def test_a_writable_directory_is_ok(tmp_path):
    r = run_probe(tmp_path)
    assert r.status is Status.OK, r.reason
    assert r.facts["dirs"] == (str(tmp_path),) and r.facts["free_bytes"] > 0
    assert not [p for p in os.listdir(tmp_path)]     # the test file is gone


def test_judge_from_recorded_facts():
    ok = DirCheck("/e", ("EXECUTE",), 10 * 2**30, 20 * 2**30, 10**6, 10**7, write_ok=True)
    assert judge_dir(ok, T) == (Status.OK, "")
    low = DirCheck("/e", ("EXECUTE",), 2**30, 20 * 2**30, 10**6, 10**7, write_ok=True)
    assert judge_dir(low, T)[0] is Status.DEGRADED and "low on space" in judge_dir(low, T)[1]
    full = DirCheck("/e", ("EXECUTE",), 2**20, 20 * 2**30, 10**6, 10**7, write_ok=True)
    assert judge_dir(full, T)[0] is Status.FAILED
    inodes = DirCheck("/e", ("EXECUTE",), 10 * 2**30, 20 * 2**30, 10, 10**7, write_ok=True)
    assert "no inodes left" in judge_dir(inodes, T)[1]
    btrfs = DirCheck("/e", ("EXECUTE",), 10 * 2**30, 20 * 2**30, 0, 0, write_ok=True)   # no inode counts
    assert judge_dir(btrfs, T)[0] is Status.OK
    # The slots advertise more disk (DISK, KiB) than the filesystem has.
    assert "less than the slots advertise" in judge_dir(ok, T, advertised=11 * 2**30)[1]
    r = judge([ok, full], T)
    assert r.status is Status.FAILED and r.facts["dirs_failed"] == ("/e",)
    assert judge([], T).status is Status.SKIPPED


@pytest.mark.root
def test_read_only_execute_fails_naming_the_directory(tmpfs):
    ro = tmpfs("ro", "ro,size=1m")
    r = run_probe(ro)
    assert r.status is Status.FAILED
    assert f"{ro} (STARTD_HEALTH_EXECUTE_DIRS) is on a read-only filesystem" in r.reason


@pytest.mark.root
def test_full_execute_fails_low_execute_degrades(tmpfs):
    full = tmpfs("full", "size=64k")
    fill(full / "filler")
    r = run_probe(full)
    assert r.status is Status.FAILED and "is full" in r.reason and str(full) in r.reason
    small = tmpfs("small", "size=8m")
    r = run_probe(small, full_mb=1, low_mb=100)
    assert r.status is Status.DEGRADED and "low on space" in r.reason and r.facts["dirs_low"] == (str(small),)
    few = tmpfs("inodes", "size=8m,nr_inodes=20")
    r = run_probe(few, full_mb=1, low_mb=1, full_inodes=100)
    assert r.status is Status.FAILED and "no inodes left" in r.reason


@pytest.mark.root
def test_hung_execute_fails_in_time(tmp_path):
    from tests import cvmfs_sim as sim
    why = sim.fuse_available()
    if why:
        pytest.fail(f"the hung-mount simulation needs /dev/fuse: {why}")
    mount = sim.HungMount(str(tmp_path / "hung"), swallow=False).mount()
    try:
        t0 = time.monotonic()
        r = run_probe(tmp_path / "hung", dir_timeout=1.0)
        assert time.monotonic() - t0 < 1.0 + 3.0
        assert r.status is Status.FAILED and "no answer within 1s" in r.reason and "hung" in r.reason
    finally:
        mount.cleanup()


@pytest.mark.root
def test_cron_publishes_the_execute_verdict(tmpfs, cli_env):
    ro = tmpfs("ro", "ro,size=1m")
    proc = run_cli(["cron", "--no-condor-config", "--probes", "execute", "--execute-dirs", str(ro)], cli_env)
    ad = parse_cron_output(proc.stdout)
    assert ad["StartdHealthOk"] is False and ad["StartdHealthExecuteDirsFailed"] == [str(ro)]
    assert "read-only" in ad["StartdHealthReason"]


@pytest.mark.root   # drops to another account
def test_run_as_root_the_directory_is_tested_as_htcondors_account():
    """Root writes anywhere; the starter makes job directories as condor
    (here CONDOR_IDS names nobody, 65534): a root-only EXECUTE fails."""
    import shutil
    import tempfile
    closed = tempfile.mkdtemp(prefix="startd-health-execute-")   # under /tmp: pytest's tmp_path is root-only
    try:
        os.chmod(closed, 0o755)
        ctx = make_context("execute", condor=Condor(EXECUTE=closed, CONDOR_IDS="65534.65534"))
        r = ExecuteProbe().run(ctx)
        assert r.status is Status.FAILED and "create: Permission denied (EACCES)" in r.reason
        os.chown(closed, 65534, 65534)
        assert ExecuteProbe().run(ctx).status is Status.OK
    finally:
        shutil.rmtree(closed, ignore_errors=True)
