"""`startd-health pool-exporter`: the pool's health from the HTCondor collector.

Glideins on remote sites cannot be scraped by Prometheus, but their slot ads
reach the collector with our StartdHealth* attributes. This exporter queries
the collector on a schedule (APScheduler, like `startd-health exporter`) and
serves pool-wide metrics from memory; nothing is queried on the scrape path.

Shaped by what a pool of tens of thousands of slots needs:

- Dynamic slots carry the same StartdHealth* attributes as their
  partitionable parent (STARTD_CRON publishes into every slot), so the query
  leaves them out (`SlotType =!= "Dynamic"`) and asks only for the attributes
  it uses (a projection). What still comes back is counted per machine
  (`Machine`): the partitionable slot, else a static slot, else a dynamic
  one; among several startds of one machine (glideins), the freshest verdict.
- The htcondor2 bindings hold the GIL for the whole query (measured: a
  thread that queries a silent collector freezes every other thread, the
  HTTP server's too), so each query runs in a child process with the
  collector's QUERY_TIMEOUT set and a hard deadline, after which its process
  group is killed. The child reduces the ads to a small summary (JSON) and
  exits, so the ads' memory never stays in the daemon.
- Collectors are tried in order (STARTD_HEALTH_POOL_COLLECTORS, by default
  HTCondor's COLLECTOR_HOST): the first that answers wins, and
  startd_health_pool_collector_info{collector} says which one it was.

Metric families (naming as in monitor/metrics.py, prefix startd_health_pool_):

  startd_health_pool_nodes{state}                  machines: healthy | unhealthy | stale | unknown
  startd_health_pool_node_healthy{machine}         the one per-machine family: 1 healthy, 0 unhealthy or
                                                   stale (machines without a verdict are not listed)
  startd_health_pool_probe_nodes{probe,status}     fresh machines by each probe's status
  startd_health_pool_<probe>_<item>_nodes{<item>,state}   fresh machines per image / CVMFS repo, ok | failed
  startd_health_pool_container_launch_seconds{image}      histogram of image launch times across fresh
                                                   machines (a snapshot per query: use without rate())
  startd_health_pool_query_success                 1 when the last query was answered
  startd_health_pool_query_duration_seconds        how long the last query took (failover included)
  startd_health_pool_query_last_success_timestamp_seconds
  startd_health_pool_query_ads                     slot ads the last answer held
  startd_health_pool_collector_info{collector}     1 for the collector that answered last
  startd_health_pool_collector_failures_total{collector}

A machine is "unknown" without a StartdHealthOk verdict (tool not installed,
not run yet), "stale" when its StartdHealthTimestamp is older than
STARTD_HEALTH_POOL_STALE_AFTER; probe, item and launch-time figures count
fresh machines only. When no query has been answered for that long (or
three intervals, if longer), only the exporter's own metrics are served:
frozen figures would look live.
"""

from __future__ import annotations

import functools
import json
import logging
import math
import os
import platform
import shutil
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Dict, Iterable, Iterator, List, Mapping, Optional, Sequence, Tuple

from startd_health.core.config import ConfigError
from startd_health.monitor.pool_knobs import POOL_KNOBS, default_collectors  # noqa: F401  (re-exported)

log = logging.getLogger(__name__)

POOL = "startd_health_pool"
NODE_STATES = ("healthy", "unhealthy", "stale", "unknown")
PROBE_STATUSES = ("ok", "degraded", "failed", "skipped")   # monitor.model.Status values
# List facts published as StartdHealth<Probe><Items>Ok / ...Failed, exported
# per item. A probe that adds such a pair adds a line here (the projection
# cannot use wildcards, so the attribute names must be known).
LIST_FACTS = (("container", "images"), ("cvmfs", "repos"))
# Remote ads are outside text: bound how many label values one family takes.
MAX_LABEL_VALUES = 256
MAX_LABEL_CHARS = 128
CHILD_START_SECONDS = 5.0   # interpreter start and imports of the query child, on top of the query budget


# ---------------------------------------------------------------- what to ask for

