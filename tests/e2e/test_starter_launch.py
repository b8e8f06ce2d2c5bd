"""The container probe launches as HTCondor's starter does, checked against
a REAL starter (HTCondor 23.9.6 and 25.14.1, real Apptainer): the command
line the probe used equals the one the starter logs for a real container
job with the same image, and faults of the execute directory make the node
refuse jobs while a full /tmp (which jobs never use) does not.

Simulated: nothing but the faults themselves, made in the pool's own mount
namespace (EXECUTE is a tmpfs there, remounted read-only; /tmp is covered by
a full tmpfs with the pool's /tmp/condor bound back into it).
"""

import contextlib
import re
import subprocess
import time

import pytest

from .conftest import ENTRY_POINTS, started_pool

pytestmark = pytest.mark.e2e

EXECUTE = "/var/lib/condor/execute"
CONF = """\
STARTD_HEALTH_CRON_PERIOD = 5
STARTD_HEALTH_PROBES = container execute
STARTD_HEALTH_CONTAINER_REQUIREMENT = REQUIRED
STARTD_HEALTH_CONTAINER_PERIOD = 1
STARTD_HEALTH_EXECUTE_PERIOD = 1
STARTD_HEALTH_CONTAINER_IMAGES = site=/opt/containers/site.sif
# The starter's own knobs, as a site sets them.
SINGULARITY_BIND_EXPR = "/srv/data"
MOUNT_UNDER_SCRATCH = /tmp,/var/tmp
STARTER_DEBUG = D_FULLDEBUG
# FS authentication (condor_submit to the schedd) uses /tmp by default: not
# with /tmp full in this one-machine pool, where the schedd shares the node.
FS_LOCAL_DIR = /var/lib/condor/fsauth
"""
SNIPPETS = {"mix": ("50-startd-health.conf",),
            "sid": ("50-startd-health.conf", "51-startd-health-healthexprs.conf")}
# EXECUTE on a filesystem of its own, so that it can be remounted read-only.
PRE_START = f"""
mount -t tmpfs -o size=4g,mode=0755 tmpfs {EXECUTE} && chown condor:condor {EXECUTE}
mkdir -p /srv/data && install -d -m 1777 /var/lib/condor/fsauth
"""
JOB = """\
universe = container
container_image = /opt/containers/site.sif
transfer_container = false
executable = /bin/cat
arguments = /etc/motd
transfer_executable = false
should_transfer_files = YES
log = starter.log
output = starter.out
queue
"""
SLOT_DIR = re.compile(r"\S+/dir_\d+(?=/|\s|$)")   # the starter's slot directory; ours is published as <slot>


@pytest.fixture(scope="module", params=["mix", "sid"], ids=["condor23.9", "condor25.14"])
def pool(request):
    with started_pool(request.param, SNIPPETS[request.param], ENTRY_POINTS + CONF, PRE_START) as pool:
        yield pool


