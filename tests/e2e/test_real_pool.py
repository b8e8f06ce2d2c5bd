"""startd-health under a REAL condor_startd (HTCondor 23.9 with the classic
START gate, 25.14 with the STARTD_HEALTH_EXPRS variant), configured only
through the project's own packaging/condor snippets, with real Apptainer."""

import json
import os
import re
import time

import classad2
import pytest

from startd_health import __version__
from tests.unit.helpers import parse_cron_output

from .conftest import CRON_PERIOD, REPO, set_extra_conf

pytestmark = pytest.mark.e2e

JOB = """\
executable = /bin/true
should_transfer_files = NO
log = job.log
queue
"""


def our_slot(pool, *attrs, **expect):
    """The slot ad once every expected attribute has the expected value."""
    def check():
        for ad in pool.slots(*attrs, *expect):
            if all(ad.get(k) == v for k, v in expect.items()):
                return ad
        return None
    return pool.wait_for(check, 60, f"slot ad with {expect}")


def test_startd_publishes_our_attributes(pool):
    t0 = time.monotonic()
    ad = our_slot(pool, "StartdHealthContainerImagesOk", "StartdHealthContainerMode", "StartdHealthVersion",
                  "StartdHealthContainerVersion", "SingularityVersion", "HasSingularity", "StartdHealthReason",
                  "StartdHealthContainerLaunchSeconds_sif", "StartdHealthContainerLaunchSeconds_sandbox",
                  "StartdHealthTimestamp", "StartdHealthFailedProbes",
                  StartdHealthOk=True)
    print(f"[{pool.variant}] our attributes in condor_status {time.monotonic() - t0:.1f}s after the test asked")
    assert ad["StartdHealthVersion"] == __version__
    assert ad["StartdHealthFailedProbes"] == []
    assert ad["StartdHealthContainerImagesOk"] == ["sif", "sandbox"]
    # The cron job runs as the condor user: Debian's Apptainer is not setuid,
    # so that is an unprivileged user namespace.
    assert ad["StartdHealthContainerMode"] == "unprivileged"
    assert ad["SingularityVersion"] == "apptainer version " + ad["StartdHealthContainerVersion"]
    assert ad["HasSingularity"] is True  # the startd's own self-test: we never overwrite it
    assert 0 < ad["StartdHealthContainerLaunchSeconds_sif"] < 30
    assert abs(time.time() - ad["StartdHealthTimestamp"]) < 3 * CRON_PERIOD + 10
    # Every attribute the startd holds must parse as a ClassAd: the whole ad, with the real library.
    full = classad2.parseOne(pool.slot_ad_text())
    assert full["StartdHealthOk"] is True
    if pool.variant == "sid":
        assert "StartdHealthUsable" in str(full.lookup("HealthExprs"))
        assert full.eval("Healthy") in (True, 1)


def test_node_probes_publish_under_the_real_startd(pool):
    """CVMFS (simulated repository, outside and inside the images), sessions, user namespaces, GPUs."""
    ad = our_slot(pool, "HAS_CVMFS_oasis_opensciencegrid_org", "CVMFS_oasis_opensciencegrid_org_REVISION",
                  "StartdHealthCvmfsReposOk", "StartdHealthCvmfsClientVersion", "StartdHealthSessionsStatus",
                  "StartdHealthSessionsInOwnSession", "StartdHealthSessionsSetsidOk", "StartdHealthUsernsStatus",
                  "StartdHealthUsernsUnprivilegedCloneOk", "StartdHealthGpuStatus", "StartdHealthContainerImagesOk",
                  "StartdHealthCvmfsStatus", StartdHealthOk=True)
    assert ad["HAS_CVMFS_oasis_opensciencegrid_org"] is True
    assert ad["CVMFS_oasis_opensciencegrid_org_REVISION"] == 4242
    assert ad["StartdHealthCvmfsReposOk"] == [REPO] and ad["StartdHealthCvmfsClientVersion"] == "2.11.5"
    # The images see the repository too (bound with --bind /cvmfs, checked by sh inside).
    assert ad["StartdHealthContainerImagesOk"] == ["sif", "sandbox"]
    # Measured, not assumed: a STARTD_CRON job shares the startd's session.
    assert ad["StartdHealthSessionsStatus"] == "ok" and ad["StartdHealthSessionsInOwnSession"] is False
    assert ad["StartdHealthSessionsSetsidOk"] is True
    assert ad["StartdHealthUsernsUnprivilegedCloneOk"] is True
    assert ad["StartdHealthGpuStatus"] == "skipped"


