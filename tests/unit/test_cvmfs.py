"""CVMFS probe: the judgement from recorded facts, and the gathering step
against a simulated CVMFS (tests/cvmfs_sim.py; there is no CVMFS client on
the test machine):

- healthy repositories are directories carrying the user.* extended
  attributes a real mount answers, listed in a recorded mounts file as
  cvmfs2 FUSE mounts (the probe reads that file instead of /proc/self/mounts);
- a hung repository is a real FUSE mount whose server, this test process,
  never answers: the probe's child blocks in the kernel exactly as on a hung
  cvmfs2, unkillable once signalled (state D) when the server has read the
  request, killable when it has not.

The hung-mount tests need root and /dev/fuse; without them they FAIL saying
so, unless STARTD_HEALTH_SKIP_E2E is set.
"""

import json
import os
import re
import signal
import subprocess
import time
from dataclasses import replace

import pytest

from startd_health.core.config import parse_absolute_path
from startd_health.core.model import Status
from startd_health.system.procs import run_command
from startd_health.system.stuck import Stuck
from startd_health.core.runner import OVERRUN_GRACE_SECONDS, run_probes
from startd_health.core.state import StateDir
from startd_health.probes import all_probes, cvmfs
from startd_health.probes.cvmfs import (CvmfsProbe, Failure, RepoCheck, is_cvmfs, judge, parse_repositories,
                                       still_hung, updated_failures)
from startd_health.system import procfs, procs
from startd_health.system.inside import CvmfsInside, cvmfs_section, parse_cvmfs
from startd_health.system.procfs import Mount, parse_mounts
from tests import cvmfs_sim as sim

from .helpers import make_context, probe_settings, wait_gone

NOW = 1_800_000_000.0
HOUR = 3600.0
WINDOW = 4 * HOUR
OASIS = "oasis.opensciencegrid.org"
CVMFS_MOUNT = Mount("cvmfs2", "/cvmfs/" + OASIS, "fuse")


# ---------------------------------------------------------------- configuration and parsing

def test_registered_with_its_knobs():
    cls = all_probes()["cvmfs"]
    assert cls is CvmfsProbe
    assert [k.name for k in cls.knobs] == ["CVMFS_REPOSITORIES", "CVMFS_ROOT", "CVMFS_REPO_TIMEOUT",
                                           "CVMFS_QUARANTINE"]
    assert {k.name: k.default for k in cls.knobs}["CVMFS_QUARANTINE"] == 4 * HOUR


def test_parse_repositories_and_root():
    assert parse_repositories("oasis.opensciencegrid.org, singularity.opensciencegrid.org oasis.opensciencegrid.org") \
        == (OASIS, "singularity.opensciencegrid.org")
    for bad in ("../etc", "a/b", "x;rm", "-rf"):
        with pytest.raises(ValueError, match="not a repository name"):
            parse_repositories(bad)
    assert parse_absolute_path(" /cvmfs/ ") == "/cvmfs"
    with pytest.raises(ValueError, match="absolute"):
        parse_absolute_path("cvmfs")


def test_parse_mounts_like_the_kernel_writes_them():
    text = ("/etc/auto.cvmfs /cvmfs autofs rw,relatime,fd=6,indirect 0 0\n"
            "cvmfs2 /cvmfs/oasis.opensciencegrid.org fuse ro,nosuid,nodev,allow_other 0 0\n"
            "tmpfs /cvmfs/oasis.opensciencegrid.org tmpfs rw 0 0\n"        # stacked: the last one is visible
            "cvmfs2 /my\\040cvmfs/x.org fuse.cvmfs2 ro 0 0\n"
            "garbage\n")
    mounts = parse_mounts(text)
    assert mounts["/cvmfs/" + OASIS] == Mount("tmpfs", "/cvmfs/" + OASIS, "tmpfs")
    assert is_cvmfs(mounts["/my cvmfs/x.org"]) and not is_cvmfs(mounts["/cvmfs"])
    assert is_cvmfs(CVMFS_MOUNT)


# ---------------------------------------------------------------- judge, on recorded facts

def healthy(repo=OASIS, **xattrs):
    values = {"revision": "4711", "nioerr": "2", "timestamp_last_ioerr": "0", "version": "2.12.7.0",
              "fqrn": repo}
    values.update(xattrs)
    return RepoCheck(repo, "/cvmfs/" + repo, listed=True, first_access=0.012, xattrs=values,
                     realpath="/cvmfs/" + repo, mount=Mount("cvmfs2", "/cvmfs/" + repo, "fuse"))


