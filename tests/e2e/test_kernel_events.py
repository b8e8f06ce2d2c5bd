"""Kernel events on a real startd (HTCondor 23.9): a recorded read-only remount
in the kernel log makes the node refuse new jobs until the filesystem is
writable again.

What is SIMULATED: the kernel log is a file in /dev/kmsg's format
(STARTD_HEALTH_KERNEL_LOG; nothing is written into the host's kernel log) holding
a message recorded on a real machine (`EXT4-fs (sdb7): Remounting filesystem
read-only`, see tests/unit/test_kernel.py) with the device renamed sdz9; the
filesystem is a tmpfs mounted read-only under the source name /dev/sdz9 in the
pool's mount namespace, so /proc/self/mounts reads as for a real disk; the
repair is `mount -o remount,rw`. Everything else is real: the startd, its
STARTD_CRON job as the condor user, the START gate, the negotiator, the job.

One pool of its own (instance "kernel", own ports and copy): the module's only
pool start, about a minute in all.
"""

import re
import subprocess
import time

import pytest

from tests.realpool.pool import RealPool

from .conftest import ENTRY_POINTS

pytestmark = pytest.mark.e2e

LOG = "/var/lib/kmsg-test/kmsg"
MOUNT = "/mnt/data"
CONF = f"""\
STARTD_HEALTH_CRON_PERIOD = 5
STARTD_HEALTH_PROBES = kernel
STARTD_HEALTH_KERNEL_PERIOD = 1
STARTD_HEALTH_KERNEL_LOG = {LOG}
"""
JOB = """\
executable = /bin/true
should_transfer_files = NO
log = job.log
queue
"""


@pytest.fixture(scope="module")
def pool():
    pool = RealPool("mix", instance="kernel")
    pool.build()
    pool.install_project()
    pool.sh(f"install -d -m 0755 /var/lib/kmsg-test && : > {LOG} && chmod 0644 {LOG}")
    pool.configure("50-startd-health.conf", extra=ENTRY_POINTS + CONF)
    pool.start(pre_start=f"mkdir -p {MOUNT} && mount -t tmpfs -o ro,size=1m /dev/sdz9 {MOUNT}")
    try:
        yield pool
    finally:
        pool.stop()


def verdict(pool, ok):
    def check():
        for ad in pool.slots("StartdHealthOk", "StartdHealthFailedProbes", "StartdHealthReason",
                             "StartdHealthKernelStatus", "StartdHealthKernelFilesystemsReadonly"):
            if ad.get("StartdHealthOk") is ok and "StartdHealthKernelStatus" in ad:
                return ad
        return None
    return pool.wait_for(check, 60, f"StartdHealthOk = {ok} with a kernel probe result")


def in_pool_namespace(pool, script):
    """Run a script in the pool's own mount namespace (where its daemons live), as root."""
    proc = subprocess.run(["nsenter", "-t", str(pool.master_pid()), "-m", "--", "/bin/sh", "-c", script],
                          capture_output=True, text=True, timeout=30, env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin"})
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def test_a_read_only_remount_refuses_jobs_until_the_filesystem_is_writable(pool):
    healthy = verdict(pool, True)
    assert healthy["StartdHealthKernelStatus"] == "ok"

    # The kernel's message, logged 5 s ago by the (shared) kernel's clock.
    with open("/proc/uptime") as handle:
        usec = int((float(handle.read().split()[0]) - 5) * 1e6)
    with open(pool.path(LOG), "a") as handle:
        handle.write(f"2,1,{usec},-;EXT4-fs (sdz9): Remounting filesystem read-only\n")
    t_fault = time.monotonic()
    ad = verdict(pool, False)
    print(f"[{pool.variant}] kernel message -> StartdHealthOk false in {time.monotonic() - t_fault:.1f}s")
    assert ad["StartdHealthFailedProbes"] == ["kernel"]
    assert ad["StartdHealthKernelFilesystemsReadonly"] == ["sdz9"]
    assert f'{MOUNT} (sdz9) is still read-only' in ad["StartdHealthReason"]
    assert '"EXT4-fs (sdz9): Remounting filesystem read-only"' in ad["StartdHealthReason"]

    job = pool.submit(JOB)
    idle_since = time.monotonic()
    while time.monotonic() - idle_since < 12:   # several negotiation cycles
        assert pool.job_status(job) == 1, "a job started on a node with a read-only filesystem"
        time.sleep(1)
    analysis = pool.analyze(job)
    assert re.search(r"1 (slots )?reject your job because of their own requirements", analysis), analysis

    in_pool_namespace(pool, f"mount -o remount,rw {MOUNT}")     # the admin's repair
    t_repair = time.monotonic()
    ad = verdict(pool, True)
    assert ad["StartdHealthKernelFilesystemsReadonly"] == []
    pool.wait_for(lambda: pool.job_status(job) in (2, 4), 120, f"job {job} to start once writable")
    print(f"[{pool.variant}] remount rw -> job started in {time.monotonic() - t_repair:.1f}s")
    pool.wait_for(lambda: pool.job_status(job) == 4, 90, f"job {job} to complete")
