"""Pilot (glidein) mode: a condor_startd run by an ORDINARY USER, with no root
and nothing installed, configured as the README's "Pilots (glideins)" says:
the packaging's 50/52/53 snippets included and ONE macro,
STARTD_HEALTH_CRON = the zipapp. The cron job, the pre-job hook and the
benchmark job all run the real zipapp.

SIMULATED: a node Python without the HTCondor bindings. Debian's python3 has
them, so the zipapp is built with the interpreter line `/usr/bin/python3 -S`
(no site-packages: no htcondor2/classad2, no numpy), and the commands below
run it with `python3 -S`. Real HTCondor and Apptainer in the test root
filesystem."""

import os
import signal
import time

import pytest

from tests.realpool.pool import RealPool
from tests.unit.helpers import parse_cron_output
from tests.zipapp import build


pytestmark = pytest.mark.e2e

HOME = "/home/tester/pilot"
PYZ = f"{HOME}/startd-health.pyz"
ENV = f"CONDOR_CONFIG={HOME}/condor_config"
SNIPPETS = ("50-startd-health.conf", "52-startd-health-benchmarks.conf", "53-startd-health-hook.conf")


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
    pool.sh(f"rm -rf {HOME} && install -d -o tester -g tester {HOME} {HOME}/config.d")
    build(pool.path(PYZ), python="/usr/bin/python3 -S")
    for name in SNIPPETS:
        pool.write(f"{HOME}/config.d/{name}", open(os.path.join(os.path.dirname(__file__), "..", "..",
                                                                "packaging", "condor", name)).read())
    includes = "".join(f"include : {HOME}/config.d/{name}\n" for name in SNIPPETS)
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
SCHEDD_INTERVAL = 5
NEGOTIATOR_INTERVAL = 2
NEGOTIATOR_CYCLE_DELAY = 5
STARTD_CRON_LOG_NON_ZERO_EXIT = True
# A glidein points HTCondor at the runtime it found (HTCondor's default,
# $(LIBEXEC)/apptainer, does not exist here: the startd then has no
# HasSingularity and the container probe rightly fails).
SINGULARITY = /usr/bin/apptainer
# The README's pilot configuration: the snippets, then ONE macro.
{includes}STARTD_HEALTH_CRON = {PYZ}
STARTD_HEALTH_CONTAINER_IMAGES = sif=/opt/containers/test.sif
STARTD_HEALTH_CONTAINER_REQUIREMENT = REQUIRED
# Test speed: a 5 s cron period; a short DB12-only benchmark at start-up
# (the node's python3 -S has no numpy), HTCondor's own mips/kflops left out.
STARTD_HEALTH_CRON_PERIOD = 5
BENCHMARKS_JOBLIST = HEALTHBENCH
STARTD_HEALTH_BENCHMARKS_FAST = true
STARTD_HEALTH_BENCHMARKS_RUN = db12
"""
    pool.write(f"{HOME}/condor_config", config)
    pool.sh(f"chown -R tester:tester {HOME}; chmod 755 {PYZ}; cd {HOME} && for d in local local/log local/spool "
            "local/execute local/lock local/run; do mkdir -p $d; done; chown -R tester:tester local")
    pool.sh(f"cd {HOME} && {ENV} condor_master -pidfile {HOME}/local/master.pid", user="tester")
    try:
        yield pool
    finally:
        stop_master(pool)


def zipapp(pool, *args, stdin=None, check=False, timeout=120):
    """The real zipapp, as the pilot user, with the node's python3 and no site-packages."""
    return pool.enter("env", ENV, "python3", "-S", PYZ, *args, user="tester", input=stdin, check=check,
                      timeout=timeout)


def test_one_macro_configures_cron_job_hook_and_benchmark_job(pilot):
    out = pilot.sh(f"{ENV} condor_config_val STARTD_CRON_STARTD_HEALTH_EXECUTABLE HEALTHCHECK_HOOK_PREPARE_JOB "
                   "BENCHMARKS_HEALTHBENCH_EXECUTABLE", user="tester").stdout.split()
    assert out == [PYZ, PYZ, PYZ], out
    # The same derivation still finds `startd-health` beside a venv's or the RPM's `startd-health-cron`.
    pilot.write(f"{HOME}/venv_config", f"include : {HOME}/config.d/50-startd-health.conf\n"
                "STARTD_HEALTH_CRON = /opt/site.v2/bin/startd-health-cron\n")
    out = pilot.sh(f"CONDOR_CONFIG={HOME}/venv_config condor_config_val STARTD_HEALTH_COMMAND").stdout.split()
    assert out == ["/opt/site.v2/bin/startd-health"], out
    assert pilot.sh("python3 -S -c 'import classad2'", user="tester", check=False).returncode != 0


def healthy_slot(pilot):
    def slot():
        out = pilot.sh(f"{ENV} condor_status -af:, Name StartdHealthOk StartdHealthContainerImagesOk "
                       "StartdHealthContainerMode StartdHealthVersion StartdHealthBenchmarksDb12Score_single",
                       user="tester", check=False).stdout
        return out if "StartdHealthOk" not in out and ", true," in out and "undefined" not in out else None
    return pilot.wait_for(slot, 120, "attributes from the pilot's cron job and its benchmark job")