def test_judge_healthy_repos_with_their_numbers():
    r = judge([healthy(), healthy("cms.cern.ch")], {}, NOW, WINDOW)
    assert r.status is Status.OK and r.reason == "2/2 repositories ok"
    assert r.facts == {"repos_ok": (OASIS, "cms.cern.ch"), "repos_failed": (), "repos_quarantined": (),
                       "client_version": "2.12.7.0"}
    oasis = {(m.name, m.unit): m.value for m in r.measurements if m.labels == (("repo", OASIS),)}
    assert oasis == {("revision", ""): 4711, ("nioerr", ""): 2, ("last_ioerr", "timestamp_seconds"): 0,
                     ("first_access", "seconds"): 0.012}


def test_judge_reports_only_the_numbers_it_has():
    # xattrs protected by CVMFS_XATTR_PROTECTED_XATTRS: none readable, still usable
    r = judge([RepoCheck(OASIS, "/cvmfs/" + OASIS, listed=True, first_access=0.5, mount=CVMFS_MOUNT)],
              {}, NOW, WINDOW)
    assert r.status is Status.OK and "client_version" not in r.facts
    assert [(m.name, m.value) for m in r.measurements] == [("first_access", 0.5)]


@pytest.mark.parametrize("check,reason", [
    (RepoCheck(OASIS, "/cvmfs/" + OASIS, error="No such file or directory"),
     "not mounted (No such file or directory)"),
    (RepoCheck(OASIS, "/cvmfs/" + OASIS, error="Transport endpoint is not connected", mount=CVMFS_MOUNT),
     "ls failed: Transport endpoint is not connected"),
    (RepoCheck(OASIS, "/cvmfs/" + OASIS, listed=True, realpath="/cvmfs/" + OASIS),
     "not mounted (/cvmfs/oasis.opensciencegrid.org is a plain directory)"),
    (RepoCheck(OASIS, "/cvmfs/" + OASIS, listed=True, mount=Mount("/dev/sdb1", "/cvmfs/" + OASIS, "xfs")),
     "not CVMFS: xfs mount of /dev/sdb1"),
    (RepoCheck(OASIS, "/cvmfs/" + OASIS, timed_out_after=20.0),
     "ls timed out after 20s (hung mount)"),
    (RepoCheck(OASIS, "/cvmfs/" + OASIS, timed_out_after=20.0, abandoned_pid=99),
     "ls timed out after 20s (hung mount, pid 99 unkillable)"),
    (RepoCheck(OASIS, "/cvmfs/" + OASIS, timed_out_after=1.5, timed_out_listing=False),
     "reading attributes timed out after 1.5s (hung mount)"),
    (RepoCheck(OASIS, "/cvmfs/" + OASIS, hung_since=NOW - 600, hung_pid=1234),
     "still hung since 2027-01-15T07:50:00Z (pid 1234 stuck on it; not checked again)"),
    (RepoCheck(OASIS, "/cvmfs/" + OASIS, check_error="python3: No such file or directory"),
     "check failed: python3: No such file or directory"),
])
def test_judge_failures_name_the_repo_and_why(check, reason):
    r = judge([check, healthy("cms.cern.ch")], {}, NOW, WINDOW)
    assert r.status is Status.FAILED
    assert r.reason == f"1/2 repositories ok; {OASIS}: {reason}"
    assert r.facts["repos_failed"] == (OASIS,) and r.facts["repos_ok"] == ("cms.cern.ch",)


def test_judge_without_a_mount_table_does_not_claim_unmounted():
    check = RepoCheck(OASIS, "/cvmfs/" + OASIS, listed=True, mounts_error="cannot read /proc/self/mounts: EACCES")
    assert judge([check], {}, NOW, WINDOW).status is Status.OK
    failing = replace(check, listed=False, error="Permission denied")
    assert judge([failing], {}, NOW, WINDOW).reason.endswith("ls failed: Permission denied")


def test_fqrn_vouches_for_a_mount_the_table_spells_differently():
    odd = replace(healthy(), mount=Mount("/dev/fuse", "/cvmfs/" + OASIS, "fuse"))
    assert judge([odd], {}, NOW, WINDOW).status is Status.OK
    assert "not CVMFS: fuse mount of /dev/fuse" in judge([replace(odd, xattrs={})], {}, NOW, WINDOW).reason