def in_pool(pool, script, check=True):
    """A shell script in the pool's own mount namespace (where EXECUTE's tmpfs is)."""
    proc = subprocess.run(["nsenter", "-t", str(pool.master_pid()), "-m", "--", "/bin/sh", "-c", script],
                          capture_output=True, text=True, timeout=30, env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin"})
    if check and proc.returncode != 0:
        raise AssertionError(f"{script!r} exited {proc.returncode}: {proc.stderr}")
    return proc


@contextlib.contextmanager
def refusing(pool, inject, repair, what, *attributes):
    """Inject a fault (a script in the pool's namespace): the node must
    refuse (the slot ad, with attributes, is yielded for the caller's
    asserts) and a job submitted then must stay idle; after the repair the
    node accepts again and that job runs."""
    in_pool(pool, inject)
    try:
        yield pool.slot_where(*attributes, timeout=30, StartdHealthOk=False)
        queued = pool.submit(JOB)
        time.sleep(8)
        assert pool.job_status(queued) == 1, f"a job started on {what}"
    finally:
        in_pool(pool, repair)
    pool.slot_where(timeout=30, StartdHealthOk=True)
    pool.wait_for(lambda: pool.job_status(queued) == 4, 60, f"job {queued}, queued during {what}, to run")


def normalised(command_line):
    """Tokens up to the image, the slot directory's name made generic."""
    tokens = SLOT_DIR.sub("<slot>", command_line).split()
    return tokens[:tokens.index("/opt/containers/site.sif") + 1]


def test_probe_launch_equals_the_starters_and_execute_faults_refuse_jobs(pool):
    t0 = time.monotonic()
    ad = pool.slot_where("StartdHealthContainerLaunchArgv", "StartdHealthContainerSifMode", "StartdHealthExecuteDirs",
              "StartdHealthContainerJobUser", StartdHealthOk=True, StartdHealthContainerLaunch="starter")
    assert ad["StartdHealthExecuteDirs"] == [EXECUTE]
    assert ad["StartdHealthContainerJobUser"] == "nobody"
    ours = ad["StartdHealthContainerLaunchArgv"]

    job = pool.submit(JOB)
    pool.wait_for(lambda: pool.job_status(job) == 4, 60, f"container job {job} to complete")
    logs = pool.sh("cat /tmp/condor/log/StarterLog*").stdout
    lines = [line.split("Arguments updated for executing with singularity: ", 1)[1]
             for line in logs.splitlines() if "Arguments updated for executing with singularity: " in line]
    assert lines, logs[-3000:]
    theirs = lines[-1]
    print(f"[{pool.variant}] starter: {theirs}\n[{pool.variant}] probe:   {ours}")
    assert normalised(ours) == normalised(theirs)
    assert "-B /srv/data" in ours and "-S /tmp" in ours
    # The starter's pre-job test is the same line with `-q test` for `exec`.
    tests = [line.split(" cmd is ", 1)[1] for line in logs.splitlines() if "singularity test for job" in line]
    assert tests and normalised(tests[-1]) == normalised(ours.replace(" exec ", " -q test ", 1))

    # A bind in SINGULARITY_EXTRA_ARGUMENTS whose source is gone: refused, naming the argument.
    pool.write("/etc/condor/config.d/99-test.conf", ENTRY_POINTS + CONF + "SINGULARITY_EXTRA_ARGUMENTS = --bind /gone:/data\n")
    pool.reconfig()
    try:
        ad = pool.slot_where("StartdHealthContainerReason", timeout=30, StartdHealthOk=False)
        assert "launch with SINGULARITY_EXTRA_ARGUMENTS --bind /gone:/data: " in ad["StartdHealthContainerReason"]
        assert "/gone" in ad["StartdHealthContainerReason"].split(": ", 3)[-1]   # the runtime's own complaint
    finally:
        pool.write("/etc/condor/config.d/99-test.conf", ENTRY_POINTS + CONF)
        pool.reconfig()
    pool.slot_where(timeout=30, StartdHealthOk=True)

    # EXECUTE remounted read-only (a filesystem after errors): refused, naming it.
    with refusing(pool, f"mount -o remount,ro {EXECUTE}", f"mount -o remount,rw {EXECUTE}", "a read-only EXECUTE",
                  "StartdHealthExecuteReason", "StartdHealthContainerReason",
                  "StartdHealthExecuteDirsFailed") as ad:
        assert ad["StartdHealthExecuteDirsFailed"] == [EXECUTE]
        assert f"{EXECUTE} (EXECUTE) is on a read-only filesystem" in ad["StartdHealthExecuteReason"]
        # The starter's launch cannot make its scratch directory either, as the real starter cannot.
        assert (f"cannot create a job scratch directory in EXECUTE {EXECUTE}: Read-only file system"
                in ad["StartdHealthContainerReason"])

    # EXECUTE full (a real ENOSPC: a 1 MiB tmpfs of the condor user's over
    # it, filled to its last byte): refused, naming it.
    with refusing(pool, f"mount -t tmpfs -o size=1m,mode=0755 tmpfs {EXECUTE} && chown condor:condor {EXECUTE} && "
                        f"(head -c 2m /dev/zero > {EXECUTE}/.fill 2>/dev/null || true)",
                  f"umount -l {EXECUTE}", "a full EXECUTE", "StartdHealthExecuteReason") as ad:
        assert f"{EXECUTE} (EXECUTE) is full: " in ad["StartdHealthExecuteReason"], ad

    # /tmp full: jobs never use it (the starter gives the runtime a scratch
    # directory on EXECUTE), so the node must keep taking jobs.
    in_pool(pool, "mkdir -p /run/keep-condor && mount --bind /tmp/condor /run/keep-condor && "
                  "mount -t tmpfs -o size=64k tmpfs /tmp && mkdir /tmp/condor && "
                  "mount --bind /run/keep-condor /tmp/condor && "
                  "(head -c 1m /dev/zero > /tmp/filler 2>/dev/null || true)")
    try:
        before = pool.slot_where("StartdHealthTimestamp", StartdHealthOk=True)["StartdHealthTimestamp"]
        # Two more verdicts, each with a fresh launch (CONTAINER_PERIOD = 1), still healthy.
        pool.wait_for(lambda: (pool.slot_where("StartdHealthTimestamp", StartdHealthOk=True)["StartdHealthTimestamp"]
                               >= before + 10), 40, "two more healthy verdicts with /tmp full")
        ad = pool.slot_where("StartdHealthContainerStatus", StartdHealthOk=True)
        assert ad["StartdHealthContainerStatus"] == "ok"
        during = pool.submit(JOB)
        pool.wait_for(lambda: pool.job_status(during) == 4, 60, f"job {during} to run with /tmp full")
    finally:
        in_pool(pool, "umount -l /tmp/condor; umount -l /tmp; umount -l /run/keep-condor", check=False)
    print(f"[{pool.variant}] starter launch e2e: {time.monotonic() - t0:.0f}s")