def test_results_are_kept_in_the_state_dir_owned_by_condor(pool):
    path = pool.path("/tmp/condor/spool/startd_health/results/container.json")
    pool.wait_for(lambda: os.path.exists(path), 30, path)
    owner = pool.sh(f"stat -c %U {path.split(pool.rootfs, 1)[1]}").stdout.strip()
    assert owner == "condor"


def test_hostile_text_from_a_broken_image_stays_inside_its_attribute(pool):
    evil = '/opt/containers/no"such]Injected=true;[x.sif'
    set_extra_conf(pool, f"STARTD_HEALTH_CONTAINER_IMAGES = $(STARTD_HEALTH_CONTAINER_IMAGES) evil={evil}\n"
                         "STARTD_HEALTH_CONTAINER_PARTIAL_OK = true\n")
    try:
        ad = our_slot(pool, "StartdHealthContainerImagesFailed", "StartdHealthContainerReason",
                      "StartdHealthDegradedProbes", "StartdHealthOk",
                      StartdHealthContainerImagesFailed=["evil"])
        # With PARTIAL_OK, one broken image of three is degraded: the node
        # still takes jobs; jobs that need "evil" match on ...ImagesOk.
        assert ad["StartdHealthOk"] is True and "container" in ad["StartdHealthDegradedProbes"]
        assert 'no"such]Injected=true;[x.sif' in ad["StartdHealthContainerReason"]
        text = pool.slot_ad_text()
        assert not [line for line in text.splitlines() if line.startswith("Injected")]
    finally:
        set_extra_conf(pool, "")
    our_slot(pool, "StartdHealthContainerImagesFailed", StartdHealthContainerImagesFailed=[], StartdHealthOk=True)


def test_a_crowded_ad_keeps_what_jobs_match_on_under_the_real_startd(pool):
    """50 images that do not exist (real Apptainer fails each, with its own
    error text) next to the two that launch: the cut ad the startd reads
    still says REQUIRED, which images work, and the verdict."""
    broken = " ".join(f"broken{i:02d}=/opt/containers/missing/{'x' * 60}-{i:02d}.sif" for i in range(50))
    set_extra_conf(pool, f"STARTD_HEALTH_CONTAINER_IMAGES = $(STARTD_HEALTH_CONTAINER_IMAGES) {broken}\n"
                         "STARTD_HEALTH_CONTAINER_TIMEOUT = 120\n")
    try:
        ad = our_slot(pool, "StartdHealthContainerImagesOk", "StartdHealthContainerImageErrors",
                      "StartdHealthContainerAvailable", "StartdHealthTimestamp", "StartdHealthCvmfsStatus",
                      "StartdHealthUsernsStatus", "StartdHealthSessionsStatus", "StartdHealthGpuStatus",
                      StartdHealthTruncated=True, StartdHealthContainerRequirement="REQUIRED", StartdHealthOk=False)
        assert sorted(ad["StartdHealthContainerImagesOk"]) == ["sandbox", "sif"]
        assert ad["StartdHealthContainerAvailable"] is True and ad["StartdHealthContainerImageErrors"][-1] == "..."
        missing = [p for p in ("Cvmfs", "Userns", "Sessions", "Gpu") if not ad.get(f"StartdHealth{p}Status")]
        assert not missing, f"statuses dropped: {missing}"
        slot = classad2.ClassAd({k: v for k, v in ad.items() if not isinstance(v, (list, dict))})
        slot["StartdHealthContainerRequirement"] = ad["StartdHealthContainerRequirement"]
        assert classad2.ExprTree('(StartdHealthContainerRequirement =!= "REQUIRED")').eval(slot) is False
    finally:
        set_extra_conf(pool, "")
    our_slot(pool, StartdHealthOk=True)