def test_recent_io_error_quarantines_an_old_one_does_not():
    recent = healthy(timestamp_last_ioerr=str(int(NOW - HOUR)))
    r = judge([recent], {}, NOW, WINDOW)
    assert r.status is Status.FAILED and r.facts["repos_quarantined"] == (OASIS,) and r.facts["repos_failed"] == ()
    assert r.reason == ("0/1 repositories ok; oasis.opensciencegrid.org: quarantined until 2027-01-15T11:00:00Z "
                        "(I/O error at 2027-01-15T07:00:00Z)")
    old = healthy(timestamp_last_ioerr=str(int(NOW - WINDOW - 1)))
    assert judge([old], {}, NOW, WINDOW).status is Status.OK
    assert judge([recent], {}, NOW, 0.0).status is Status.OK   # quarantine switched off


def test_earlier_failure_quarantines_until_the_window_has_passed():
    failures = {OASIS: Failure(NOW - HOUR, "ls timed out after 20s (hung mount)")}
    held = judge([healthy()], failures, NOW, WINDOW)
    assert held.status is Status.FAILED and held.facts["repos_quarantined"] == (OASIS,)
    assert held.reason.endswith("quarantined until 2027-01-15T11:00:00Z (failed at 2027-01-15T07:00:00Z: "
                                "ls timed out after 20s (hung mount))")
    assert judge([healthy()], failures, NOW + 3 * HOUR + 1, WINDOW).status is Status.OK
    # of two holds, the longer one is reported
    both = judge([healthy(timestamp_last_ioerr=str(int(NOW - 600)))], failures, NOW, WINDOW)
    assert "I/O error at" in both.reason


def test_failures_are_remembered_refreshed_and_forgotten():
    failures = {OASIS: Failure(NOW - 2 * HOUR, "old"), "gone.example.org": Failure(NOW - 60, "not configured now"),
                "cms.cern.ch": Failure(NOW - WINDOW - 1, "expired"),
                "hung.example.org": Failure(NOW - 300, "ls timed out after 20s (hung mount)")}
    checks = [healthy(), healthy("cms.cern.ch"), RepoCheck("atlas.cern.ch", "/cvmfs/atlas.cern.ch", error="EIO"),
              RepoCheck("hung.example.org", "/cvmfs/hung.example.org", hung_since=NOW - 300, hung_pid=7)]
    kept = updated_failures(checks, failures, NOW, WINDOW)
    assert kept == {OASIS: Failure(NOW - 2 * HOUR, "old"), "atlas.cern.ch": Failure(NOW, "not mounted (EIO)"),
                    "hung.example.org": Failure(NOW, "ls timed out after 20s (hung mount)")}
    assert updated_failures(checks, failures, NOW, 0.0) == {}


def test_repo_budget_leaves_room_for_the_kill_sequence():
    assert cvmfs.repo_budget(20.0, 28.0) == 20.0                         # the knob when there is room
    assert cvmfs.repo_budget(20.0, 10.0) == 10.0 - procs.ESCALATION_SECONDS
    assert cvmfs.repo_budget(20.0, 2.5) == 2.5                           # too short to reserve anything


def test_still_hung_only_while_that_very_process_lives(tmp_path):
    me = procfs.start_ticks(os.getpid())
    record = tmp_path / ("hung-" + OASIS + ".json")
    cvmfs.remember_hung(str(tmp_path), OASIS, [os.getpid()], NOW)
    assert still_hung(str(tmp_path), OASIS) == Stuck((os.getpid(),), NOW)
    record.write_text(json.dumps({"pid": os.getpid(), "start_ticks": me, "since": NOW}))   # as written before
    assert still_hung(str(tmp_path), OASIS) == Stuck((os.getpid(),), NOW)
    record.write_text(json.dumps({"pid": os.getpid(), "start_ticks": me + 1, "since": NOW}))  # pid reused
    assert still_hung(str(tmp_path), OASIS) is None and not record.exists()
    record.write_text("{garbage")
    assert still_hung(str(tmp_path), OASIS) is None and not record.exists()
    assert still_hung(None, OASIS) is None


# ---------------------------------------------------------------- gather, on simulated repositories

def settings(root, repos, repo_timeout=5.0, quarantine=WINDOW, timeout=10.0):
    return probe_settings("cvmfs", timeout=timeout, repositories=tuple(repos), root=str(root),
                          repo_timeout=repo_timeout, quarantine=quarantine)


