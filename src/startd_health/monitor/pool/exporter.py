"""The pool exporter daemon: queries on a schedule, serves from memory."""

from __future__ import annotations

import datetime
import logging
import shutil
import tempfile
import threading
import time
from typing import Any, Iterator, List, Optional, Sequence

from startd_health.core.config import ConfigError
from startd_health.monitor.pool.aggregate import PoolSnapshot
from startd_health.monitor.pool.families import snapshot_families
from startd_health.monitor.pool.query import run_query_child
from startd_health.monitor.pool.schema import MAX_LABEL_VALUES, POOL, Schema
from startd_health.monitor.serving import ScheduledServer

log = logging.getLogger(__name__)


class PoolExporter(ScheduledServer):
    what = "pool metrics"

    def __init__(self, collectors: Sequence[str], probes: Sequence[str], interval: float = 60.0,
                 query_timeout: float = 30.0, stale_after: float = 900.0, extra_constraint: str = "",
                 node_metrics: bool = True) -> None:
        from startd_health.monitor.serving import new_registry

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
        self.registry = new_registry()
        self.registry.register(self)

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
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        from startd_health.monitor.serving import build_info

        with self._lock:
            snap, families = self.snapshot, self._families
            ok, duration, last, failures = self.last_ok, self.last_duration, self.last_success, dict(self.failures)
        yield build_info()
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

    def schedule(self, scheduler: Any, now: datetime.datetime) -> None:
        log.info("collectors: %s", ", ".join(self.collectors))
        scheduler.add_job(self.query_once, "interval", id="pool-query", seconds=self.interval, max_instances=1,
                          coalesce=True, misfire_grace_time=max(1, int(self.interval)), next_run_time=now)

    def stop_work(self) -> None:
        from startd_health.system.procs import kill_live_groups

        kill_live_groups()  # a query child still waiting for a collector
        if self._workdir:
            shutil.rmtree(self._workdir, ignore_errors=True)


def run(config: Any) -> int:
    """`startd-health pool-exporter`: serve until SIGTERM (exit 0)."""
    from startd_health.probes import all_probes

    from startd_health.monitor.serving import serve_configured

    collectors = config["POOL_COLLECTORS"]
    if not collectors:
        raise ConfigError("STARTD_HEALTH_POOL_COLLECTORS is empty and HTCondor's COLLECTOR_HOST is not set: "
                          "name the collector(s) to query")
    exporter = PoolExporter(collectors, list(all_probes()), config["POOL_INTERVAL"], config["POOL_QUERY_TIMEOUT"],
                            config["POOL_STALE_AFTER"], config["POOL_CONSTRAINT"], config["POOL_NODE_METRICS"])
    return serve_configured(exporter, config, "POOL_LISTEN")
