"""The pre-job hook's cheap re-checks, through the real CLI (`python -m startd_health hook prepare-job`).

Every test but the last two gives the hook a FRESH periodic result saying the
site image launches: before these re-checks the hook accepted such a job at
once, whatever had happened to the node since. Simulated: the periodic
result (written into the state directory as the cron run writes it), the
runtime (a script that notes each call: nothing may be launched), and the
CVMFS repositories (a directory that is not a mount stands for an unmounted
repository; a REAL FUSE mount whose server never answers, tests/cvmfs_sim.py,
for a hung one). The image is a SIF header over a megabyte, and a truncated
copy of it: files with a SIF header (sif_bytes).
"""

import os
import pathlib
import shutil
import struct
import subprocess
import sys
import tempfile
import time

import pytest

import startd_health

from startd_health.core.model import ProbeResult, Status
from startd_health.core.state import StateDir
from startd_health.monitor.hook import EXIT_ACCEPT, EXIT_HOLD, RECHECK_TIMEOUT, extra_bind_sources, judge_recheck
from startd_health.system.procfs import Mount
from tests.unit.test_cvmfs import hung  # noqa: F401  (the hung-mount fixture: a real FUSE mount)

def sif_bytes(size=1 << 20):
    """A file with a SIF global header (what the hook reads of it: launch line, magic, and the data
    offset and length fields) whose data fills the rest of the file: a whole image, as far as the
    header can tell. The real Apptainer launch of real images is in tests/e2e."""
    head = b"#!/usr/bin/env run-singularity\n".ljust(32, b"\0") + b"SIF_MAGIC\0" + b"01\0" + b"02\0"
    head = head.ljust(112, b"\0") + struct.pack("<qq", 4096, size - 4096)
    return head.ljust(size, b"\0")


@pytest.fixture
def node(tmp_path):
    return make_node(tmp_path)


def make_node(tmp_path):
    """A node: site image, runtime that notes calls, state directory with a fresh 'image launches' result."""
    site = tmp_path / "site"
    site.mkdir()
    image = site / "el9.sif"
    image.write_bytes(sif_bytes())
    calls = tmp_path / "calls"
    runtime = tmp_path / "apptainer"
    runtime.write_text(f"#!/bin/sh\necho \"$@\" >> {calls}\nexit 0\n")
    runtime.chmod(0o755)
    state = tmp_path / "state"
    saved = StateDir(str(state))
    saved.ensure()
    saved.save(ProbeResult("container", Status.OK, "", {"images_ok": ("el9",)},
                                          started_at=time.time() - 5, duration_seconds=1))
    return {"tmp": tmp_path, "image": image, "runtime": runtime, "calls": calls, "state": state,
            "cvmfs": tmp_path / "cvmfs"}


def hook(node, image=None, *extra, timeout=60):
    argv = [sys.executable, "-m", "startd_health", "hook", "prepare-job", "--no-condor-config",
            "--state-dir", str(node["state"]), "--container-runtime", str(node["runtime"]),
            "--container-images", f"el9={node['image']}", "--cvmfs-root", str(node["cvmfs"]), *extra]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("_CONDOR_", "CONDOR_CONFIG"))}
    start = time.monotonic()
    proc = subprocess.run(argv, input=f'SingularityImage = "{image or node["image"]}"\n', env=env,
                          capture_output=True, text=True, timeout=timeout)
    return proc, time.monotonic() - start


def requeued(proc):
    return proc.returncode == EXIT_ACCEPT and "HookStatusCode = 300" in proc.stdout


def test_fresh_result_and_nothing_changed_accepts_without_launching(node):
    proc, _ = hook(node)
    assert proc.returncode == EXIT_ACCEPT and "HookStatusCode" not in proc.stdout, proc.stdout + proc.stderr
    assert "image el9 launches (periodic test" in proc.stdout
    assert not node["calls"].exists()


def test_site_image_gone_since_the_periodic_run_requeues_at_once(node):
    node["image"].rename(str(node["image"]) + ".off")
    proc, _ = hook(node)
    assert requeued(proc), proc.stdout + proc.stderr
    assert f"site image el9 ({node['image']}) is not usable by the job's user: No such file" in proc.stdout
    assert not node["calls"].exists()