@functools.lru_cache(maxsize=4096)   # read for every ad: spelled once (measured: 2/3 of the time otherwise)
def _attribute(*parts: str) -> str:
    """StartdHealth attribute names as the cron renderer spells them; a
    fourth part is a measurement's label value (the image of a launch time)."""
    from startd_health.monitor.cron import attribute, label_suffix
    return attribute(*parts[:3]) + "".join("_" + label_suffix(label) for label in parts[3:])


@dataclass(frozen=True)
class Schema:
    """The attributes to project and how to read them (names as monitor.cron spells them)."""

    probes: Tuple[str, ...]
    images: Tuple[str, ...] = ()       # images whose launch-time attributes are projected

    def status_attr(self, probe: str) -> str:
        return _attribute(probe, "status")

    def list_attr(self, probe: str, items: str, state: str) -> str:
        return _attribute(probe, f"{items}_{state}")

    def launch_attr(self, image: str) -> str:
        return _attribute("container", "launch", "seconds", image)

    def projection(self) -> List[str]:
        attrs = ["Name", "Machine", "SlotType", "StartdHealthOk", "StartdHealthTimestamp",
                 "StartdHealthFailedProbes", "StartdHealthDegradedProbes"]
        attrs += [self.status_attr(p) for p in self.probes]
        attrs += [self.list_attr(p, items, state) for p, items in LIST_FACTS for state in ("ok", "failed")]
        attrs += [self.launch_attr(i) for i in self.images]
        return list(dict.fromkeys(attrs))


def constraint(extra: str) -> str:
    base = 'SlotType =!= "Dynamic"'
    return f"({base}) && ({extra})" if extra else base


# ---------------------------------------------------------------- ads -> summary (pure)

@dataclass
class PoolSnapshot:
    """What one answered query says about the pool: small, JSON-able."""

    time: float                  # epoch seconds when the answer came
    collector: str = ""
    ads: int = 0
    nodes: Dict[str, int] = field(default_factory=lambda: dict.fromkeys(NODE_STATES, 0))
    node_healthy: Dict[str, int] = field(default_factory=dict)          # machine -> 1/0
    probes: Dict[str, Dict[str, int]] = field(default_factory=dict)     # probe -> status -> machines
    items: Dict[str, Dict[str, Dict[str, int]]] = field(default_factory=dict)  # "cvmfs/repos" -> repo -> state -> n
    launch: Dict[str, List[float]] = field(default_factory=dict)        # image -> launch seconds, fresh machines
    images: Tuple[str, ...] = ()  # image names seen in ImagesOk/ImagesFailed lists

    def to_json(self) -> Dict[str, Any]:
        return {"time": self.time, "collector": self.collector, "ads": self.ads, "nodes": self.nodes,
                "node_healthy": self.node_healthy, "probes": self.probes, "items": self.items,
                "launch": self.launch, "images": list(self.images)}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> "PoolSnapshot":
        return cls(time=float(data["time"]), collector=str(data.get("collector", "")), ads=int(data.get("ads", 0)),
                   nodes={s: int(data["nodes"].get(s, 0)) for s in NODE_STATES},
                   node_healthy={str(k): int(v) for k, v in data.get("node_healthy", {}).items()},
                   probes=data.get("probes", {}), items=data.get("items", {}),
                   launch={str(k): [float(x) for x in v] for k, v in data.get("launch", {}).items()},
                   images=tuple(data.get("images", ())))


_SLOT_RANK = {"Partitionable": 0, "Static": 1, None: 1, "Dynamic": 2}


def machine_of(ad: Mapping[str, Any]) -> str:
    machine = ad.get("Machine")
    if isinstance(machine, str) and machine:
        return machine
    name = ad.get("Name")
    return name.rpartition("@")[2] if isinstance(name, str) else ""


def _number(value: Any) -> Optional[float]:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) if math.isfinite(value) else None


def _strings(value: Any) -> List[str]:
    if not isinstance(value, (list, tuple)):
        return []
    return [v[:MAX_LABEL_CHARS] for v in value if isinstance(v, str) and v]


