"""Platforms under a REAL condor_startd (23.9 and 25.14) with real Apptainer:
the container probe reads what each image is inside, a job asking
`REQUIRED_OS = "rhel9"` runs in the rhel9 image (packaging/condor/
55-startd-health-platforms.conf), a broken rhel9 image makes the node refuse
rhel9 jobs while other platforms still run, a mislabeled image is reported,
and "any" runs on the default image.

The images (built once, cached under ~/.cache/startd-health/platform-images-N):
busybox-static and the glibc of the pool's root filesystem, plus
  - trixie: Debian 13's REAL /usr/lib/os-release (base-files of the 23.9 root filesystem)
  - forky:  Debian forky/sid's REAL os-release (base-files of the 25.14 root filesystem), as a SIF
  - el9:    SIMULATED EL: Rocky Linux 9.3's os-release lines, on the same busybox and glibc
  - el7:    a Debian 13 image NAMED el7: the mislabeled one
All are built by real `apptainer build` (sandbox directories, one SIF).

The jobs landing in the right image is itself the proof of what the
starter's SINGULARITY_IMAGE_EXPR sees on each version: the job's
REQUIRED_OS (TARGET), the slot's STARTD_CRON attributes (MY) and ClassAd
eval() of an attribute name built from them.
"""

import os
import shutil
import subprocess
import time

import pytest

from tests.realpool.pool import RealPool
from tests.realpool.rootfs import RootFs

from .conftest import ENTRY_POINTS

pytestmark = pytest.mark.e2e

IMAGES_VERSION = 1
CACHE = os.path.join(os.environ.get("STARTD_HEALTH_CACHE") or os.path.join(
    os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "startd-health"),
    f"platform-images-{IMAGES_VERSION}")
INSIDE = "/opt/platforms"
ROCKY9 = ('NAME="Rocky Linux"\nVERSION="9.3 (Blue Onyx)"\nID="rocky"\nID_LIKE="rhel centos fedora"\n'
          'VERSION_ID="9.3"\nPLATFORM_ID="platform:el9"\nPRETTY_NAME="Rocky Linux 9.3 (Blue Onyx)"\n')
SNIPPETS = {"mix": ("50-startd-health.conf", "55-startd-health-platforms.conf"),
            "sid": ("50-startd-health.conf", "51-startd-health-healthexprs.conf", "55-startd-health-platforms.conf")}
CONF = f"""\
STARTD_HEALTH_CRON_PERIOD = 5
STARTD_HEALTH_PROBES = container
STARTD_HEALTH_CONTAINER_PERIOD = 1
STARTD_HEALTH_CONTAINER_IMAGES_DICT = rhel9:{INSIDE}/el9, debian13:{INSIDE}/trixie, default:{INSIDE}/trixie
STARTD_HEALTH_CONTAINER_IMAGE_DIRS = {INSIDE}/found/*
STARTD_HEALTH_GLIDEINWMS_ATTRIBUTES = true
"""
JOB = """\
executable = /bin/sh
arguments = "-c 'echo IMAGE=$APPTAINER_CONTAINER; cat /etc/os-release'"
should_transfer_files = NO
output = out.{label}.txt
error = err.{label}.txt
log = job.log
+REQUIRED_OS = "{required_os}"
{extra}
queue
"""
# The site's own container policy, before the platforms snippet (which
# composes with it): jobs naming an image run in it (the common OSG setting).
SITE_SINGULARITY = "SINGULARITY_JOB = !isUndefined(TARGET.SingularityImage)\n"
BUSYBOX_TOOLS = "sh true echo cat ls id env sleep mkdir rm touch uname head tr wc"