def test_failing_probe_refuses_new_jobs_until_the_node_is_healthy_again(pool):
    our_slot(pool, StartdHealthOk=True)
    first = pool.submit(JOB)
    pool.wait_for(lambda: pool.job_status(first) == 4, 90, f"job {first} to complete on the healthy node")

    site, broken = pool.path("/opt/containers/site.sif"), pool.path("/opt/containers/site.sif.off")
    os.rename(site, broken)  # the site image disappears from the node
    t_fault = time.monotonic()
    try:
        ad = our_slot(pool, "StartdHealthFailedProbes", "StartdHealthReason", StartdHealthOk=False)
        t_refusing = time.monotonic() - t_fault
        assert ad["StartdHealthFailedProbes"] == ["container"]
        assert "sif:" in ad["StartdHealthReason"] and "site.sif" in ad["StartdHealthReason"]
        if pool.variant == "sid":  # the startd's own health expression, evaluated by condor_status
            assert pool.enter("condor_status", "-af", "Healthy", "HealthFactor").stdout.split() == ["0", "0.0"]

        second = pool.submit(JOB)
        idle_since = time.monotonic()
        while time.monotonic() - idle_since < 20:  # ~10 negotiation cycles
            assert pool.job_status(second) == 1, "a job started on an unhealthy node"
            time.sleep(1)
        # The job's own requirements all match; the node refuses it by its own.
        analysis = pool.analyze(second)
        assert re.search(r"0 (slots )?(are )?rejected by your job's requirements", analysis), analysis
        assert re.search(r"1 (slots )?reject your job because of their own requirements", analysis), analysis
        print(f"[{pool.variant}] fault -> StartdHealthOk false in {t_refusing:.1f}s; job stayed idle 20s")
    finally:
        os.rename(broken, site)
    t_repair = time.monotonic()
    our_slot(pool, StartdHealthOk=True)
    pool.wait_for(lambda: pool.job_status(second) in (2, 4), 120, f"job {second} to start once healthy")
    print(f"[{pool.variant}] repair -> job started in {time.monotonic() - t_repair:.1f}s")
    pool.wait_for(lambda: pool.job_status(second) == 4, 90, f"job {second} to complete")


def test_a_config_file_the_cron_job_cannot_read_makes_the_node_unhealthy(pool):
    """A config.d file with a syntax error appears (an edit not yet reconfig'ed: the
    startd keeps its old configuration, but each cron job reads the files afresh).
    Before, htcondor2's import exit(1)ed the job with no output and the last healthy
    verdict stayed published until STARTD_HEALTH_MAX_AGE. (A config.d file only root
    can read makes the PyPI wheel exit too, but Debian's build skips it: the unit
    tests cover that case with the wheel.)"""
    our_slot(pool, StartdHealthOk=True)

    def unhealthy():
        # HTCondor's tools cannot read the broken configuration either: ask the
        # collector with an environment-only one.
        out = pool.enter("env", "CONDOR_CONFIG=ONLY_ENV", f"_CONDOR_COLLECTOR_HOST=127.0.0.1:{pool.port}",
                         "condor_status", "-json", "-attributes", "Name,StartdHealthOk,StartdHealthReason",
                         timeout=30).stdout
        ads = json.loads(out) if out.strip() else []
        return next((ad for ad in ads if ad.get("StartdHealthOk") is False), None)

    inside = "/etc/condor/config.d/98-broken.conf"
    pool.write(inside, "if true\nSTARTD_HEALTH_DEADLINE = 60\n")   # no endif
    try:
        ad = pool.wait_for(unhealthy, 60, "an unhealthy verdict naming the broken file")
        reason = ad["StartdHealthReason"]
        assert "cannot be read as user condor: endif(s) not found" in reason and inside in reason, reason
    finally:
        os.unlink(pool.path(inside))
    our_slot(pool, StartdHealthOk=True)


def test_gate_expression_treats_stale_and_missing_verdicts_as_unusable(pool):
    """Evaluate the packaging's own STARTD_HEALTH_USABLE, as this HTCondor expands it."""
    expr = classad2.ExprTree(pool.enter("condor_config_val", "STARTD_HEALTH_USABLE").stdout.strip())
    now = int(time.time())
    max_age = 3 * CRON_PERIOD
    cases = [({"StartdHealthOk": True, "StartdHealthTimestamp": now}, True),
             ({"StartdHealthOk": True, "StartdHealthTimestamp": now - max_age - 5}, False),
             ({"StartdHealthOk": False, "StartdHealthTimestamp": now}, False),
             ({"StartdHealthTimestamp": now}, False),
             ({}, False)]
    for attrs, usable in cases:
        assert (expr.eval(classad2.ClassAd(attrs)) is True) == usable, attrs


@pytest.mark.parametrize("user", ["root", "tester"])
def test_container_probe_launches_sif_and_sandbox_with_real_apptainer(pool, user):
    # (A fresh mount namespace: the simulated CVMFS mount lives in the pool's; only this probe runs.)
    proc = pool.enter("/opt/startd-health/venv/bin/startd-health", "cron", "--force", "--probes", "container",
                      "--state-dir", f"/tmp/sh-{user}",
                      "--container-images", "sif=/opt/containers/test.sif,sandbox=/opt/containers/sandbox",
                      user=None if user == "root" else user)
    ad = parse_cron_output(proc.stdout)
    assert ad["StartdHealthOk"] is True, ad["StartdHealthReason"]
    assert ad["StartdHealthContainerImagesOk"] == ["sif", "sandbox"]
    # Debian's apptainer is not setuid: every launch here is unprivileged. Run
    # as root, the starter's launch (HTCondor is configured) drops to the job
    # account (nobody), as a job would run.
    assert ad["StartdHealthContainerMode"] == "unprivileged", ad["StartdHealthContainerReason"]
    assert ad["StartdHealthContainerPidNamespace"] is True  # the default flags include --pid


