"""Golden files: the cron ad and the /metrics text of recorded probe results.

tests/unit/golden/results/ holds the results of one real run on this
project's test machine (Debian 12, 2026-12-03): `startd-health cron` with an
Apptainer stand-in that runs the inside script on the host (el9 launches,
el8 is missing), two CVMFS repositories that are not mounted, and the fast
benchmarks. Rendering them must give exactly golden/cron.ad and
golden/metrics.prom, and the pool exporter's families over slot ads that
carry that cron ad golden/pool.prom (node_exporter's e2e-output.txt): any
change in how a result is spelled shows up as a diff of those files. When the change is
intended, regenerate them and commit the diff:

    STARTD_HEALTH_UPDATE_GOLDEN=1 python -m pytest tests/unit/test_golden.py
"""

import json
import os
import re
import platform

import pytest

from startd_health import __version__
from startd_health.core.model import ProbeResult, RunReport
from startd_health.core.verdict import judge
from startd_health.monitor.cron import render
from startd_health.monitor.metrics import exposition
from startd_health.probes import all_probes

GOLDEN = os.path.join(os.path.dirname(os.path.abspath(__file__)), "golden")
UPDATE = os.environ.get("STARTD_HEALTH_UPDATE_GOLDEN") == "1"
NOW = 1796327000.0   # a few seconds after the recorded run: ages are spelled too


def recorded():
    """(periodic results, on-demand results), as `startd-health cron` publishes them."""
    results = {}
    for name in sorted(os.listdir(os.path.join(GOLDEN, "results"))):
        with open(os.path.join(GOLDEN, "results", name)) as handle:
            result = ProbeResult.from_json(json.load(handle))
        results[result.probe] = result
    probes = all_probes()
    periodic = [r for name, r in results.items() if probes[name].periodic]
    return periodic, [r for name, r in results.items() if not probes[name].periodic]


def normalised(text):
    """The versions of this build and of Python are not part of the format;
    nor is how a prometheus_client version spells a float (1.5e+10 or
    1.5e+010): a sample's value is rewritten as Python's repr of it."""
    text = text.replace(f'"{__version__}"', '"<version>"').replace(
        f'python="{platform.python_version()}"', 'python="<python>"').replace(
        f'version="{__version__}"', 'version="<version>"')
    return re.sub(r"^([a-zA-Z_:][^ ]*(?:\{[^\n]*\})?) (\S+)$",
                  lambda m: f"{m.group(1)} {float(m.group(2))!r}" if _is_number(m.group(2)) else m.group(0),
                  text, flags=re.M)


def _is_number(text):
    try:
        float(text)
    except ValueError:
        return False
    return True


def check(name, text):
    path = os.path.join(GOLDEN, name)
    if UPDATE:
        with open(path, "w") as handle:
            handle.write(text)
    with open(path) as handle:
        golden = handle.read()
    assert text == golden, (f"{name} differs from the golden file; if the change is intended: "
                            f"STARTD_HEALTH_UPDATE_GOLDEN=1 python -m pytest {__file__}")


def test_cron_ad_of_the_recorded_run():
    periodic, on_demand = recorded()
    verdict = judge(periodic)
    report = RunReport(periodic + on_demand, duration_seconds=0.265)
    check("cron.ad", normalised(render(report, verdict, NOW)))


@pytest.mark.bindings
def test_the_golden_cron_ad_is_a_valid_ad():
    from .helpers import parse_cron_output

    with open(os.path.join(GOLDEN, "cron.ad")) as handle:
        ad = parse_cron_output(handle.read())
    assert ad["StartdHealthOk"] is False and ad["StartdHealthContainerImagesOk"] == ["el9"]


def test_metrics_of_the_recorded_run():
    periodic, on_demand = recorded()
    check("metrics.prom", normalised(exposition(periodic + on_demand, judge(periodic)).decode()))


@pytest.mark.bindings
def test_pool_metrics_of_slot_ads_carrying_the_recorded_cron_ad():
    """The recorded ad as the startd publishes it in two machines' slot ads
    (a partitionable slot with a dynamic one, and a static slot), read the
    way the pool exporter's query child reads the collector's answer."""
    import classad2
    from prometheus_client import CollectorRegistry, generate_latest

    from startd_health.monitor.pool.aggregate import aggregate
    from startd_health.monitor.pool.families import snapshot_families
    from startd_health.monitor.pool.schema import Schema

    with open(os.path.join(GOLDEN, "cron.ad")) as handle:
        cron_lines = [line for line in handle.read().splitlines() if line != "-"]
    ads = []
    for machine, slot_type in (("a.example.org", "Partitionable"), ("a.example.org", "Dynamic"),
                               ("b.example.org", "Static")):
        ad = classad2.ClassAd("[" + ";".join(cron_lines) + "]")
        ad.update({"Name": f"slot1@{machine}", "Machine": machine, "SlotType": slot_type})
        ads.append(ad)
    snap = aggregate(ads, Schema(tuple(all_probes()), ("el9", "el8")), NOW + 60, 900.0, "cm.example.org")

    class Families:
        def collect(self):
            return snapshot_families(snap)

    registry = CollectorRegistry(auto_describe=False)
    registry.register(Families())
    check("pool.prom", normalised(generate_latest(registry).decode()))
