"""The pool exporter's reduction of slot ads (real classad2 ClassAds) to
pool-wide figures: one machine counted once, states, probes, items, launch
histogram, label bounds; and its bounded query child."""

import math
import socket
import threading
import time

import pytest

from startd_health.monitor.pool.aggregate import PROBE_STATUSES, PoolSnapshot, aggregate, node_state, pick_machines
from startd_health.monitor.pool.exporter import PoolExporter
from startd_health.monitor.pool.families import snapshot_families
from startd_health.monitor.pool.query import CHILD_START_SECONDS, run_query_child
from startd_health.monitor.pool.schema import MAX_LABEL_CHARS, MAX_LABEL_VALUES, Schema, constraint
from startd_health.monitor.pool_knobs import POOL_KNOBS, default_collectors
from startd_health.core.config import CondorParams
from tests.pool_ads import machines

classad2 = pytest.importorskip("classad2", reason="needs the HTCondor Python bindings")
pytestmark = pytest.mark.bindings

NOW = 1_800_000_000.0
SCHEMA = Schema(("container", "cvmfs"), ("el9", "el8"))


def ad(**attrs):
    return classad2.ClassAd(attrs)


def fresh(ok=True, **more):
    return dict(StartdHealthOk=ok, StartdHealthTimestamp=int(NOW) - 10, **more)


def test_projection_names_only_what_is_read():
    projection = SCHEMA.projection()
    assert projection[:3] == ["Name", "Machine", "SlotType"]
    for attr in ("StartdHealthOk", "StartdHealthTimestamp", "StartdHealthFailedProbes", "StartdHealthDegradedProbes",
                 "StartdHealthContainerStatus", "StartdHealthCvmfsStatus", "StartdHealthCvmfsReposOk",
                 "StartdHealthCvmfsReposFailed", "StartdHealthContainerImagesOk",
                 "StartdHealthContainerLaunchSeconds_el9"):
        assert attr in projection
    assert len(projection) == len(set(projection))
    # image names as the cron renderer spells them in attribute names
    assert Schema((), ("el9.2-x",)).launch_attr("el9.2-x") == "StartdHealthContainerLaunchSeconds_el9_2_x"


def test_constraint_leaves_dynamic_slots_out_and_keeps_the_sites_own():
    assert constraint("") == 'SlotType =!= "Dynamic"'
    expr = classad2.ExprTree(constraint('GLIDEIN_Site == "X"'))
    assert expr.eval(ad(SlotType="Partitionable", GLIDEIN_Site="X")) is True
    assert expr.eval(ad(SlotType="Dynamic", GLIDEIN_Site="X")) is False
    assert expr.eval(ad(SlotType="Static", GLIDEIN_Site="Y")) is False
    assert classad2.ExprTree(constraint("")).eval(ad()) is True   # no SlotType: a static slot of old startds


def test_a_machine_counts_once_and_its_partitionable_slot_wins():
    ads = [
        ad(Name="slot1_1@a", Machine="a", SlotType="Dynamic", **fresh(True)),
        ad(Name="slot1@a", Machine="a", SlotType="Partitionable", **fresh(False, StartdHealthFailedProbes=["cvmfs"])),
        ad(Name="slot1_2@a", Machine="a", SlotType="Dynamic", **fresh(True)),
        ad(Name="slot2@b", Machine="b", SlotType="Static", **fresh(True)),
        ad(Name="slot1@b", Machine="b", SlotType="Static", **fresh(True)),
        ad(Name="slot1_1@c", Machine="c", SlotType="Dynamic", **fresh(False)),   # only a dynamic slot seen
    ]
    snap = aggregate(ads, SCHEMA, NOW, 900)
    assert snap.ads == 6
    assert snap.nodes == {"healthy": 1, "unhealthy": 2, "stale": 0, "unknown": 0}
    assert snap.node_healthy == {"a": 0, "b": 1, "c": 0}
    assert pick_machines(ads)["b"]["Name"] == "slot1@b"   # first static slot, deterministic


def test_among_startds_of_one_machine_the_freshest_verdict_wins():
    ads = [ad(Name="slot1@glidein_1@h", Machine="h", SlotType="Partitionable",
              StartdHealthOk=False, StartdHealthTimestamp=int(NOW) - 300),
           ad(Name="slot1@glidein_2@h", Machine="h", SlotType="Partitionable", **fresh(True)),
           ad(Name="slot1@glidein_3@h", Machine="h", SlotType="Partitionable")]   # no verdict at all
    snap = aggregate(ads, SCHEMA, NOW, 900)
    assert snap.node_healthy == {"h": 1}