def _raw_image(pool, os_release: str, dest: str) -> None:
    """A root directory: busybox-static and the pool root filesystem's glibc
    (libc.so.6 and its loader: the inside script runs libc.so.6 for its version)."""
    for d in ("bin", "etc", "tmp", "var/tmp", "proc", "dev", "sys", "home", "srv", "lib/x86_64-linux-gnu", "lib64"):
        os.makedirs(os.path.join(dest, d), exist_ok=True)
    shutil.copy(pool.path("/bin/busybox"), os.path.join(dest, "bin", "busybox"))
    for tool in BUSYBOX_TOOLS.split():
        os.symlink("busybox", os.path.join(dest, "bin", tool))
    shutil.copy(pool.path("/usr/lib/x86_64-linux-gnu/libc.so.6"), os.path.join(dest, "lib/x86_64-linux-gnu"))
    shutil.copy(pool.path("/usr/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2"), os.path.join(dest, "lib64"))
    with open(os.path.join(dest, "etc", "os-release"), "w") as handle:
        handle.write(os_release)
    with open(os.path.join(dest, "etc", "passwd"), "w") as handle:
        handle.write("root:x:0:0:root:/root:/bin/sh\n")
    os.chmod(os.path.join(dest, "tmp"), 0o1777)


def _os_release(variant: str) -> str:
    root = RootFs(variant)
    root.build()
    with open(root.path("/usr/lib/os-release")) as handle:
        return handle.read()


def install_images(pool) -> None:
    """The four images at /opt/platforms in the pool's root filesystem, from the cache when built before."""
    key = os.path.join(CACHE, pool.variant)
    if not os.path.exists(os.path.join(key, ".done")):
        trixie, forky = _os_release("mix"), _os_release("sid")
        work = pool.path("/opt/platforms-build")
        shutil.rmtree(work, ignore_errors=True)
        for name, text in (("el9", ROCKY9), ("trixie", trixie), ("forky", forky)):
            _raw_image(pool, text, os.path.join(work, name))
        pool.sh("set -e; cd /opt/platforms-build; rm -rf out; mkdir -p out/found\n"
                "apptainer -s build --sandbox out/el9 el9/\n"
                "apptainer -s build --sandbox out/trixie trixie/\n"
                "cp -a out/trixie out/found/el7\n"
                "apptainer -s build out/found/forky.sif forky/\n", timeout=300)
        shutil.rmtree(key, ignore_errors=True)
        shutil.copytree(os.path.join(work, "out"), key, symlinks=True)
        shutil.rmtree(work)
        open(os.path.join(key, ".done"), "w").close()
    shutil.rmtree(pool.path(INSIDE), ignore_errors=True)
    shutil.copytree(key, pool.path(INSIDE), symlinks=True, ignore=shutil.ignore_patterns(".done"))
    subprocess.run(["chmod", "-R", "a+rX", pool.path(INSIDE)], check=True)


@pytest.fixture(scope="module", params=["mix", "sid"], ids=["condor23.9", "condor25.14"])
def pool(request):
    pool = RealPool(request.param)
    pool.build()
    pool.install_project()
    install_images(pool)
    pool.configure(*SNIPPETS[request.param], extra=ENTRY_POINTS + CONF)
    pool.write("/etc/condor/config.d/54-site-singularity.conf", SITE_SINGULARITY)
    pool.start()
    try:
        yield pool
    finally:
        pool.stop()


def slot(pool, what, predicate, timeout=60):
    def check():
        for ad in pool.slots():
            if predicate(ad):
                return ad
        return None
    return pool.wait_for(check, timeout, what)


def run_jobs(pool, *oses, extra=""):
    """One job per REQUIRED_OS value: {value: cluster}."""
    return {required_os: pool.submit(JOB.format(label=label(required_os), required_os=required_os, extra=extra))
            for required_os in oses}


def label(required_os):
    return required_os.replace(",", "_")


def output(pool, required_os):
    with open(pool.path(f"/home/tester/out.{label(required_os)}.txt")) as handle:
        return handle.read()


def done(pool, *clusters):
    return all(pool.job_status(cluster) == 4 for cluster in clusters)


