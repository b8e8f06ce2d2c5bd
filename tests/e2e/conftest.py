"""End-to-end fixtures: a real HTCondor pool and real Apptainer (tests/realpool).

These tests never skip silently: if the root filesystem cannot be built they
fail with the reason. Set STARTD_HEALTH_SKIP_E2E=1 to opt out explicitly.
"""

import contextlib
import os

import pytest

from tests.realpool.pool import RealPool

# Test overrides on top of the project's own packaging/condor snippets: a fast
# cron period so that the test sees changes in seconds, and the two forms of
# image (SIF and Apptainer sandbox directory).
CRON_PERIOD = 5
REPO = "oasis.opensciencegrid.org"
TEST_CONF = f"""\
STARTD_HEALTH_CRON_PERIOD = {CRON_PERIOD}
STARTD_HEALTH_CONTAINER_REQUIREMENT = REQUIRED
STARTD_HEALTH_CONTAINER_PERIOD = 1
STARTD_HEALTH_CONTAINER_IMAGES = sif=/opt/containers/site.sif sandbox=/opt/containers/sandbox
STARTD_HEALTH_CONTAINER_FLAGS = --ipc --pid --contain --bind /cvmfs
STARTD_HEALTH_CONTAINER_BINDS = /cvmfs/{REPO}
STARTD_HEALTH_CVMFS_REPOSITORIES = {REPO}
STARTD_HEALTH_CVMFS_PERIOD = 1
STARTD_HEALTH_CVMFS_QUARANTINE = 0
"""
# CVMFS has no client here. SIMULATED repository: a squashfs image carrying the
# user.* extended attributes a CVMFS mount exposes, mounted through real FUSE
# (squashfuse) with the source name cvmfs2, in the pool's own mount namespace,
# so that the startd's cron job and Apptainer (--bind /cvmfs) see it as a
# mounted repository. A HUNG repository is simulated in tests/unit/test_cvmfs.py.
SIMULATED_CVMFS = f"""
rm -rf /tmp/cvmfs-src && mkdir -p /tmp/cvmfs-src/repo/software && echo hello > /tmp/cvmfs-src/repo/README
for kv in revision=4242 fqrn={REPO} nioerr=0 timestamp_last_ioerr=0 version=2.11.5; do
  setfattr -n user.${{kv%%=*}} -v ${{kv#*=}} /tmp/cvmfs-src/repo
done
mkdir -p /opt/cvmfs-sim /cvmfs/{REPO}
mksquashfs /tmp/cvmfs-src/repo /opt/cvmfs-sim/repo.sqfs -noappend -quiet -xattrs >/dev/null
squashfuse -o allow_other,fsname=cvmfs2 /opt/cvmfs-sim/repo.sqfs /cvmfs/{REPO}
"""
SNIPPETS = {"mix": ("50-startd-health.conf", "53-startd-health-hook.conf"),
            "sid": ("50-startd-health.conf", "51-startd-health-healthexprs.conf", "53-startd-health-hook.conf")}
ENTRY_POINTS = "STARTD_HEALTH_CRON = /opt/startd-health/venv/bin/startd-health-cron\n"


def pytest_collection_modifyitems(config, items):
    if os.environ.get("STARTD_HEALTH_SKIP_E2E"):
        skip = pytest.mark.skip(reason="STARTD_HEALTH_SKIP_E2E is set: end-to-end tests explicitly opted out")
        for item in items:
            if "e2e" in item.keywords:
                item.add_marker(skip)


@contextlib.contextmanager
def started_pool(variant: str, snippets, extra: str, pre_start: str = ""):
    """A running pool with this checkout installed, the site image, the given
    packaging snippets and test overrides; stopped (with all it started) after."""
    pool = RealPool(variant)
    pool.build()
    pool.install_project()
    pool.sh("cp /opt/containers/test.sif /opt/containers/site.sif && chmod 644 /opt/containers/site.sif")
    pool.configure(*snippets, extra=extra)
    pool.start(pre_start=pre_start)
    try:
        yield pool
    finally:
        pool.stop()


@pytest.fixture(scope="module", params=["mix", "sid"], ids=["condor23.9", "condor25.14"])
def pool(request):
    with started_pool(request.param, SNIPPETS[request.param], ENTRY_POINTS + TEST_CONF, SIMULATED_CVMFS) as pool:
        yield pool


def set_extra_conf(pool, extra: str) -> None:
    """Change the test overrides and make the startd (and our cron job) re-read them."""
    pool.write("/etc/condor/config.d/99-test.conf", ENTRY_POINTS + TEST_CONF + extra)
    pool.reconfig()