def test_machine_from_name_when_the_ad_has_no_machine_attribute():
    snap = aggregate([ad(Name="slot1@x.example", **fresh(True)), ad(Name="slot2@x.example", **fresh(True)),
                         ad(SlotType="Static", **fresh(True))], SCHEMA, NOW, 900)   # neither: ignored
    assert snap.node_healthy == {"x.example": 1}


@pytest.mark.parametrize("attrs,state", [
    (fresh(True), "healthy"),
    (fresh(False), "unhealthy"),
    (dict(StartdHealthOk=True, StartdHealthTimestamp=int(NOW) - 901), "stale"),
    (dict(StartdHealthOk=False, StartdHealthTimestamp=int(NOW) - 900), "unhealthy"),   # exactly at the limit
    (dict(StartdHealthOk=True), "stale"),                                              # no timestamp
    (dict(StartdHealthOk=True, StartdHealthTimestamp=int(NOW) + 600), "healthy"),      # clock ahead
    (dict(StartdHealthOk="yes", StartdHealthTimestamp=int(NOW)), "unknown"),
    (dict(StartdHealthOk=classad2.ExprTree("1 == 1"), StartdHealthTimestamp=int(NOW)), "unknown"),
    ({}, "unknown"),
])
def test_node_states(attrs, state):
    assert node_state(ad(Machine="m", **attrs), NOW, 900) == state


def test_probe_statuses_come_from_status_attributes_and_the_verdict_lists():
    ads = [ad(Machine="a", **fresh(False, StartdHealthContainerStatus="ok", StartdHealthCvmfsStatus="failed",
                                   StartdHealthFailedProbes=["cvmfs", "newprobe"])),
           ad(Machine="b", **fresh(True, StartdHealthContainerStatus="degraded",
                                   StartdHealthDegradedProbes=["container", "gpu"])),
           ad(Machine="c", **fresh(True, StartdHealthContainerStatus="skipped", StartdHealthCvmfsStatus="bogus")),
           # stale machines are counted as stale, not in the probe figures
           ad(Machine="d", StartdHealthOk=False, StartdHealthTimestamp=int(NOW) - 5000,
              StartdHealthFailedProbes=["container"], StartdHealthContainerStatus="failed")]
    snap = aggregate(ads, SCHEMA, NOW, 900)
    zero = dict.fromkeys(PROBE_STATUSES, 0)
    assert snap.probes == {
        "container": dict(zero, ok=1, degraded=1, skipped=1),
        "cvmfs": dict(zero, failed=1),
        "newprobe": dict(zero, failed=1),     # a probe only newer nodes have
        "gpu": dict(zero, degraded=1),
    }
    assert snap.nodes == {"healthy": 2, "unhealthy": 1, "stale": 1, "unknown": 0}
    assert snap.node_healthy["d"] == 0


def test_repositories_images_and_launch_times_of_fresh_machines():
    ads = [ad(Machine="a", **fresh(True, StartdHealthCvmfsReposOk=["atlas.cern.ch", "cms.cern.ch"],
                                   StartdHealthContainerImagesOk=["el9", "el8"],
                                   StartdHealthContainerLaunchSeconds_el9=0.12,
                                   StartdHealthContainerLaunchSeconds_el8=0.3)),
           ad(Machine="b", **fresh(False, StartdHealthCvmfsReposOk=["cms.cern.ch"],
                                   StartdHealthCvmfsReposFailed=["atlas.cern.ch"],
                                   StartdHealthContainerImagesOk=["el9"], StartdHealthContainerImagesFailed=["el8"],
                                   StartdHealthContainerLaunchSeconds_el9=2.5)),
           ad(Machine="c", StartdHealthOk=True, StartdHealthTimestamp=0, StartdHealthContainerImagesOk=["el7"],
              StartdHealthContainerLaunchSeconds_el9=99.0),   # stale: its figures are not counted
           ad(Machine="d", **fresh(True, StartdHealthContainerLaunchSeconds_el9=float("nan"),
                                   StartdHealthContainerLaunchSeconds_el8=-1.0,
                                   StartdHealthCvmfsReposOk="not a list"))]
    snap = aggregate(ads, SCHEMA, NOW, 900)
    assert snap.items["cvmfs/repos"] == {"atlas.cern.ch": {"ok": 1, "failed": 1}, "cms.cern.ch": {"ok": 2, "failed": 0}}
    assert snap.items["container/images"] == {"el9": {"ok": 2, "failed": 0}, "el8": {"ok": 1, "failed": 1}}
    assert snap.launch == {"el9": [0.12, 2.5], "el8": [0.3]}
    assert snap.images == ("el7", "el8", "el9")   # seen anywhere: next query projects their launch times


