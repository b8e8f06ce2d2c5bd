"""Leftover processes (issue 11, section 6): nothing a launch starts outlives
the run where it can be killed, and no run starts another process into a
trap that already holds one.

Real processes throughout, run by the real runner with a real state
directory. Simulated: the container runtime (a shell script standing in for
apptainer; it runs the inside script on the host, as the image's /bin/sh
would, so the script really touches the repositories, and it can leave a
daemonised helper behind as Apptainer leaves its SIF mount helper), and the
hung CVMFS repository (tests/cvmfs_sim.py: a real FUSE mount whose server
never answers; whoever touches it is stuck in uninterruptible sleep, which
SIGKILL does not end, until the mount is aborted).
"""

import os

from startd_health.core.runner import run_probes
from startd_health.core.state import StateDir
from startd_health.probes.container import ContainerProbe
from startd_health.probes.cvmfs import CvmfsProbe
from startd_health.system import launch_guard
from tests import cvmfs_sim as sim

from .helpers import pids_alive, wait_gone
from .test_cvmfs import OASIS, hung, settings as cvmfs_settings, site  # noqa: F401 (fixtures)

HUNG = "hung.example.org"
RUNS = 4


def stand_in_runtime(tmp_path, exec_body='shift 2; exec "$@"'):
    """`apptainer` for the probe: --version answers; `exec IMAGE CMD...` (no
    flags configured) runs exec_body, by default CMD on the host."""
    path = tmp_path / "apptainer"
    path.write_text('#!/bin/sh\nif [ "$1" = --version ]; then echo "apptainer version 1.4.5"; exit 0; fi\n'
                    + exec_body + "\n")
    path.chmod(0o755)
    return str(path)


def container_settings(runtime, root, repos, launch_timeout=1.0):
    return {"period": 300.0, "timeout": 6.0, "requirement": "REQUIRED", "runtime": runtime, "module": "",
            "images": ("site=/img",), "flags": (), "launch_timeout": launch_timeout, "binds": (),
            "condor_image": False, "cvmfs": True, "partial_ok": False,
            "cvmfs_repositories": tuple(repos), "cvmfs_root": str(root)}


def new_children(before):
    """Our children (what is stuck ends up re-parented to us) that were not there before: pid -> state."""
    return {pid: state for pid, state in sim.children_of(os.getpid()).items() if pid not in before}


def run_repeatedly(probes, configured, state, runs=RUNS):
    before = set(sim.children_of(os.getpid()))
    seen = []
    for _ in range(runs):
        report = run_probes(probes, configured, 8.0, state=state, force=True)
        seen.append((new_children(before), {r.probe: r for r in report.results}))
    return seen


def test_a_hung_repository_holds_one_stuck_process_per_probe_not_one_more_per_run(hung, site, tmp_path):
    site.repo(OASIS)
    mount = hung(site.root / HUNG)
    site.mount(str(site.root / HUNG))
    repos = (OASIS, HUNG)
    configured = {"cvmfs": cvmfs_settings(site.root, repos, repo_timeout=1.0, timeout=5.0),
                  "container": container_settings(stand_in_runtime(tmp_path), site.root, repos)}
    state = StateDir(str(site.state))

    seen = run_repeatedly([CvmfsProbe(), ContainerProbe()], configured, state)
    counts = [len(children) for children, _ in seen]
    print(f"\nstuck processes after each of {RUNS} runs: {counts}; requests the hung server got: {len(mount.requests)}")
    first, results = seen[0]
    # Run 1 finds the hang the hard way: the cvmfs probe's child and the
    # launch's `ls` stick on the mount, unkillable (the launch's other
    # processes, the shell and its subshells, are killed).
    assert sorted(first.values()) == ["D", "D"], first
    assert "timed out" in results["container"].reason and "timed out" in results["cvmfs"].reason
    assert counts == [2] * RUNS, counts                     # no growth after the first run
    assert all(children == first for children, _ in seen)  # the very same two processes
    for _, results in seen[1:]:
        reason = results["container"].reason
        assert f"site: not launched: CVMFS repository {HUNG} is hung (pid " in reason, reason
        assert "a launch would hang on it too" in reason

    mount.cleanup()                                         # the repository recovers
    assert wait_gone(list(first)) == []
    after = run_probes([ContainerProbe()], configured, 8.0, state=state, force=True).results[0]
    assert "not launched" not in after.reason, after.reason  # tried again


def test_without_the_cvmfs_probe_the_stuck_launch_itself_stops_the_next_one(hung, site, tmp_path):
    site.repo(OASIS)
    mount = hung(site.root / HUNG)
    configured = {"container": container_settings(stand_in_runtime(tmp_path), site.root, (OASIS, HUNG))}
    state = StateDir(str(site.state))

    seen = run_repeatedly([ContainerProbe()], configured, state)
    counts = [len(children) for children, _ in seen]
    assert counts == [1] * RUNS, counts
    (stuck,) = seen[0][0]
    for _, results in seen[1:]:
        reason = results["container"].reason
        assert f"site: not launched: its previous launch is still stuck since " in reason, reason
        assert f"(pid {stuck} unkillable)" in reason
    record = site.state / "probes" / "container" / (launch_guard.LAUNCH_RECORD.format(image="site") + ".json")
    assert record.exists()
    mount.cleanup()
    assert wait_gone([stuck]) == []
    run_probes([ContainerProbe()], configured, 8.0, state=state, force=True)
    assert not record.exists()                              # gone with the process it named


def test_a_failed_launch_leaves_no_daemonised_helper_behind(tmp_path):
    """As Apptainer's SIF mount helper outlived every failed launch under an
    injected fault: the stand-in starts a helper that leaves our session and
    process group (setsid) and is orphaned, then fails."""
    pids = tmp_path / "helpers"
    runtime = stand_in_runtime(tmp_path, f"( setsid sleep 300 </dev/null >/dev/null 2>&1 & echo $! >> {pids} )\n"
                                         "echo 'FATAL: Failed to create user namespace' >&2; exit 255")
    configured = {"container": container_settings(runtime, tmp_path, ())}
    state = StateDir(str(tmp_path / "state"))
    for run in range(1, RUNS + 1):
        result = run_probes([ContainerProbe()], configured, 8.0, state=state, force=True).results[0]
        assert "Failed to create user namespace" in result.reason
        started = [int(pid) for pid in pids.read_text().split()]
        assert len(started) == run and pids_alive(started) == [], started


def test_touched_repositories():
    settings = {"cvmfs_root": "/cvmfs", "cvmfs": True, "cvmfs_repositories": ("a.org", "b.org"),
                "binds": ("/cvmfs/c.org/sw", "/cvmfs", "/data", "/cvmfs/a.org")}
    assert launch_guard.touched_repositories(settings) == ("a.org", "b.org", "c.org")
    assert launch_guard.touched_repositories(dict(settings, cvmfs=False)) == ("c.org", "a.org")
    assert launch_guard.touched_repositories(dict(settings, cvmfs=False), "/cvmfs/img.org/el9:latest") == (
        "img.org", "c.org", "a.org")
    assert launch_guard.touched_repositories(dict(settings, cvmfs=False, binds=()), "/opt/el9.sif") == ()