@pytest.fixture
def site(tmp_path):
    """A /cvmfs of simulated repositories; mount() adds one to the recorded
    mount table (proc/self/mounts under the probe's root, system_root)."""
    class Site:
        def __init__(self):
            self.root = tmp_path / "cvmfs"
            self.state = tmp_path / "state"
            self.system_root = tmp_path / "system"
            self.mounts_file = self.system_root / "proc" / "self" / "mounts"
            self.points = []

        def repo(self, name, mounted=True, **xattrs):
            path = sim.make_repo(str(self.root), name, xattrs)
            if mounted:
                self.mount(path)
            return path

        def mount(self, path):
            self.points.append(path)
            sim.write_mounts(str(self.mounts_file), self.points)

        def run(self, repos, **kw):
            ctx = make_context("cvmfs", 10, scratch_root=str(self.state), system_root=str(self.system_root),
                               **settings(self.root, repos, **kw))
            return CvmfsProbe().run(ctx)

    site = Site()
    site.root.mkdir()
    site.mounts_file.parent.mkdir(parents=True)
    sim.write_mounts(str(site.mounts_file), [])
    return site


def test_no_repository_configured_is_skipped(site):
    r = site.run([])
    assert r.status is Status.SKIPPED and r.reason == "no repository configured (STARTD_HEALTH_CVMFS_REPOSITORIES)"


def test_healthy_repo_reported_with_revision_and_nioerr(site):
    site.repo(OASIS, revision="31337", nioerr="1", speed=None, hitrate=None)   # some attributes absent
    r = site.run([OASIS])
    assert r.status is Status.OK and r.reason == "1/1 repositories ok", r.reason
    numbers = {m.name: m.value for m in r.measurements}
    assert numbers["revision"] == 31337 and numbers["nioerr"] == 1 and numbers["last_ioerr"] == 0
    assert 0 <= numbers["first_access"] < 1
    assert r.facts["repos_ok"] == (OASIS,) and r.facts["client_version"] == "2.12.7.0"


def test_missing_and_unmounted_repos_fail(site):
    site.repo(OASIS)
    site.repo("plain.example.org", mounted=False)
    r = site.run([OASIS, "missing.example.org", "plain.example.org"])
    assert r.status is Status.FAILED
    assert r.facts["repos_failed"] == ("missing.example.org", "plain.example.org")
    assert "missing.example.org: not mounted (No such file or directory)" in r.reason
    assert f"plain.example.org: not mounted ({site.root}/plain.example.org is a plain directory)" in r.reason


def test_symlinked_root_is_matched_by_its_real_path(site, tmp_path):
    site.repo(OASIS)
    os.symlink(site.root, tmp_path / "link")
    ctx = make_context("cvmfs", 10, system_root=str(site.system_root), **settings(tmp_path / "link", [OASIS]))
    r = CvmfsProbe().run(ctx)   # also: no state directory at all
    assert r.status is Status.OK, r.reason


def test_recent_io_error_is_quarantined(site):
    site.repo(OASIS, timestamp_last_ioerr=str(int(time.time()) - 600), nioerr="7")
    r = site.run([OASIS])
    assert r.status is Status.FAILED and r.facts["repos_quarantined"] == (OASIS,)
    assert "quarantined until" in r.reason and "(I/O error at" in r.reason
    assert {m.name: m.value for m in r.measurements}["nioerr"] == 7


def age_failures(site, seconds):
    path = site.state / "cvmfs" / cvmfs.QUARANTINE_FILE
    data = json.loads(path.read_text())
    for failure in data.values():
        failure["at"] -= seconds
    path.write_text(json.dumps(data))


def test_failed_repo_stays_quarantined_within_the_window_and_clears_after(site):
    assert site.run([OASIS]).facts["repos_failed"] == (OASIS,)          # not there yet
    site.repo(OASIS)                                                     # repaired
    held = site.run([OASIS])
    assert held.status is Status.FAILED and held.facts["repos_quarantined"] == (OASIS,)
    assert "(failed at " in held.reason and ": not mounted (No such file or directory))" in held.reason
    age_failures(site, WINDOW - 60)
    assert site.run([OASIS]).facts["repos_quarantined"] == (OASIS,)
    age_failures(site, 61)
    cleared = site.run([OASIS])
    assert cleared.status is Status.OK and cleared.facts["repos_ok"] == (OASIS,)
    assert json.loads((site.state / "cvmfs" / cvmfs.QUARANTINE_FILE).read_text()) == {}


def test_unreadable_mount_table_is_not_reported_as_unmounted(site):
    site.repo(OASIS)
    site.mounts_file.unlink()
    assert site.run([OASIS]).status is Status.OK


# ---------------------------------------------------------------- hung mounts (real FUSE)