def pick_machines(ads: Iterable[Mapping[str, Any]]) -> Dict[str, Mapping[str, Any]]:
    """One ad per machine: partitionable slot, else static, else dynamic; then
    the newest StartdHealthTimestamp; then the smallest Name (deterministic)."""
    best: Dict[str, Tuple[Tuple[Any, ...], Mapping[str, Any]]] = {}
    for ad in ads:
        machine = machine_of(ad)
        if not machine:
            continue
        slot_type = ad.get("SlotType")
        stamp = _number(ad.get("StartdHealthTimestamp"))
        name = ad.get("Name")
        rank = (_SLOT_RANK.get(slot_type if isinstance(slot_type, str) else None, 1),
                -(stamp if stamp is not None else -math.inf), name if isinstance(name, str) else "")
        if machine not in best or rank < best[machine][0]:
            best[machine] = (rank, ad)
    return {machine: ad for machine, (_, ad) in best.items()}


def node_state(ad: Mapping[str, Any], now: float, stale_after: float) -> str:
    ok = ad.get("StartdHealthOk")
    if not isinstance(ok, bool):
        return "unknown"
    stamp = _number(ad.get("StartdHealthTimestamp"))
    if stamp is None or now - stamp > stale_after:
        return "stale"
    return "healthy" if ok else "unhealthy"


def probe_statuses(ad: Mapping[str, Any], schema: Schema) -> Dict[str, str]:
    """Each probe's status on this machine: its StartdHealth<Probe>Status, and
    the verdict's failed/degraded lists (which name probes this exporter may
    not know: a newer version on the node)."""
    statuses: Dict[str, str] = {}
    for probe in schema.probes:
        status = ad.get(schema.status_attr(probe))
        if status in PROBE_STATUSES:
            statuses[probe] = status
    for probe in _strings(ad.get("StartdHealthDegradedProbes")):
        statuses.setdefault(probe, "degraded")
    for probe in _strings(ad.get("StartdHealthFailedProbes")):
        statuses[probe] = "failed"
    return statuses


def _bounded(table: Dict[str, Any], key: str) -> bool:
    """Whether key may be (or already is) in table, within MAX_LABEL_VALUES."""
    return key in table or len(table) < MAX_LABEL_VALUES


def aggregate(ads: Iterable[Mapping[str, Any]], schema: Schema, now: float, stale_after: float,
              collector: str = "") -> PoolSnapshot:
    ads = list(ads)
    snap = PoolSnapshot(time=now, collector=collector, ads=len(ads))
    images = set()
    for machine, ad in sorted(pick_machines(ads).items()):
        state = node_state(ad, now, stale_after)
        snap.nodes[state] += 1
        if state == "unknown":
            continue
        snap.node_healthy[machine] = 1 if state == "healthy" else 0
        for image in _strings(ad.get(schema.list_attr("container", "images", "ok"))) + _strings(
                ad.get(schema.list_attr("container", "images", "failed"))):
            images.add(image)
        if state == "stale":
            continue
        for probe, status in probe_statuses(ad, schema).items():
            if _bounded(snap.probes, probe):
                snap.probes.setdefault(probe, dict.fromkeys(PROBE_STATUSES, 0))[status] += 1
        for probe, items in LIST_FACTS:
            for state_name in ("ok", "failed"):
                for item in _strings(ad.get(schema.list_attr(probe, items, state_name))):
                    table = snap.items.setdefault(f"{probe}/{items}", {})
                    if _bounded(table, item):
                        table.setdefault(item, {"ok": 0, "failed": 0})[state_name] += 1
        for image in schema.images:
            seconds = _number(ad.get(schema.launch_attr(image)))
            if seconds is not None and seconds >= 0 and _bounded(snap.launch, image):
                snap.launch.setdefault(image, []).append(seconds)
    snap.images = tuple(sorted(images)[:MAX_LABEL_VALUES])
    return snap


# ---------------------------------------------------------------- the query (child process)

