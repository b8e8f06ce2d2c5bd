"""`startd-health exporter`: a Prometheus endpoint for one node.

Probes run on their own schedules (APScheduler: one job per probe at the
probe's period, with jitter, at most one instance, missed runs coalesced) and
the endpoint serves the latest results: nothing is probed on the scrape
path, so a scrape never waits for a hung mount. Results are shared with the
cron job through the state directory (per-probe locks: the two never run the
same probe at once, and each re-uses the other's fresh result).
"""

from __future__ import annotations

import datetime
import logging
import threading
from typing import Any, Dict, Mapping, Optional, Sequence, Tuple

from startd_health.core.model import Probe, ProbeResult
from startd_health.core.runner import OVERRUN_GRACE_SECONDS, run_probes
from startd_health.core.state import StateDir
from startd_health.core.verdict import Verdict, judge
from startd_health.monitor.metrics import PREFIX, ResultsCollector
from startd_health.monitor.serving import LAUNCH_BUCKETS, ScheduledServer

log = logging.getLogger(__name__)



class NodeExporter(ScheduledServer):
    def __init__(self, probes: Sequence[Probe], settings: Mapping[str, Mapping[str, Any]],
                 state: Optional[StateDir], condor: Any = None, on_demand: Sequence[str] = ()) -> None:
        """on_demand: probes this exporter never runs (benchmarks) whose last
        result in the state directory is served too, never judged."""
        from prometheus_client import Counter, Histogram

        from startd_health.monitor.serving import new_registry

        self.probes = list(probes)
        self.settings = settings
        self.state = state
        self.condor = condor
        self.on_demand = tuple(on_demand)
        self._latest: Dict[str, ProbeResult] = {}
        self._lock = threading.Lock()
        self.registry = new_registry()
        self.registry.register(ResultsCollector(self.snapshot))
        self.runs = Counter(f"{PREFIX}_probe_runs", "probe runs by this exporter", ["probe"], registry=self.registry)
        self.failures = Counter(f"{PREFIX}_probe_failures", "probe runs that failed", ["probe"],
                                registry=self.registry)
        # Every enabled probe's counters exist from the start, at 0 (Prometheus:
        # "avoid missing metrics"): a failures series that appeared only at the
        # first failure would give rate() panels and alerts nothing until then.
        for probe in self.probes:
            self.runs.labels(probe.name)
            self.failures.labels(probe.name)
        # Seconds-valued measurements (image launch times, ...) as histograms
        # too: their distribution over time is what a launch regression shows.
        self.histograms: Dict[Tuple[str, Tuple[str, ...]], Any] = {}
        self._histogram_type = Histogram
        if state is not None:
            cached = state.load_all()
            self._latest.update({p.name: cached[p.name] for p in self.probes if p.name in cached})

    def snapshot(self) -> Tuple[Sequence[ProbeResult], Verdict]:
        with self._lock:
            results = [self._latest[p.name] for p in self.probes if p.name in self._latest]
        verdict = judge(results)
        if self.state is not None:  # read at each scrape: `startd-health benchmark` may have run since
            results += [r for r in map(self.state.load, self.on_demand) if r is not None]
        return results, verdict

    def run_probe(self, probe: Probe) -> ProbeResult:
        settings = self.settings[probe.name]
        report = run_probes([probe], {probe.name: settings}, settings["timeout"] + OVERRUN_GRACE_SECONDS + 1,
                            state=self.state, condor=self.condor)
        result = report.results[0]
        with self._lock:
            self._latest[probe.name] = result
        if probe.name not in report.reused:
            self.runs.labels(probe.name).inc()
            if not result.status.usable:
                self.failures.labels(probe.name).inc()
            self._observe(result)
        return result

    def _observe(self, result: ProbeResult) -> None:
        for m in result.measurements:
            if m.unit != "seconds":
                continue
            key = (f"{PREFIX}_{result.probe}_{m.name}_duration_seconds", tuple(k for k, _ in m.labels))
            histogram = self.histograms.get(key)
            if histogram is None:
                histogram = self.histograms[key] = self._histogram_type(
                    key[0], f"{result.probe} probe: {m.name} over time", list(key[1]), buckets=LAUNCH_BUCKETS,
                    registry=self.registry)
            (histogram.labels(*[v for _, v in m.labels]) if m.labels else histogram).observe(m.value)

    def schedule(self, scheduler: Any, now: datetime.datetime) -> None:
        for index, probe in enumerate(self.probes):
            period = self.settings[probe.name]["period"]
            scheduler.add_job(
                self.run_probe, "interval", args=[probe], id=probe.name, seconds=period,
                jitter=min(30.0, period / 10), max_instances=1, coalesce=True, misfire_grace_time=max(1, int(period)),
                next_run_time=now + datetime.timedelta(seconds=0.2 * index))  # first runs now, staggered