def test_site_image_truncated_requeues_the_jobs_own_truncated_image_is_held(node):
    data = node["image"].read_bytes()
    node["image"].write_bytes(data[:65536])
    proc, _ = hook(node)
    assert requeued(proc) and "truncated SIF image (65536 bytes" in proc.stdout, proc.stdout
    own = node["tmp"] / "mine.sif"
    own.write_bytes(data[:4096])
    proc, _ = hook(node, own)
    assert proc.returncode == EXIT_HOLD and "HookStatusCode" not in proc.stdout, proc.stdout
    assert f"the job's image {own} is not usable by the job's user: truncated SIF image" in proc.stdout
    assert not node["calls"].exists()


def test_runtime_gone_or_not_executable_requeues(node):
    node["runtime"].chmod(0o644)
    proc, _ = hook(node)
    assert requeued(proc) and f"the container runtime {node['runtime']} is not usable" in proc.stdout, proc.stdout
    node["runtime"].unlink()
    proc, _ = hook(node)
    assert requeued(proc) and "No such file or directory" in proc.stdout, proc.stdout


def test_a_repository_the_job_needs_that_is_not_mounted_requeues(node):
    """The configured repository, and the one holding the job's image, must be CVMFS mounts in
    /proc/self/mounts (a plain directory is what an unmounted repository leaves behind)."""
    (node["cvmfs"] / "sw.example.org").mkdir(parents=True)
    proc, _ = hook(node, None, "--cvmfs-repositories", "sw.example.org")
    assert requeued(proc), proc.stdout
    assert "CVMFS repository sw.example.org is not mounted" in proc.stdout
    proc, _ = hook(node, str(node["cvmfs"] / "img.example.org" / "el9.sif"))
    assert requeued(proc) and "CVMFS repository img.example.org is not mounted" in proc.stdout, proc.stdout


def test_an_image_the_runtime_fetches_is_not_looked_for_on_disk(node):
    proc, _ = hook(node, "docker://example.org/el9:latest")
    assert "is not usable" not in proc.stdout and "HookStatusCode" not in proc.stdout, proc.stdout
    assert "docker://example.org/el9:latest" in node["calls"].read_text()   # launched now, as before


def python_for_nobody():
    """This Python, or the system's when this one lives where nobody may not go (e.g. under /root)."""
    for python in (sys.executable, "/usr/bin/python3"):
        try:
            if subprocess.run([python, "-c", ""], user=65534, group=65534, cwd="/", capture_output=True,
                              timeout=30).returncode == 0:
                return python
        except OSError:
            continue
    return None


@pytest.mark.root
def test_site_image_readable_by_condor_but_not_by_job_users_requeues():
    """The hook runs as the job's user: what that user cannot read, the job cannot either."""
    top = tempfile.mkdtemp(prefix="hook-rechecks-", dir="/tmp")   # pytest's tmp_path is not nobody's to enter
    try:
        os.chmod(top, 0o755)
        node = make_node(pathlib.Path(top))
        for path in (node["tmp"] / "site", node["state"]):
            path.chmod(0o755)
        node["image"].chmod(0o600)
        run_as_nobody(node)
    finally:
        shutil.rmtree(top, ignore_errors=True)


def run_as_nobody(node):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("_CONDOR_", "CONDOR_CONFIG"))}
    env["PYTHONPATH"] = os.path.dirname(os.path.dirname(startd_health.__file__))   # the package only (stdlib)
    python = python_for_nobody()
    if python is None:
        pytest.skip("no Python here that the user nobody may run")
    argv = [python, "-m", "startd_health", "hook", "prepare-job", "--no-condor-config",
            "--state-dir", str(node["state"]), "--container-runtime", str(node["runtime"]),
            "--container-images", f"el9={node['image']}", "--cvmfs-root", str(node["cvmfs"])]
    proc = subprocess.run(argv, input=f'SingularityImage = "{node["image"]}"\n', env=env, capture_output=True,
                          text=True, timeout=60, user=65534, group=65534, cwd="/")
    assert requeued(proc), proc.stdout + proc.stderr
    assert "site image el9" in proc.stdout and "Permission denied" in proc.stdout


@pytest.mark.root
def test_an_image_on_a_hung_repository_requeues_within_the_budget(node, hung):
    """A real FUSE mount (cvmfs2, so it IS in /proc/self/mounts as a CVMFS repository) that never answers:
    the hook's child blocks on it; the hook answers within its budget instead of hanging the starter."""
    hung(node["cvmfs"] / "hung.example.org")
    proc, seconds = hook(node, str(node["cvmfs"] / "hung.example.org" / "el9.sif"), timeout=60)
    assert requeued(proc), proc.stdout + proc.stderr
    assert f"did not answer within {RECHECK_TIMEOUT:g}s: {node['cvmfs']}/hung.example.org (a hung mount" in proc.stdout
    # budget, then SIGTERM, 1 s grace, SIGKILL, 1 s reap wait (system/procs.py), plus the CLI's start
    assert seconds < RECHECK_TIMEOUT + 2 + 3, seconds
    assert not node["calls"].exists()