def query_collector(collector: str, schema: Schema, extra_constraint: str, stale_after: float) -> PoolSnapshot:
    """Query one collector and summarise (runs in the child). A second query
    follows only when images appear whose launch times were not projected."""
    import htcondor2

    def ask(s: Schema) -> PoolSnapshot:
        ads = htcondor2.Collector(collector).query(htcondor2.AdTypes.Startd, constraint(extra_constraint),
                                                  projection=s.projection())
        return aggregate(ads, s, time.time(), stale_after, collector)

    snap = ask(schema)
    new = set(snap.images) - set(schema.images)
    if new and len(schema.images) < MAX_LABEL_VALUES:
        snap = ask(Schema(schema.probes, tuple(sorted(set(schema.images) | new))[:MAX_LABEL_VALUES]))
    return snap


def query_child_main(argv: Optional[Sequence[str]] = None) -> int:
    """Child entry point: argv = [spec JSON, output path]. Exit 0 with the
    summary written to the output path, else 1 with one line on stderr."""
    spec_text, out_path = argv if argv is not None else sys.argv[1:3]
    spec = json.loads(spec_text)
    try:
        snap = query_collector(spec["collector"], Schema(tuple(spec["probes"]), tuple(spec["images"])),
                               spec["constraint"], float(spec["stale_after"]))
    except Exception as exc:
        print(f"{type(exc).__name__}: {exc}".replace("\n", " "), file=sys.stderr)
        return 1
    from startd_health.core.state import write_atomic
    write_atomic(out_path, json.dumps(snap.to_json(), separators=(",", ":")).encode())
    return 0


_CHILD_CODE = ("import sys; from startd_health.monitor.pool_exporter import query_child_main; "
               "sys.exit(query_child_main(sys.argv[1:3]))")


def run_query_child(collector: str, schema: Schema, extra_constraint: str, stale_after: float, timeout: float,
                    workdir: str) -> Tuple[Optional[PoolSnapshot], str]:
    """(snapshot, '') or (None, why it failed); never takes much longer than
    timeout + CHILD_START_SECONDS."""
    from startd_health.system.procs import run_command

    out_path = os.path.join(workdir, "answer.json")
    try:
        os.unlink(out_path)
    except FileNotFoundError:
        pass
    package_root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [package_root, os.environ.get("PYTHONPATH")])),
               _CONDOR_QUERY_TIMEOUT=str(max(1, math.ceil(timeout))))
    spec = json.dumps({"collector": collector, "probes": list(schema.probes), "images": list(schema.images),
                       "constraint": extra_constraint, "stale_after": stale_after})
    result = run_command([sys.executable, "-c", _CHILD_CODE, spec, out_path], timeout + CHILD_START_SECONDS,
                         env=env)
    if not result.ok:
        from startd_health.system.procs import last_line
        if result.timed_out:
            return None, f"no answer within {timeout + CHILD_START_SECONDS:g}s (query killed)"
        return None, last_line(result.stderr) or result.describe_failure()
    try:
        with open(out_path, "rb") as handle:
            return PoolSnapshot.from_json(json.load(handle)), ""
    except (OSError, ValueError, KeyError) as exc:
        return None, f"unreadable answer: {exc}"


# ---------------------------------------------------------------- metrics

def _launch_histogram(values: Sequence[float], buckets: Sequence[float]) -> Tuple[List[Tuple[str, float]], float]:
    from prometheus_client.utils import floatToGoString
    ordered = sorted(values)
    counts, index = [], 0
    for bound in buckets:
        while index < len(ordered) and ordered[index] <= bound:
            index += 1
        counts.append((floatToGoString(bound), float(index)))
    counts.append(("+Inf", float(len(ordered))))
    return counts, math.fsum(ordered)


