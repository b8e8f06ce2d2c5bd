"""End-to-end fixtures: a real HTCondor pool and real Apptainer (tests/realpool).

These tests never skip silently: if the root filesystem cannot be built they
fail with the reason. Set STARTD_HEALTH_SKIP_E2E=1 to opt out explicitly.
"""

import os

import pytest

from tests.realpool.pool import RealPool

# Test overrides on top of the project's own packaging/condor snippets: a fast
# cron period so that the test sees changes in seconds, and the two forms of
# image (SIF and Apptainer sandbox directory).
CRON_PERIOD = 5
TEST_CONF = f"""\
STARTD_HEALTH_CRON_PERIOD = {CRON_PERIOD}
STARTD_HEALTH_CONTAINER_PERIOD = 1
STARTD_HEALTH_CONTAINER_IMAGES = sif=/opt/containers/site.sif sandbox=/opt/containers/sandbox
"""
SNIPPETS = {"mix": ("50-startd-health.conf", "53-startd-health-hook.conf"),
            "sid": ("50-startd-health.conf", "51-startd-health-healthexprs.conf", "53-startd-health-hook.conf")}
ENTRY_POINTS = ("STARTD_HEALTH_CRON = /opt/startd-health/venv/bin/startd-health-cron\n"
                "STARTD_HEALTH_HOOK = /opt/startd-health/venv/bin/startd-health\n")


def pytest_collection_modifyitems(config, items):
    if os.environ.get("STARTD_HEALTH_SKIP_E2E"):
        skip = pytest.mark.skip(reason="STARTD_HEALTH_SKIP_E2E is set: end-to-end tests explicitly opted out")
        for item in items:
            if "e2e" in item.keywords:
                item.add_marker(skip)


@pytest.fixture(scope="module", params=["mix", "sid"], ids=["condor23.9", "condor25.14"])
def pool(request):
    pool = RealPool(request.param)
    pool.build()
    pool.install_project()
    pool.sh("cp /opt/containers/test.sif /opt/containers/site.sif && chmod 644 /opt/containers/site.sif")
    pool.configure(*SNIPPETS[request.param], extra=ENTRY_POINTS + TEST_CONF)
    pool.start()
    try:
        yield pool
    finally:
        pool.stop()


def set_extra_conf(pool, extra: str) -> None:
    """Change the test overrides and make the startd (and our cron job) re-read them."""
    pool.write("/etc/condor/config.d/99-test.conf", ENTRY_POINTS + TEST_CONF + extra)
    pool.reconfig()
