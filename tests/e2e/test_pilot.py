"""Pilot (glidein) mode: a condor_startd run by an ORDINARY USER, with no root
and nothing installed, publishes our attributes from the zipapp artifact.

The cron job runs the zipapp with `python3 -S` (no site-packages: no
htcondor2/classad2, as on a node whose Python lacks the bindings), so the
configuration comes from `condor_config_val` and values are quoted without
the bindings. Real HTCondor and Apptainer in the test root filesystem."""

import os
import signal
import time

import pytest

from tests.zipapp import build
from tests.realpool.pool import RealPool

pytestmark = pytest.mark.e2e

HOME = "/home/tester/pilot"


def stop_master(pool):
    try:
        pid = int(open(pool.path(f"{HOME}/local/master.pid")).read())
        os.kill(pid, signal.SIGQUIT)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            os.kill(pid, 0)
            time.sleep(0.2)
        os.kill(pid, signal.SIGKILL)
    except (OSError, ValueError):
        pass


@pytest.fixture(scope="module")
def pilot():
    pool = RealPool("mix", instance="pilot")
    pool.build()
    stop_master(pool)   # one an interrupted run left (its pid file is about to go)
    pool.sh(f"rm -rf {HOME} && install -d -o tester -g tester {HOME}")
    build(pool.path(f"{HOME}/startd-health.pyz"))
    config = f"""\
# A pilot's own configuration: a personal pool run by the user tester, with
# the installation layout a glidein's configuration names itself.
RELEASE_DIR = /usr
BIN = $(RELEASE_DIR)/bin
SBIN = $(RELEASE_DIR)/sbin
LIB = $(RELEASE_DIR)/lib/condor
LIBEXEC = $(RELEASE_DIR)/libexec/condor
use ROLE: Personal
# loopback only; a glidein brings its own security setup
use SECURITY : HOST_BASED
CONDOR_HOST = 127.0.0.1
COLLECTOR_HOST = $(CONDOR_HOST):{pool.port}
NETWORK_INTERFACE = 127.0.0.1
BIND_ALL_INTERFACES = False
ENABLE_IPV6 = False
ENABLE_KERNEL_TUNING = False
LOCAL_DIR = {HOME}/local
EXECUTE = {HOME}/local/execute
UPDATE_INTERVAL = 5
STARTD_CRON_JOBLIST = $(STARTD_CRON_JOBLIST) STARTD_HEALTH
STARTD_CRON_STARTD_HEALTH_EXECUTABLE = /usr/bin/python3
STARTD_CRON_STARTD_HEALTH_ARGS = -S {HOME}/startd-health.pyz
STARTD_CRON_STARTD_HEALTH_PERIOD = 5
STARTD_CRON_STARTD_HEALTH_MODE = Periodic
# A glidein points HTCondor at the runtime it found (HTCondor's default,
# $(LIBEXEC)/apptainer, does not exist here: the startd then has no
# HasSingularity and the container probe rightly fails).
SINGULARITY = /usr/bin/apptainer
STARTD_HEALTH_CONTAINER_IMAGES = sif=/opt/containers/test.sif
STARTD_HEALTH_CONTAINER_REQUIREMENT = REQUIRED
"""
    pool.write(f"{HOME}/condor_config", config)
    pool.sh(f"chown -R tester:tester {HOME}; cd {HOME} && for d in local local/log local/spool local/execute "
            "local/lock local/run; do mkdir -p $d; done; chown -R tester:tester local")
    pool.sh(f"cd {HOME} && CONDOR_CONFIG={HOME}/condor_config condor_master -pidfile {HOME}/local/master.pid",
            user="tester")
    try:
        yield pool
    finally:
        stop_master(pool)


def test_unprivileged_startd_publishes_from_the_zipapp(pilot):
    env = f"CONDOR_CONFIG={HOME}/condor_config"

    def slot():
        out = pilot.sh(f"{env} condor_status -af:, Name StartdHealthOk StartdHealthContainerImagesOk "
                       "StartdHealthContainerMode StartdHealthVersion", user="tester", check=False).stdout
        return out if "StartdHealthOk" not in out and ", true," in out else None
    line = pilot.wait_for(slot, 90, "attributes from the pilot's cron job")
    assert '{ "sif" }' in line or '{"sif"}' in line.replace(" ", ""), line
    assert "unprivileged" in line and "0.1.0" in line
    # The daemons really run as the ordinary user, not root.
    master = open(pilot.path(f"{HOME}/local/master.pid")).read().strip()
    owners = pilot.sh(f"ps -o user:20= -p {master} --ppid {master} | sort -u").stdout
    assert owners.split() == ["tester"], owners
