"""The README documents every knob and attribute; packaging macros never
collide with the tool's knobs."""

import os
import re
import time

from monitor.cli import all_knobs
from monitor.cron import render
from monitor.runner import RunReport
from monitor.verdict import judge
from probes.container import Gathered, Launch, Runtime, judge as judge_container

from .helpers import REPO, parse_cron_output

README = open(os.path.join(REPO, "README.md")).read()
PACKAGING = os.path.join(REPO, "packaging", "condor")
PACKAGING_MACROS = {"STARTD_HEALTH_CRON", "STARTD_HEALTH_HOOK", "STARTD_HEALTH_CRON_PERIOD", "STARTD_HEALTH_MAX_AGE",
                    "STARTD_HEALTH_USABLE", "STARTD_HEALTH_START_GATE"}
HTCONDOR_OWN = {"STARTD_HEALTH_EXPRS"}


def documented(name: str) -> bool:
    return f"`{name}`" in README


def test_every_knob_is_documented():
    for knob in all_knobs():
        generic = re.sub(r"^STARTD_HEALTH_[A-Z]+_(PERIOD|TIMEOUT)$", r"STARTD_HEALTH_<PROBE>_\1", knob.param_name)
        assert documented(generic), f"{knob.param_name} is missing from the README's knob table"


def test_every_published_attribute_is_documented():
    full = judge_container(Gathered(Runtime("/usr/bin/apptainer", "PATH"), name="apptainer", version="1.4.5",
                                    launches=(Launch("el9", "/x", True, 0.1, "unprivileged"),)))
    report = RunReport([full], state_error="disk full", overlapped=True)
    ad = parse_cron_output(render(report, judge(report.results), time.time()))
    for name in ad.keys():
        generic = re.sub(r"_el9$", "_<image>", name)
        per_probe = re.sub(r"^StartdHealthContainer(Ok|Status|Reason|Age)$", r"StartdHealth<Probe>\1", generic)
        assert documented(generic) or documented(per_probe), f"{name} is missing from the README's attribute table"


def test_packaging_macros_do_not_collide_with_knobs():
    knobs = {k.param_name for k in all_knobs()}
    assert not knobs & (PACKAGING_MACROS | HTCONDOR_OWN)
    for name in os.listdir(PACKAGING):
        text = open(os.path.join(PACKAGING, name)).read()
        for used in set(re.findall(r"\bSTARTD_HEALTH_[A-Z_]+\b", text)):
            assert used in knobs | PACKAGING_MACROS | HTCONDOR_OWN, f"{name}: unknown {used}"
