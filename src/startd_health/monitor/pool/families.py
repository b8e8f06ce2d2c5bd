"""PoolSnapshot -> the pool's metric families (built once per query, served
to every scrape). Naming as in monitor/metrics.py."""

from __future__ import annotations

import math
from typing import Any, List, Sequence, Tuple

from startd_health.monitor.pool.aggregate import NODE_STATES, PROBE_STATUSES, PoolSnapshot
from startd_health.monitor.pool.schema import LIST_FACTS, POOL, _attribute


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

    from startd_health.monitor.metrics import singular
    from startd_health.monitor.serving import LAUNCH_BUCKETS

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