def test_platforms_are_measured_and_jobs_get_the_image_of_theirs(pool):
    t0 = time.monotonic()
    ad = slot(pool, "platforms published",
              lambda a: a.get("StartdHealthContainerPlatforms") == ["debian13", "debian14", "rhel9"]
              and a.get("StartdHealthContainerImagesMislabeled") == ["el7"])
    print(f"[{pool.variant}] platforms in the slot ad after {time.monotonic() - t0:.1f}s")
    # Measured inside, per image; el7 is really Debian 13 and is reported so (degraded, not failed).
    assert ad["StartdHealthContainerPlatform_rhel9"] == "rhel9"
    assert ad["StartdHealthContainerOs_rhel9"] == "Rocky Linux 9.3 (Blue Onyx)"
    assert ad["StartdHealthContainerPlatform_el7"] == "debian13" and ad["StartdHealthContainerPlatform_forky"] == "debian14"
    assert ad["StartdHealthContainerArch_rhel9"] == "x86_64"
    assert ad["StartdHealthContainerGlibc_rhel9"].startswith("2.")   # the pool's glibc, executed inside
    assert ad["StartdHealthContainerStatus"] == "degraded" and ad["StartdHealthOk"] is True
    assert "image el7 is debian13 inside (Debian GNU/Linux 13 (trixie)), its name says rhel7" in \
        ad["StartdHealthContainerReason"]
    assert ad["StartdHealthContainerImage_rhel9"] == f"{INSIDE}/el9"
    assert ad["StartdHealthContainerImage_debian13"] == f"{INSIDE}/trixie"   # the dict's, not el7 (found later)
    assert ad["StartdHealthContainerImage_default"] == f"{INSIDE}/trixie"
    assert ad["GLIDEIN_REQUIRED_OS"] == "debian13,debian14,rhel9"
    assert ad["SINGULARITY_IMAGES_DICT"].startswith(f"rhel9:{INSIDE}/el9,debian13:{INSIDE}/trixie,")

    t0 = time.monotonic()
    clusters = run_jobs(pool, "rhel9", "any", "rhel8,debian14")
    pool.wait_for(lambda: done(pool, *clusters.values()), 90, "the three platform jobs")
    print(f"[{pool.variant}] three platform jobs done in {time.monotonic() - t0:.1f}s")
    rhel9 = output(pool, "rhel9")
    assert f"IMAGE={INSIDE}/el9" in rhel9 and 'PRETTY_NAME="Rocky Linux 9.3 (Blue Onyx)"' in rhel9
    assert f"IMAGE={INSIDE}/trixie" in output(pool, "any") and "trixie" in output(pool, "any")
    # "rhel8,debian14": no rhel8 here, so the next of the job's list.
    assert f"IMAGE={INSIDE}/found/forky.sif" in output(pool, "rhel8,debian14")

    # A job naming its own image is left alone: it runs in it, REQUIRED_OS or not.
    own = run_jobs(pool, "rhel9,own", extra=f'+SingularityImage = "{INSIDE}/found/forky.sif"')
    pool.wait_for(lambda: done(pool, *own.values()), 90, "the job with its own image")
    assert f"IMAGE={INSIDE}/found/forky.sif" in output(pool, "rhel9,own")


def test_a_broken_rhel9_image_keeps_rhel9_jobs_off_while_other_platforms_run(pool):
    pool.sh(f"chmod 000 {INSIDE}/el9")   # the condor user (probe) and the job's user can no longer read it
    try:
        ad = slot(pool, "rhel9 gone", lambda a: a.get("StartdHealthContainerPlatforms") == ["debian13", "debian14"])
        assert ad["StartdHealthContainerImagesFailed"] == ["rhel9"] and ad["StartdHealthOk"] is True
        assert "StartdHealthContainerImage_rhel9" not in ad
        t0 = time.monotonic()
        clusters = run_jobs(pool, "rhel9", "debian13")
        pool.wait_for(lambda: done(pool, clusters["debian13"]), 90, "the debian13 job")
        print(f"[{pool.variant}] debian13 job done {time.monotonic() - t0:.1f}s after submit, rhel9 broken")
        assert f"IMAGE={INSIDE}/trixie" in output(pool, "debian13")
        time.sleep(6)   # a few more negotiation cycles (NEGOTIATOR_INTERVAL = 2)
        status = pool.job_status(clusters["rhel9"])
        assert status == 1, f"the rhel9 job should stay idle, JobStatus {status}:\n{pool.analyze(clusters['rhel9'])}"
    finally:
        pool.sh(f"chmod 755 {INSIDE}/el9; condor_rm -all >/dev/null 2>&1 || true", check=False)