def test_label_values_from_remote_ads_are_bounded():
    many = [ad(Machine=f"m{i}", **fresh(True, StartdHealthCvmfsReposOk=[f"repo{i}.example", "x" * 1000],
                                        StartdHealthFailedProbes=[f"probe{i}"]))
            for i in range(MAX_LABEL_VALUES + 50)]
    snap = aggregate(many, SCHEMA, NOW, 900)
    assert len(snap.items["cvmfs/repos"]) == MAX_LABEL_VALUES
    assert len(snap.probes) == MAX_LABEL_VALUES
    assert max(len(name) for name in snap.items["cvmfs/repos"]) == MAX_LABEL_CHARS
    assert len(snap.node_healthy) == MAX_LABEL_VALUES + 50   # the per-machine family is not capped


def test_synthetic_pool_matches_its_expectation():
    ads, exp = machines(300, int(NOW))
    snap = aggregate([ad(**a) for a in ads], SCHEMA, NOW, 900)
    assert snap.nodes == exp.nodes
    assert {p: c["failed"] for p, c in snap.probes.items() if c["failed"]} == exp.failed
    assert {p: c["degraded"] for p, c in snap.probes.items() if c["degraded"]} == exp.degraded
    assert {r: c["failed"] for r, c in snap.items["cvmfs/repos"].items() if c["failed"]} == exp.repo_failed
    assert {i: len(v) for i, v in snap.launch.items()} == exp.launches
    assert sorted(m for m, v in snap.node_healthy.items() if v == 0 and m in exp.unhealthy_machines) == \
        sorted(exp.unhealthy_machines)
    # what the collector returns under the exporter's constraint gives the same figures
    queried = [ad(**a) for a in ads if a["SlotType"] != "Dynamic"]
    assert len(queried) == exp.queried_ads
    again = aggregate(queried, SCHEMA, NOW, 900)
    assert (again.nodes, again.probes, again.items, again.launch) == (snap.nodes, snap.probes, snap.items, snap.launch)


def test_snapshot_round_trips_through_json():
    ads, _ = machines(40, int(NOW))
    snap = aggregate([ad(**a) for a in ads], SCHEMA, NOW, 900, collector="cm:9618")
    import json
    assert PoolSnapshot.from_json(json.loads(json.dumps(snap.to_json()))) == snap


def exposition(families):
    from prometheus_client import CollectorRegistry, generate_latest

    class Fixed:
        def collect(self):
            yield from families

    registry = CollectorRegistry(auto_describe=False)
    registry.register(Fixed())
    return generate_latest(registry).decode()


def test_metric_families():
    ads = [ad(Machine="a", **fresh(True, StartdHealthContainerStatus="ok", StartdHealthContainerImagesOk=["el9"],
                                   StartdHealthContainerLaunchSeconds_el9=0.07)),
           ad(Machine="b", **fresh(False, StartdHealthCvmfsStatus="failed", StartdHealthFailedProbes=["cvmfs"],
                                   StartdHealthCvmfsReposFailed=["atlas.cern.ch"],
                                   StartdHealthContainerImagesOk=["el9"], StartdHealthContainerLaunchSeconds_el9=0.4))]
    text = exposition(snapshot_families(aggregate(ads, SCHEMA, NOW, 900)))
    for line in ('startd_health_pool_nodes{state="healthy"} 1.0', 'startd_health_pool_nodes{state="unknown"} 0.0',
                 'startd_health_pool_node_healthy{machine="b"} 0.0',
                 'startd_health_pool_probe_nodes{probe="cvmfs",status="failed"} 1.0',
                 'startd_health_pool_probe_nodes{probe="container",status="ok"} 1.0',
                 'startd_health_pool_cvmfs_repo_nodes{repo="atlas.cern.ch",state="failed"} 1.0',
                 'startd_health_pool_container_image_nodes{image="el9",state="ok"} 2.0',
                 'startd_health_pool_container_launch_seconds_bucket{image="el9",le="0.05"} 0.0',
                 'startd_health_pool_container_launch_seconds_bucket{image="el9",le="0.1"} 1.0',
                 'startd_health_pool_container_launch_seconds_bucket{image="el9",le="0.5"} 2.0',
                 'startd_health_pool_container_launch_seconds_bucket{image="el9",le="+Inf"} 2.0',
                 'startd_health_pool_container_launch_seconds_count{image="el9"} 2.0'):
        assert line in text, line
    sums = [line for line in text.splitlines() if line.startswith("startd_health_pool_container_launch_seconds_sum")]
    assert math.isclose(float(sums[0].split()[-1]), 0.47)
    assert "machine=" not in exposition(snapshot_families(aggregate(ads, SCHEMA, NOW, 900), node_metrics=False))