def test_unprivileged_startd_publishes_from_the_zipapp(pilot):
    line = healthy_slot(pilot)
    assert '{ "sif" }' in line or '{"sif"}' in line.replace(" ", ""), line
    assert "unprivileged" in line and "0.1.0" in line
    # The daemons really run as the ordinary user, not root.
    master = open(pilot.path(f"{HOME}/local/master.pid")).read().strip()
    owners = pilot.sh(f"ps -o user:20= -p {master} --ppid {master} | sort -u").stdout
    assert owners.split() == ["tester"], owners


JOB = """\
executable = /bin/echo
arguments = ran
+SingularityImage = "{image}"
should_transfer_files = NO
log = hook.log
output = hook.out
queue
"""


def submit(pool, image):
    pool.write(f"{HOME}/job.sub", JOB.format(image=image))
    out = pool.sh(f"cd {HOME} && {ENV} condor_submit -terse job.sub", user="tester").stdout
    return int(out.split(".")[0])


def job_status(pool, cluster):
    out = pool.sh(f"{ENV} condor_q {cluster} -af JobStatus; {ENV} condor_history {cluster} -af JobStatus -limit 1",
                  user="tester", check=False).stdout.split()
    return int(out[0]) if out else None


def test_jobs_run_through_the_zipapps_hook(pilot):
    """The starter runs the zipapp (53 via STARTD_HEALTH_COMMAND) as the job's user, without bindings:
    the site image is accepted and the job runs; a job whose own image is broken is held with our reason.
    (HTCondor 23.9 runs these vanilla jobs natively: +SingularityImage is only what the hook checks.)"""
    healthy_slot(pilot)
    good = submit(pilot, "/opt/containers/test.sif")
    pilot.wait_for(lambda: job_status(pilot, good) == 4, 180, f"job {good} through the hook to complete")
    assert open(pilot.path(f"{HOME}/hook.out")).read().strip() == "ran"
    starter = pilot.sh(f"cat {HOME}/local/log/StarterLog*").stdout
    assert f"PREPARE_JOB ({PYZ}) invoked" in starter, starter[-3000:]

    pilot.sh(f"head -c 4096 /opt/containers/test.sif > {HOME}/broken.sif", user="tester")
    bad = submit(pilot, f"{HOME}/broken.sif")
    pilot.wait_for(lambda: job_status(pilot, bad) == 5, 120, f"job {bad} with a truncated image to be held")
    code, reason = pilot.sh(f"{ENV} condor_q {bad} -af HoldReasonCode HoldReason",
                            user="tester").stdout.split(" ", 1)
    assert code == "19", reason
    # Found by the hook's cheap re-check (the SIF header against its size), before any launch.
    assert f"startd-health: the job's image {HOME}/broken.sif is not usable by the job's user: truncated SIF " \
           "image (4096 bytes" in reason, reason
    pilot.sh(f"{ENV} condor_rm {bad}", user="tester", check=False)


def test_every_command_of_the_zipapp_as_the_pilot_user(pilot):
    """cron, check, config, hook, inside-script, benchmark: each does its job with python3 -S;
    the exporters, which need apscheduler, refuse in one line."""
    ad = parse_cron_output(zipapp(pilot, "--force").stdout)   # no command: the cron entry point
    assert ad["StartdHealthOk"] is True, ad.get("StartdHealthReason")

    check = zipapp(pilot, "check")
    assert check.returncode == 0 and "healthy" in check.stdout, check

    config = zipapp(pilot, "config", check=True).stdout
    assert "read through condor_config_val" in config and "sif=/opt/containers/test.sif" in config, config

    hook = zipapp(pilot, "hook", "prepare-job", stdin='SingularityImage = "/opt/containers/test.sif"\n')
    assert hook.returncode == 0 and "HookStatusCode" not in hook.stdout, hook
    assert hook.stdout.startswith('HookStatusMessage = "startd-health: image ') and " launches (" in hook.stdout, \
        hook.stdout
    unreadable = zipapp(pilot, "hook", "prepare-job", stdin='SingularityImage = strcat("/opt/", "x.sif")\n')
    assert unreadable.returncode == 0 and "was not checked" in unreadable.stdout, unreadable

    script = zipapp(pilot, "inside-script", check=True).stdout
    assert script.startswith("#!") and pilot.enter("sh", "-n", input=script, check=False).returncode == 0, \
        script[:500]

    bench = parse_cron_output(zipapp(pilot, "benchmark", "--force", "--benchmarks-run", "db12,matmul",
                                     check=True).stdout)
    assert bench["StartdHealthBenchmarksDb12Score_single"] > 0, bench["StartdHealthBenchmarksReason"]
    assert "matmul single, matmul wholenode: ImportError: numpy is not installed for /usr/bin/python3 -S" \
        in bench["StartdHealthBenchmarksReason"]

    for command in ("exporter", "pool-exporter"):
        proc = zipapp(pilot, command, timeout=60)
        assert proc.returncode != 0 and not proc.stdout, proc
        assert len(proc.stderr.strip().splitlines()) == 1 and "apscheduler" in proc.stderr, proc.stderr
    helped = zipapp(pilot, "pool-exporter", "--help", check=True).stdout
    assert helped.startswith("usage: startd-health pool-exporter"), helped[:300]