@pytest.fixture
def hung():
    """hung(target, swallow=True): a FUSE mount there that never answers;
    always unmounted (freeing every blocked process) at the end."""
    why = sim.fuse_available()   # the tests using this are marked root
    if why:
        pytest.fail(f"hung-mount simulation needs root and /dev/fuse: {why} (deselect with -m 'not root')")
    mounts = []

    def make(target, swallow=True):
        mounts.append(sim.HungMount(str(target), swallow).mount())
        return mounts[-1]

    yield make
    for mount in mounts:
        mount.cleanup()


@pytest.mark.root
def test_simulated_hung_mount_really_blocks_and_cleanup_frees_it(hung, tmp_path):
    mount = hung(tmp_path / "hung.example.org")
    ls = subprocess.Popen(["ls", mount.target], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                          start_new_session=True)
    try:
        assert mount.wait_requests(1)                  # the server has the request: it will never answer
        assert sim.wait_state(ls.pid, "S") == "S"      # waiting for that answer, still interruptible
        os.kill(ls.pid, signal.SIGTERM)
        assert sim.wait_state(ls.pid, "D") == "D"      # signalled: now uninterruptible
        os.kill(ls.pid, signal.SIGKILL)
        time.sleep(0.2)
        assert ls.poll() is None and sim.proc_state(ls.pid) == "D"
    finally:
        mount.cleanup()
    assert ls.wait(5) == -signal.SIGTERM


@pytest.mark.root
def test_killable_hang_is_killed_not_left_behind(hung, site):
    site.repo("cms.cern.ch")
    hung_path = site.root / "stuck.example.org"
    hung(hung_path, swallow=False)
    site.mount(str(hung_path))
    t0 = time.monotonic()
    r = site.run(["cms.cern.ch", "stuck.example.org"], repo_timeout=0.5)
    assert time.monotonic() - t0 < 0.5 + 1.5
    assert r.facts["repos_ok"] == ("cms.cern.ch",) and r.facts["repos_failed"] == ("stuck.example.org",)
    assert "stuck.example.org: ls timed out after 0.5s (hung mount)" in r.reason
    assert not list((site.state / "cvmfs").glob("hung-*"))     # nothing left to wait for


@pytest.mark.root
@pytest.mark.slow
def test_hung_repo_is_abandoned_others_ok_and_no_child_piles_up(hung, site):
    """With the default knobs (20 s per repository, 30 s per probe) and a
    6 s run deadline: the hung repository's budget is what the deadline
    leaves, the run ends in time, and only the unkillable child remains."""
    site.repo(OASIS)
    site.repo("cms.cern.ch")
    hung_path = site.root / "hung.example.org"
    mount = hung(hung_path)
    site.mount(str(hung_path))
    repos = (OASIS, "hung.example.org", "cms.cern.ch")
    configured = {"cvmfs": settings(site.root, repos, repo_timeout=20.0, timeout=30.0)}
    state = StateDir(str(site.state))
    before = set(sim.children_of(os.getpid()))

    deadline = 6.0
    first = run_probes([CvmfsProbe()], configured, deadline, state=state, system_root=str(site.system_root))
    result = first.results[0]
    print(f"\nhung-repo run: {first.duration_seconds:.2f}s of a {deadline:g}s deadline; {result.reason}")
    # The probe's budget ends OVERRUN_GRACE_SECONDS before the deadline; the
    # hung child's timeout leaves room in it for TERM, KILL and abandon, so
    # the probe reports by itself within its budget, not in the runner's grace.
    probe_budget = deadline - OVERRUN_GRACE_SECONDS
    assert first.duration_seconds < probe_budget + 1.0 < deadline
    assert result.status is Status.FAILED
    assert result.facts["repos_ok"] == (OASIS, "cms.cern.ch")
    assert result.facts["repos_failed"] == ("hung.example.org",)
    repo_budget = probe_budget - procs.ESCALATION_SECONDS
    timed_out = re.search(r"hung\.example\.org: ls timed out after ([0-9.]+)s \(hung mount, pid (\d+) unkillable\)",
                          result.reason)
    assert timed_out and repo_budget - 0.3 <= float(timed_out.group(1)) <= repo_budget, result.reason

    left = {pid: st for pid, st in sim.children_of(os.getpid()).items() if pid not in before}
    assert len(left) == 1 and list(left.values()) == ["D"], left   # only the abandoned child, stuck in D
    (stuck,) = left
    assert int(timed_out.group(2)) == stuck
    record = json.loads((site.state / "probes" / "cvmfs" / "hung-hung.example.org.json").read_text())
    assert [entry["pid"] for entry in record["pids"]] == [stuck]
    requests = len(mount.requests)

    second = run_probes([CvmfsProbe()], configured, deadline, state=state, force=True,
                        system_root=str(site.system_root))
    again = second.results[0]
    print(f"second run: {second.duration_seconds:.2f}s; {again.reason}")
    assert second.duration_seconds < 1.0
    assert {p for p in sim.children_of(os.getpid()) if p not in before} == {stuck}   # no new child
    assert len(mount.requests) == requests                                          # nothing touched the mount
    assert f"hung.example.org: still hung since {cvmfs.iso(record['since'])} (pid {stuck} stuck on it" in again.reason
    assert again.facts["repos_ok"] == (OASIS, "cms.cern.ch")

    mount.cleanup()                        # the mount recovers: its child is freed and goes
    assert wait_gone([stuck]) == []
    third = run_probes([CvmfsProbe()], configured, deadline, state=state, force=True,
                       system_root=str(site.system_root)).results[0]
    assert not (site.state / "probes" / "cvmfs" / "hung-hung.example.org.json").exists()
    assert third.facts["repos_quarantined"] == ("hung.example.org",)                # checked again, held back
    assert third.reason.endswith(f": {timed_out.group(0)[len('hung.example.org: '):]})"), third.reason