def test_judge_repositories_are_judged_on_the_mount_table_read_after_the_access():
    cvmfs = Mount("cvmfs2", "/cvmfs/a.org", "fuse")
    answer = {"kind": "d", "path": "/cvmfs/a.org", "ok": True, "realpath": "/cvmfs/a.org"}
    assert judge_recheck("", "", ["a.org"], "/cvmfs", [answer], [], 5, {"/cvmfs/a.org": cvmfs}, "") is None
    tmpfs = {"/cvmfs/a.org": Mount("tmpfs", "/cvmfs/a.org", "tmpfs")}
    found = judge_recheck("", "", ["a.org"], "/cvmfs", [answer], [], 5, tmpfs, "")
    assert found.node_fault and "a tmpfs mount" in found.message and "cvmfs" in found.probes
    broken = dict(answer, ok=False, error="Transport endpoint is not connected")
    found = judge_recheck("", "", ["a.org"], "/cvmfs", [broken], [], 5, {"/cvmfs/a.org": cvmfs}, "")
    assert "does not answer: Transport endpoint" in found.message
    found = judge_recheck("", "", ["a.org"], "/cvmfs", [], ["d:/cvmfs/a.org"], 5, None, "")
    assert "did not answer within 5s: /cvmfs/a.org (a hung mount" in found.message


@pytest.fixture
def daemon_socket(node):
    """The daemon's own re-check server (monitor/recheck.py) on the node's state directory; what it
    is asked is recorded instead of queueing probe runs (no daemon runs here)."""
    from startd_health.monitor.recheck import RecheckServer
    asked = []

    def handle(probes):
        asked.append(list(probes))
        return "queued " + " ".join(probes)
    server = RecheckServer(str(node["state"]), ["container", "userns"], handle)
    assert server.start() == ""
    yield asked
    server.close()


def test_a_site_fault_pokes_the_daemon_so_that_the_node_is_fenced(node, daemon_socket):
    node["image"].unlink()
    proc, _ = hook(node)
    assert requeued(proc), proc.stdout
    assert daemon_socket == [["container"]]
    assert "the startd-health daemon was asked to re-check (queued container)" in proc.stdout
    # A repository fault asks for the cvmfs probe too; a daemon that does not run it is asked for all.
    (node["cvmfs"] / "sw.example.org").mkdir(parents=True)
    node["image"].write_bytes(sif_bytes())
    proc, _ = hook(node, None, "--cvmfs-repositories", "sw.example.org")
    assert requeued(proc) and "not mounted" in proc.stdout, proc.stdout
    assert daemon_socket[1:] == [["container", "userns"]]   # after 'unknown probe cvmfs'


def test_nothing_wrong_asks_the_daemon_nothing(node, daemon_socket):
    proc, _ = hook(node)
    assert proc.returncode == EXIT_ACCEPT and "HookStatusCode" not in proc.stdout, proc.stdout
    assert daemon_socket == []