def test_checks_inside_the_image_need_the_expected_binds(pool):
    """busybox sh runs the inside checks; a bind the site expects (e.g. /cvmfs) must be there."""
    base = ["/opt/startd-health/venv/bin/startd-health", "cron", "--force", "--probes", "container",
            "--container-cvmfs", "false", "--state-dir", "/tmp/sh-binds",
            "--container-images", "sif=/opt/containers/test.sif,sandbox=/opt/containers/sandbox",
            "--container-binds", "/cvmfs"]
    missing = parse_cron_output(pool.enter(*base, "--container-flags", "--ipc --pid --contain", user="tester").stdout)
    assert missing["StartdHealthOk"] is False
    assert missing["StartdHealthContainerImageErrors"] == ["sif: inside: bind:/cvmfs: not mounted inside",
                                                           "sandbox: inside: bind:/cvmfs: not mounted inside"]
    bound = parse_cron_output(pool.enter(*base, "--container-flags", "--ipc --pid --contain --bind /opt:/cvmfs",
                                         user="tester").stdout)
    assert bound["StartdHealthContainerImagesOk"] == ["sif", "sandbox"], bound["StartdHealthContainerReason"]


def test_unit_tests_pass_on_this_distributions_python(pool):
    """The same unit tests on Debian's Python (3.13 in trixie, 3.14 in sid) and HTCondor bindings."""
    proc = pool.sh("cd /opt/startd-health/src && /opt/startd-health/venv/bin/python -m pytest -q -p no:cacheprovider tests/unit 2>&1",
                   check=False, timeout=300)
    assert proc.returncode == 0, proc.stdout[-4000:]
    print(f"[{pool.variant}] {proc.stdout.strip().splitlines()[-1]}")


CONTAINER_JOB = """\
universe = container
container_image = {image}
executable = /bin/cat
arguments = /etc/motd
transfer_executable = false
should_transfer_files = YES
log = hook.log
output = hook.out
queue
"""


def test_pre_job_hook_holds_a_job_whose_image_does_not_launch(pool):
    """53-startd-health-hook.conf: the starter runs `startd-health hook prepare-job` as the job's user."""
    our_slot(pool, StartdHealthOk=True)
    good = pool.submit(CONTAINER_JOB.format(image="/opt/containers/site.sif"))
    pool.wait_for(lambda: pool.job_status(good) == 4, 120, f"container job {good} with the site image to complete")
    assert "startd-health test image" in open(pool.path("/home/tester/hook.out")).read()
    if pool.variant == "sid":  # 25.x shows an accepting hook's message as a job event; 23.9 does not
        log = open(pool.path("/home/tester/hook.log")).read()
        assert "startd-health: image site.sif launches (tested now in" in log, log[-2000:]
    starter_logs = pool.sh("cat /tmp/condor/log/StarterLog*").stdout
    assert "PREPARE_JOB (/opt/startd-health/venv/bin/startd-health) invoked" in starter_logs

    pool.sh("head -c 4096 /opt/containers/test.sif > /opt/containers/broken.sif && chmod 644 /opt/containers/broken.sif")
    bad = pool.submit(CONTAINER_JOB.format(image="/opt/containers/broken.sif"))
    pool.wait_for(lambda: pool.job_status(bad) == 5, 120, f"job {bad} with a truncated image to be held")
    code, reason = pool.enter("condor_q", str(bad), "-af", "HoldReasonCode", "HoldReason").stdout.split(" ", 1)
    assert code == "19", reason
    # The container universe transfers the image: the job ad names it relative to the scratch dir.
    assert "PREPARE_JOB (startd-health) failed (exited with status 1)" in reason
    # The hook's cheap re-check reads the SIF header: a truncated copy is held before any launch.
    assert "startd-health: the job's image broken.sif is not usable by the job's user: truncated SIF image" in reason
    pool.enter("condor_rm", str(bad))


RECIPES = {  # the README's job-side recipes
    "needs": "requirements = (StartdHealthContainerAvailable =?= true)",
    "prefers": "rank = (StartdHealthContainerAvailable =?= true)",
    "must_not": 'requirements = (StartdHealthContainerRequirement =!= "REQUIRED")',
}