# ---------------------------------------------------------------- inside a container: /bin/sh only

def test_inside_script_parses_to_facts(site):
    site.repo(OASIS, revision="4242")
    script = cvmfs_section(str(site.root), [OASIS, "missing.example.org"])
    out = subprocess.run(["/bin/sh", "-c", script], capture_output=True, text=True, timeout=10)
    found = parse_cvmfs(out.stdout, [OASIS, "missing.example.org"])
    assert found[OASIS] == CvmfsInside(OASIS, True, 4242)
    assert not found["missing.example.org"].ok
    assert "No such file or directory" in found["missing.example.org"].reason


@pytest.mark.parametrize("tools,revision", [(("ls",), None), (("ls", "attr"), 4242), (("ls", "getfattr"), 4242)])
def test_inside_script_needs_only_sh_and_ls(site, tmp_path, tools, revision):
    """Revision from getfattr or attr when the image has one, else left empty."""
    site.repo(OASIS, revision="4242")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in tools:
        os.symlink(subprocess.check_output(["sh", "-c", f"command -v {tool}"], text=True).strip(), bin_dir / tool)
    out = subprocess.run(["/bin/sh", "-c", cvmfs_section(str(site.root), [OASIS, "missing.example.org"])],
                         capture_output=True, text=True, timeout=10, env={"PATH": str(bin_dir)})
    assert f"cvmfs {OASIS} ok {revision or ''}\n" in out.stdout
    found = parse_cvmfs(out.stdout)
    assert found[OASIS] == CvmfsInside(OASIS, True, revision)
    assert found["missing.example.org"].reason.endswith("No such file or directory")


@pytest.mark.root
def test_inside_script_under_a_timeout_reports_the_hung_repo_as_unanswered(hung, site):
    site.repo(OASIS, revision="4242")
    hung(site.root / "hung.example.org", swallow=False)
    repos = [OASIS, "hung.example.org"]
    result = run_command(["/bin/sh", "-c", cvmfs_section(str(site.root), repos)], timeout=0.5)
    assert result.timed_out and not result.abandoned
    found = parse_cvmfs(result.stdout, repos)
    assert found[OASIS].ok and found[OASIS].revision == 4242
    assert found["hung.example.org"] == CvmfsInside("hung.example.org", False,
                                                    reason="no answer (hung mount or timed out)")


def test_parse_inside_ignores_noise_and_keeps_reasons():
    text = ("WARNING: some container chatter\n"
            "cvmfs a.org ok 17\n"
            "cvmfs b.org fail ls: cannot access '/cvmfs/b.org/.': Transport endpoint is not connected\n"
            "cvmfs c.org ok notanumber\n")
    found = parse_cvmfs(text)
    assert found == {"a.org": CvmfsInside("a.org", True, 17),
                     "b.org": CvmfsInside("b.org", False, reason="ls: cannot access '/cvmfs/b.org/.': "
                                                                  "Transport endpoint is not connected"),
                     "c.org": CvmfsInside("c.org", True, None)}
    with pytest.raises(ValueError):
        cvmfs_section("/cvmfs", ["bad name"])