def test_a_full_scratch_directory_requeues(node, tmp_path):
    """The starter's $_CONDOR_SCRATCH_DIR; the full EXECUTE is simulated by a threshold above the free
    space of the scratch directory's real filesystem."""
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    free = os.statvfs(scratch).f_bavail * os.statvfs(scratch).f_frsize
    hook_env = {k: v for k, v in os.environ.items() if not k.startswith(("_CONDOR_", "CONDOR_CONFIG"))}
    argv = [sys.executable, "-m", "startd_health", "hook", "prepare-job", "--no-condor-config",
            "--state-dir", str(node["state"]), "--container-runtime", str(node["runtime"]),
            "--container-images", f"el9={node['image']}", "--cvmfs-root", str(node["cvmfs"]),
            "--execute-full-mb", str(free * 2 // 2**20 + 1)]
    proc = subprocess.run(argv, input=f'SingularityImage = "{node["image"]}"\n', capture_output=True, text=True,
                          env=dict(hook_env, _CONDOR_SCRATCH_DIR=str(scratch)), timeout=60)
    assert requeued(proc), proc.stdout + proc.stderr
    assert f"{scratch} (the job's scratch directory) is full" in proc.stdout
    proc = subprocess.run(argv[:-2], input=f'SingularityImage = "{node["image"]}"\n', capture_output=True,
                          text=True, env=dict(hook_env, _CONDOR_SCRATCH_DIR=str(scratch)), timeout=60)
    assert proc.returncode == EXIT_ACCEPT and "HookStatusCode" not in proc.stdout, proc.stdout


def test_the_bind_sources_of_singularity_extra_arguments():
    """Pure logic: HTCondor's configuration stands in as a dict."""
    condor = {"SINGULARITY_EXTRA_ARGUMENTS": "-B /opt/site/data:/data,/srv:/srv:ro --bind=/etc --nv --bind rel:/x"}
    assert extra_bind_sources(condor) == ["/opt/site/data", "/srv", "/etc"]
    assert extra_bind_sources({"SINGULARITY_EXTRA_ARGUMENTS": "\"-B '/a b:/c'\""}) == ["/a b"]   # the V2 syntax
    assert extra_bind_sources({}) == []


def test_judge_a_missing_bind_source_is_a_site_fault():
    found = judge_recheck("", "", [], "/cvmfs", [{"kind": "e", "path": "/opt/site/data", "ok": False,
                                                  "error": "No such file or directory"}], [], 5, {}, "")
    assert found.node_fault and "SINGULARITY_EXTRA_ARGUMENTS binds /opt/site/data" in found.message


# ---------------------------------------------------------------- jobs that ask for a platform (55 snippet)

PLATFORM_EXPR = 'ifThenElse(isString(TARGET.REQUIRED_OS), eval(strcat("MY.StartdHealthContainerImage_", "rhel9")), ' \
                'SingularityImage)'


def test_the_image_a_platform_job_gets_is_the_one_the_snippet_picks():
    from startd_health.monitor.hook import platform_image

    from .helpers import FakeCondor
    cached = ProbeResult("container", Status.OK, "", {"image_by_platform": ("rhel9=/img/el9.sif",
                                                                            "debian13=/img/trixie.sif",
                                                                            "default=/img/trixie.sif")})
    snippet = FakeCondor(SINGULARITY_IMAGE_EXPR=PLATFORM_EXPR)
    assert platform_image({"REQUIRED_OS": "rhel9"}, cached, snippet) == "/img/el9.sif"
    assert platform_image({"REQUIRED_OS": "RHEL8, debian13"}, cached, snippet) == "/img/trixie.sif"
    assert platform_image({"REQUIRED_OS": "any"}, cached, snippet) == "/img/trixie.sif"
    assert platform_image({"REQUIRED_OS": "rhel7"}, cached, snippet) == ""           # START keeps it off
    assert platform_image({}, cached, snippet) == ""
    # Without the snippet a REQUIRED_OS job runs without a container: nothing to check.
    assert platform_image({"REQUIRED_OS": "rhel9"}, cached, FakeCondor(SINGULARITY_IMAGE_EXPR="SingularityImage")) == ""
    assert platform_image({"REQUIRED_OS": "rhel9"}, cached, None) == ""


@pytest.mark.bindings
def test_a_platform_jobs_image_gone_requeues_through_the_real_cli(node):
    """The real hook, HTCondor's configuration read from a file (the 55
    snippet's SINGULARITY_IMAGE_EXPR), a job ad with REQUIRED_OS only."""
    pytest.importorskip("htcondor2")
    saved = StateDir(str(node["state"]))
    saved.save(ProbeResult("container", Status.OK, "", {"images_ok": ("el9",), "platforms": ("rhel9",),
                                                        "image_by_platform": (f"rhel9={node['image']}",)},
                           started_at=time.time() - 5, duration_seconds=1))
    config = node["tmp"] / "condor_config"
    config.write_text(f"SINGULARITY_IMAGE_EXPR = {PLATFORM_EXPR}\n")
    argv = [sys.executable, "-m", "startd_health", "hook", "prepare-job",
            "--state-dir", str(node["state"]), "--container-runtime", str(node["runtime"]),
            "--container-images", f"el9={node['image']}", "--cvmfs-root", str(node["cvmfs"])]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("_CONDOR_", "CONDOR_CONFIG"))}
    env["CONDOR_CONFIG"] = str(config)

    def run():
        return subprocess.run(argv, input='REQUIRED_OS = "rhel9"\n', env=env, capture_output=True, text=True,
                              timeout=60)
    proc = run()
    assert proc.returncode == EXIT_ACCEPT and "image el9 launches (periodic test" in proc.stdout, \
        proc.stdout + proc.stderr
    node["image"].rename(str(node["image"]) + ".off")
    proc = run()
    assert requeued(proc) and f"site image el9 ({node['image']})" in proc.stdout, proc.stdout + proc.stderr
    assert not node["calls"].exists()