def test_exporter_serves_its_own_health_always_and_pool_figures_only_while_fresh():
    exporter = PoolExporter(["cm1:9618", "cm2:9618"], ["container"], interval=60, stale_after=900)
    text = exposition(exporter.collect())
    assert "startd_health_pool_query_success 0.0" in text
    assert 'startd_health_pool_collector_failures_total{collector="cm2:9618"} 0.0' in text
    assert "startd_health_pool_nodes" not in text and "startd_health_pool_collector_info{" not in text
    snap = aggregate([ad(Machine="a", **fresh(True))], SCHEMA, time.time(), 900, collector="cm2:9618")
    exporter.snapshot, exporter._families, exporter.last_ok = snap, snapshot_families(snap), True
    text = exposition(exporter.collect())
    assert 'startd_health_pool_collector_info{collector="cm2:9618"} 1.0' in text
    assert 'startd_health_pool_nodes{state="healthy"} 1.0' in text and "startd_health_pool_query_ads 1.0" in text
    snap.time -= 901   # no answer for longer than STALE_AFTER: figures would be frozen, so none
    assert "startd_health_pool_nodes" not in exposition(exporter.collect())


def test_knobs():
    knobs = {k.name: k for k in POOL_KNOBS}
    assert knobs["POOL_LISTEN"].default == ("127.0.0.1", 9762)
    assert knobs["POOL_LISTEN"].format(knobs["POOL_LISTEN"].parse("[::1]:9762")) == "[::1]:9762"
    assert knobs["POOL_STALE_AFTER"].default == 900 and knobs["POOL_INTERVAL"].default == 60
    assert knobs["POOL_QUERY_TIMEOUT"].default == 30
    assert knobs["POOL_CONSTRAINT"].parse(' GLIDEIN_Site == "X" ') == 'GLIDEIN_Site == "X"'
    with pytest.raises(ValueError):
        knobs["POOL_CONSTRAINT"].parse("((( ")

    class Params(CondorParams):
        def __init__(self, value):
            self.available, self.value = True, value

        def get(self, name):
            return self.value if name == "COLLECTOR_HOST" else None

    assert default_collectors(Params("cm1.example:9618, cm2.example")) == (
        ("cm1.example:9618", "cm2.example"), "default (HTCondor COLLECTOR_HOST)")
    assert default_collectors(Params(None)) is None


def test_query_child_reports_a_refused_collector_in_one_line(tmp_path):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]   # closed again: nothing listens there
    t0 = time.monotonic()
    snap, error = run_query_child(f"127.0.0.1:{port}", SCHEMA, "", 900, 5, str(tmp_path))
    assert snap is None and error and "\n" not in error
    assert time.monotonic() - t0 < 10


def test_query_child_is_bounded_when_the_collector_never_answers(tmp_path):
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(16)
    held = []
    stop = threading.Event()

    def accept():
        server.settimeout(0.2)
        while not stop.is_set():
            try:
                held.append(server.accept()[0])   # accept, then say nothing
            except OSError:
                pass

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        t0 = time.monotonic()
        snap, error = run_query_child(f"127.0.0.1:{server.getsockname()[1]}", SCHEMA, "", 900, 1.0, str(tmp_path))
        elapsed = time.monotonic() - t0
    finally:
        stop.set()
        thread.join(5)
        for conn in held:
            conn.close()
        server.close()
    assert snap is None and error
    assert elapsed < 1.0 + CHILD_START_SECONDS + 2.5, elapsed
