"""Site checks under a REAL condor_startd (HTCondor 23.9 with the classic
START gate, 25.14 with the STARTD_HEALTH_EXPRS variant), configured only
through the project's packaging/condor snippets and site-check knobs.

A failing site check refuses new jobs; fixing it lets a queued job in.

The checks run INSIDE the pool's root filesystem, which has no
monitoring-plugins package (adding one would mean rebuilding the cached
root filesystems): the host's real check_dummy (Debian's
monitoring-plugins-basic; it needs only libc) and the project's NHC-style
script (packaging/site-checks/nhc-style-check.sh, POSIX sh) are copied in.
Nothing is simulated: the fault is the "drain me" flag file the NHC-style
check looks for, dropped and removed as an admin would.
"""

import os
import shutil
import time

import pytest

from tests.realpool.pool import RealPool

pytestmark = pytest.mark.e2e

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CHECK_DUMMY = "/usr/lib/nagios/plugins/check_dummy"
CHECKS_DIR = "/opt/site-checks"
FLAG = "/etc/condor/drain-me"
SNIPPETS = {"mix": ("50-startd-health.conf",),
            "sid": ("50-startd-health.conf", "51-startd-health-healthexprs.conf")}
CONF = f"""\
STARTD_HEALTH_CRON = /opt/startd-health/venv/bin/startd-health-cron
STARTD_HEALTH_CRON_PERIOD = 3
STARTD_HEALTH_PROBES = site_node site_plugin
STARTD_HEALTH_SITE_CHECKS = node, plugin
STARTD_HEALTH_SITE_CHECK_NODE = {CHECKS_DIR}/nhc-style-check.sh -m / -w /tmp -F {FLAG}
STARTD_HEALTH_SITE_CHECK_NODE_PERIOD = 1
STARTD_HEALTH_SITE_CHECK_PLUGIN = {CHECKS_DIR}/check_dummy 0 'copied-in plugin runs'
"""
JOB = """\
executable = /bin/true
should_transfer_files = NO
log = job.log
queue
"""


@pytest.fixture(scope="module", params=["mix", "sid"], ids=["condor23.9", "condor25.14"])
def pool(request):
    if not os.path.exists(CHECK_DUMMY):
        pytest.fail(f"{CHECK_DUMMY} is missing: install monitoring-plugins-basic (tests/host-packages.txt)")
    pool = RealPool(request.param)
    pool.build()
    pool.install_project()
    os.makedirs(pool.path(CHECKS_DIR), exist_ok=True)
    for source in (CHECK_DUMMY, os.path.join(REPO, "packaging", "site-checks", "nhc-style-check.sh")):
        target = pool.path(os.path.join(CHECKS_DIR, os.path.basename(source)))
        shutil.copy(source, target)
        os.chmod(target, 0o755)
    if os.path.exists(pool.path(FLAG)):
        os.unlink(pool.path(FLAG))
    pool.configure(*SNIPPETS[request.param], extra=CONF)
    pool.start()
    try:
        yield pool
    finally:
        pool.stop()
        shutil.rmtree(pool.path(CHECKS_DIR), ignore_errors=True)
        if os.path.exists(pool.path(FLAG)):
            os.unlink(pool.path(FLAG))


def test_a_failing_site_check_refuses_new_jobs_and_fixing_it_lets_them_in(pool):
    t0 = time.monotonic()
    ad = pool.slot_where("StartdHealthSiteNodeReason", "StartdHealthSiteNodePerfdata_checks",
                         "StartdHealthSitePluginReason", timeout=60, StartdHealthOk=True, StartdHealthSiteNodeOk=True,
                         StartdHealthSitePluginOk=True)
    assert ad["StartdHealthSiteNodeReason"] == "OK: 3 checks passed" and ad["StartdHealthSiteNodePerfdata_checks"] == 3
    assert ad["StartdHealthSitePluginReason"] == "OK: copied-in plugin runs"

    pool.write(FLAG, "disk replacement, ticket 4711\n")   # the admin drains the node
    t_fault = time.monotonic()
    ad = pool.slot_where("StartdHealthFailedProbes", "StartdHealthReason", "StartdHealthSiteNodeState", timeout=45,
                         StartdHealthOk=False)
    t_refusing = time.monotonic() - t_fault
    assert ad["StartdHealthFailedProbes"] == ["site_node"] and ad["StartdHealthSiteNodeState"] == "CRITICAL"
    assert ad["StartdHealthReason"] == f"site_node: CRITICAL: {FLAG} exists: disk replacement, ticket 4711"
    if pool.variant == "sid":   # the startd's own health expression
        assert pool.enter("condor_status", "-af", "Healthy").stdout.split() == ["0"]

    job = pool.submit(JOB)
    idle_since = time.monotonic()
    while time.monotonic() - idle_since < 12:   # several negotiation cycles (NEGOTIATOR_INTERVAL = 2)
        assert pool.job_status(job) == 1, "a job started while a site check failed"
        time.sleep(1)

    os.unlink(pool.path(FLAG))   # fixed
    t_fix = time.monotonic()
    pool.slot_where(timeout=45, StartdHealthOk=True, StartdHealthSiteNodeOk=True)
    pool.wait_for(lambda: pool.job_status(job) == 4, 60, f"job {job} to run once the check passes")
    print(f"[{pool.variant}] flag -> refusing in {t_refusing:.1f}s; fixed -> queued job done in "
          f"{time.monotonic() - t_fix:.1f}s; whole test {time.monotonic() - t0:.1f}s")
