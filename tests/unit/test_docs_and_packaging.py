"""The README documents every knob and attribute; packaging macros never
collide with the tool's knobs."""

import os
import re
import time

from startd_health.cli.knobs import all_knobs
from startd_health.monitor.cron import render
from startd_health.core.model import RunReport
from startd_health.core.verdict import judge
from startd_health.probes.container import Gathered, Launch, Runtime, judge as judge_container

from .helpers import REPO, parse_cron_output

README = open(os.path.join(REPO, "README.md")).read()
PACKAGING = os.path.join(REPO, "packaging", "condor")
PACKAGING_MACROS = {"STARTD_HEALTH_CRON", "STARTD_HEALTH_CRON_PERIOD", "STARTD_HEALTH_MAX_AGE",
                    "STARTD_HEALTH_USABLE", "STARTD_HEALTH_START_GATE",
                    "STARTD_HEALTH_COMMAND", "STARTD_HEALTH_BENCH_INTERVAL", "STARTD_HEALTH_BENCH_IDLE",
                    "STARTD_HEALTH_BENCH_WHEN", "STARTD_HEALTH_BENCH_START"}
# 55-startd-health-platforms.conf's macros (REQUIRED_OS -> image)
PACKAGING_MACROS |= {"STARTD_HEALTH_REQUIRED_OS", "STARTD_HEALTH_JOB_PLATFORM", "STARTD_HEALTH_JOB_IMAGE",
                     "STARTD_HEALTH_WANTS_PLATFORM", "STARTD_HEALTH_PLATFORM_GATE"}
PACKAGING_MACROS |= {f"STARTD_HEALTH_PICK_{n}" for n in range(4)} | {f"STARTD_HEALTH_PICK_OS_{n}" for n in range(4)}
HTCONDOR_OWN = {"STARTD_HEALTH_EXPRS"}


def documented(name: str) -> bool:
    return f"`{name}`" in README


def test_every_knob_is_documented():
    for knob in all_knobs():  # the table is generated (test_cli_commands checks it is up to date)
        assert documented(knob.param_name), f"{knob.param_name} is missing from the README's knob table"


def generic_name(name: str) -> str:
    name = re.sub(r"_el9$", "_<image>", name)
    name = re.sub(r"^(StartdHealthContainerImage)_(rhel|debian|ubuntu)\d+$|^(StartdHealthContainerImage)_default$",
                  lambda m: (m.group(1) or m.group(3)) + "_<platform>", name)
    for repo in ("oasis_opensciencegrid_org", "cms_ib_cern_ch"):
        name = re.sub(f"_{repo}$", "_<repo>", name).replace(f"_{repo}_", "_<repo>_")
    name = re.sub(r"^(StartdHealthGpuMemoryBytes_)\d+$", r"\1<index>", name)
    name = re.sub(r"^(StartdHealthKernel(?:EventsTotal|LastEventTimestampSeconds)_)[a-z0-9_]+$", r"\1<class>", name)
    name = re.sub(r"^StartdHealthKernel[A-Za-z0-9]+LastMessage$", "StartdHealthKernel<Class>LastMessage", name)
    return re.sub(r"^StartdHealth[A-Z][a-z]+(Ok|Status|Reason|Age)$", r"StartdHealth<Probe>\1", name)


def assert_documented(names):
    for name in names:
        generic = generic_name(name)
        assert documented(generic) or documented(generic.split("_<repo>_")[0] + "_<repo>_REVISION"), \
            f"{name} is missing from the README's attribute table"


def test_every_published_attribute_is_documented():
    full = judge_container(Gathered(Runtime("/usr/bin/apptainer", "PATH"), name="apptainer", version="1.4.5",
                                    launches=(Launch("el9", "/x", True, 0.1, "unprivileged", pid_namespace=True),
                                              Launch("el8", "/y", False, 0.1, error="x"))))
    from .test_cron_render import cvmfs_result
    cvmfs = cvmfs_result()
    cvmfs = type(cvmfs)(cvmfs.probe, cvmfs.status, cvmfs.reason, dict(cvmfs.facts, client_version="2.11"),
                        cvmfs.measurements)
    report = RunReport([full, cvmfs], state_error="disk full", overlapped=True)
    assert_documented(parse_cron_output(render(report, judge(report.results), time.time())).keys())


def test_every_attribute_of_a_real_run_is_documented(cli_env):
    """Every probe as it runs on this machine (facts the synthetic results above do not have)."""
    from .helpers import run_cli
    proc = run_cli(["--no-condor-config"], cli_env, entry="cron")
    assert proc.returncode == 0, proc.stderr
    names = parse_cron_output(proc.stdout).keys()
    assert len(names) > 30, names  # every probe's block, not a failure ad
    assert_documented(names)


def test_packaging_macros_do_not_collide_with_knobs():
    knobs = {k.param_name for k in all_knobs()}
    assert not knobs & (PACKAGING_MACROS | HTCONDOR_OWN)
    for name in os.listdir(PACKAGING):
        text = open(os.path.join(PACKAGING, name)).read()
        for used in set(re.findall(r"\bSTARTD_HEALTH_[A-Z_]+\b", text)):
            assert used in knobs | PACKAGING_MACROS | HTCONDOR_OWN, f"{name}: unknown {used}"