def snapshot_families(snap: PoolSnapshot, node_metrics: bool = True) -> List[Any]:
    """The pool's metric families from one snapshot (built once per query, served to every scrape)."""
    from prometheus_client.core import GaugeMetricFamily, HistogramMetricFamily

    from startd_health.monitor.exporter import LAUNCH_BUCKETS
    from startd_health.monitor.metrics import singular

    families: List[Any] = []
    nodes = GaugeMetricFamily(f"{POOL}_nodes", "machines by health state at the last query (stale: verdict "
                              "older than STARTD_HEALTH_POOL_STALE_AFTER; unknown: no verdict)", labels=["state"])
    for state in NODE_STATES:
        nodes.add_metric([state], float(snap.nodes.get(state, 0)))
    families.append(nodes)
    if node_metrics:
        per_node = GaugeMetricFamily(f"{POOL}_node_healthy", "per machine: 1 healthy, 0 unhealthy or stale "
                                     "(machines without a verdict are not listed)", labels=["machine"])
        for machine, value in sorted(snap.node_healthy.items()):
            per_node.add_metric([machine], float(value))
        families.append(per_node)
    probes = GaugeMetricFamily(f"{POOL}_probe_nodes", "fresh machines by each probe's status", labels=["probe", "status"])
    for probe, counts in sorted(snap.probes.items()):
        for status in PROBE_STATUSES:
            probes.add_metric([probe, status], float(counts.get(status, 0)))
    families.append(probes)
    for probe, items in LIST_FACTS:
        item = singular(items)
        family = GaugeMetricFamily(f"{POOL}_{probe}_{item}_nodes", f"fresh machines on which each {item} is ok or "
                                   f"failed (from {_attribute(probe, f'{items}_ok')} and "
                                   f"{_attribute(probe, f'{items}_failed')})", labels=[item, "state"])
        for name, counts in sorted(snap.items.get(f"{probe}/{items}", {}).items()):
            for state in ("ok", "failed"):
                family.add_metric([name, state], float(counts.get(state, 0)))
        families.append(family)
    launch = HistogramMetricFamily(f"{POOL}_container_launch_seconds", "image launch time across fresh "
                                   "machines at the last query (a snapshot, not cumulative: use without rate())",
                                   labels=["image"])
    for image, values in sorted(snap.launch.items()):
        buckets, total = _launch_histogram(values, LAUNCH_BUCKETS)
        launch.add_metric([image], buckets, total)
    families.append(launch)
    return families