@pytest.mark.parametrize("level", ["OPTIONAL", "NEVER"])
def test_requirement_levels_and_job_recipes(pool, level):
    """With no working runtime: OPTIONAL/NEVER keep the node healthy for jobs that do not need a container."""
    set_extra_conf(pool, f"STARTD_HEALTH_CONTAINER_REQUIREMENT = {level}\n"
                         "STARTD_HEALTH_CONTAINER_RUNTIME = /nonexistent/apptainer\n")
    try:
        ad = our_slot(pool, "StartdHealthContainerStatus", "StartdHealthContainerRequirement",
                      StartdHealthContainerAvailable=False, StartdHealthOk=True)
        assert ad["StartdHealthContainerStatus"] == ("degraded" if level == "OPTIONAL" else "skipped")
        assert ad["StartdHealthContainerRequirement"] == level
        jobs = {name: pool.submit(JOB.replace("queue", recipe + "\nqueue")) for name, recipe in RECIPES.items()}
        for name in ("prefers", "must_not"):
            pool.wait_for(lambda job=jobs[name]: pool.job_status(job) == 4, 120, f"{name} job to run without a container")
        assert pool.job_status(jobs["needs"]) == 1, "a job needing a container ran on a node without one"
        pool.enter("condor_rm", str(jobs["needs"]))
    finally:
        set_extra_conf(pool, "")
    our_slot(pool, StartdHealthContainerAvailable=True, StartdHealthOk=True)


def test_required_level_refuses_jobs_that_do_not_even_need_a_container(pool):
    set_extra_conf(pool, "STARTD_HEALTH_CONTAINER_RUNTIME = /nonexistent/apptainer\n")
    try:
        our_slot(pool, StartdHealthContainerRequirement="REQUIRED", StartdHealthOk=False)
        job = pool.submit(JOB.replace("queue", RECIPES["must_not"] + "\nqueue"))
        time.sleep(15)
        assert pool.job_status(job) == 1
        pool.enter("condor_rm", str(job))
    finally:
        set_extra_conf(pool, "")
    our_slot(pool, StartdHealthOk=True)


def test_the_image_htcondor_itself_uses_is_tested_too(pool):
    set_extra_conf(pool, 'SINGULARITY_IMAGE_EXPR = "/opt/containers/test.sif"\n')
    try:
        ad = our_slot(pool, "StartdHealthContainerImagesOk", StartdHealthOk=True,
                      StartdHealthContainerImagesOk=["sif", "sandbox", "condor_default"])
        assert ad["StartdHealthContainerImagesOk"][-1] == "condor_default"
    finally:
        set_extra_conf(pool, "")


CHECKED_JOB = """\
universe = container
container_image = /opt/containers/site.sif
{how}
should_transfer_files = YES
log = checked.log
output = checked.out
error = checked.err
queue
"""
AS_PRECMD = ('executable = /bin/cat\narguments = /etc/motd\ntransfer_executable = false\n'
             'transfer_input_files = checks.sh\n+PreCmd = "checks.sh"')
AS_WRAPPER = "executable = checks.sh\narguments = /bin/cat /etc/motd\ntransfer_executable = true"


def test_job_side_checks_run_inside_the_jobs_container(pool):
    """`startd-health inside-script`: the job's executable wraps its real command and checks first."""
    tool = "/opt/startd-health/venv/bin/startd-health"

    def checks(*extra):
        pool.sh(f"{tool} inside-script --no-condor-config {' '.join(extra)} > /home/tester/checks.sh && "
                "chmod 755 /home/tester/checks.sh")

    def run(how):
        job = pool.submit(CHECKED_JOB.format(how=how))
        pool.wait_for(lambda: pool.job_status(job) == 4, 120, f"job {job} to end")
        code = pool.enter("condor_history", str(job), "-af", "ExitCode", "-limit", "1").stdout.strip()
        return (code, open(pool.path("/home/tester/checked.out")).read(),
                open(pool.path("/home/tester/checked.err")).read())

    checks()
    code, out, err = run(AS_WRAPPER)
    assert code == "0" and "startd-health test image" in out and "startd-health: checks passed" in err

    checks("--container-binds", "/cvmfs/missing.example.org")
    code, out, err = run(AS_WRAPPER)
    assert code == "1" and out == ""
    assert "startd-health: bind:/cvmfs/missing.example.org: not mounted inside" in err

    # Measured, and why the recipe is a wrapper: HTCondor runs a PreCmd but a
    # failing one neither stops the job nor shows its output (23.9 and 25.14).
    code, out, err = run(AS_PRECMD)
    assert code == "0" and "startd-health test image" in out