class PoolExporter:
    def __init__(self, collectors: Sequence[str], probes: Sequence[str], interval: float = 60.0,
                 query_timeout: float = 30.0, stale_after: float = 900.0, extra_constraint: str = "",
                 node_metrics: bool = True) -> None:
        import prometheus_client
        from prometheus_client import CollectorRegistry
        from prometheus_client.process_collector import ProcessCollector

        if hasattr(prometheus_client, "disable_created_metrics"):
            prometheus_client.disable_created_metrics()
        if not collectors:
            raise ValueError("no collector to query")
        self.collectors = list(collectors)
        self.schema = Schema(tuple(probes))
        self.interval = interval
        self.query_timeout = query_timeout
        self.stale_after = stale_after
        self.extra_constraint = extra_constraint
        self.node_metrics = node_metrics
        self._workdir = ""
        self._lock = threading.Lock()
        self.snapshot: Optional[PoolSnapshot] = None
        self._families: List[Any] = []
        self.last_success = 0.0
        self.last_ok = False
        self.last_duration = 0.0
        self.failures = dict.fromkeys(self.collectors, 0)
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(self)
        ProcessCollector(registry=self.registry)
        self.scheduler: Any = None
        self.server: Any = None

    @property
    def workdir(self) -> str:
        """A private directory for the query child's answers."""
        if not self._workdir:
            self._workdir = tempfile.mkdtemp(prefix="startd-health-pool-")
        return self._workdir

    # one scheduled run
    def query_once(self) -> bool:
        started = time.monotonic()
        for collector in self.collectors:
            snap, error = run_query_child(collector, self.schema, self.extra_constraint, self.stale_after,
                                          self.query_timeout, self.workdir)
            if snap is not None:
                families = snapshot_families(snap, self.node_metrics)
                with self._lock:
                    self.snapshot, self._families = snap, families
                    self.schema = Schema(self.schema.probes, tuple(sorted(set(self.schema.images) | set(snap.images))
                                                                   )[:MAX_LABEL_VALUES])
                    self.last_success, self.last_ok = snap.time, True
                    self.last_duration = time.monotonic() - started
                log.debug("%s answered: %d ads, %s", collector, snap.ads, snap.nodes)
                return True
            with self._lock:
                self.failures[collector] += 1
            log.warning("collector %s: %s", collector, error)
        with self._lock:
            self.last_ok = False
            self.last_duration = time.monotonic() - started
        return False

    # prometheus_client collector interface
    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, InfoMetricFamily

        from startd_health import __version__

        with self._lock:
            snap, families = self.snapshot, self._families
            ok, duration, last, failures = self.last_ok, self.last_duration, self.last_success, dict(self.failures)
        yield InfoMetricFamily("startd_health_build", "startd-health build information",
                               value={"version": __version__, "python": platform.python_version()})
        yield GaugeMetricFamily(f"{POOL}_query_success", "1 when the last collector query was answered",
                                value=1.0 if ok else 0.0)
        yield GaugeMetricFamily(f"{POOL}_query_duration_seconds", "how long the last collector query took "
                                "(trying every collector in turn)", value=duration)
        yield GaugeMetricFamily(f"{POOL}_query_last_success_timestamp_seconds", "when a collector last answered "
                                "(0: never)", value=last)
        info = GaugeMetricFamily(f"{POOL}_collector_info", "1 for the collector that answered the last "
                                 "successful query", labels=["collector"])
        counter = CounterMetricFamily(f"{POOL}_collector_failures", "queries a collector did not answer",
                                      labels=["collector"])
        for collector, count in failures.items():
            counter.add_metric([collector], float(count))
        if snap is not None:
            info.add_metric([snap.collector], 1.0)
        yield info
        yield counter
        if snap is not None and time.time() - snap.time <= self.max_data_age:
            yield GaugeMetricFamily(f"{POOL}_query_ads", "slot ads in the last answer (dynamic slots are not "
                                    "asked for)", value=float(snap.ads))
            yield from families

    @property
    def max_data_age(self) -> float:
        return max(self.stale_after, 3 * self.interval)

    def start(self, listen: Tuple[str, int], certfile: str = "", keyfile: str = "") -> None:
        import datetime

        from apscheduler.schedulers.background import BackgroundScheduler
        from startd_health.monitor.exporter_listen import start_metrics_server

        self.server = start_metrics_server(listen, self.registry, certfile, keyfile)
        self.scheduler = BackgroundScheduler(timezone=datetime.timezone.utc)
        self.scheduler.add_job(self.query_once, "interval", id="pool-query", seconds=self.interval, max_instances=1,
                               coalesce=True, misfire_grace_time=max(1, int(self.interval)),
                               next_run_time=datetime.datetime.now(datetime.timezone.utc))
        self.scheduler.start()
        log.info("serving pool metrics on %s://%s:%d/metrics (collectors: %s)", "https" if certfile else "http",
                 listen[0], listen[1], ", ".join(self.collectors))

    def stop(self) -> None:
        from startd_health.system.procs import kill_live_groups

        if self.scheduler is not None:
            self.scheduler.shutdown(wait=False)
        kill_live_groups()  # a query child still waiting for a collector
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
        if self._workdir:
            shutil.rmtree(self._workdir, ignore_errors=True)


def run(config: Any) -> int:
    """`startd-health pool-exporter`: serve until SIGTERM (exit 0)."""
    from startd_health.probes import all_probes

    from startd_health.monitor.exporter import serve_configured

    collectors = config["POOL_COLLECTORS"]
    if not collectors:
        raise ConfigError("STARTD_HEALTH_POOL_COLLECTORS is empty and HTCondor's COLLECTOR_HOST is not set: "
                          "name the collector(s) to query")
    exporter = PoolExporter(collectors, list(all_probes()), config["POOL_INTERVAL"], config["POOL_QUERY_TIMEOUT"],
                            config["POOL_STALE_AFTER"], config["POOL_CONSTRAINT"], config["POOL_NODE_METRICS"])
    return serve_configured(exporter, config, "POOL_LISTEN")
