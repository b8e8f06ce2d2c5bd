"""Prometheus renderer: probe results -> metric families.

One mapping, shared by the node_exporter textfile (cron), the HTTP exporter
and, for its naming, the pool exporter. Naming follows Prometheus'
conventions: one prefix, base units as suffixes, `_info` for metadata,
timestamps as `_timestamp_seconds`, no free text in labels.

  startd_health_healthy                                the node verdict (1/0)
  startd_health_probe_success{probe}                   1 unless the probe failed
  startd_health_probe_status{probe,status}             1 for the current status, 0 for the others
  startd_health_probe_duration_seconds{probe}
  startd_health_probe_last_run_timestamp_seconds{probe}
  startd_health_probe_last_success_timestamp_seconds{probe}   (0: never)
  startd_health_<probe>_<fact>                          bool / number facts (a name ending in a
                                                        reserved suffix such as _count gets _value)
  startd_health_<probe>_info{<fact>=...}                string facts, value 1
  startd_health_<probe>_<item>_ok{<item>=...}           from the fact pair <items>_ok / <items>_failed (1/0)
  startd_health_<probe>_<items>_<state>{<item>=...}     other list facts, value 1 per item
  startd_health_<probe>_<key>_info{<key>=...,<what>=...}  keyed facts <what>_by_<key> (`key=value`
                                                        elements), one series per key: e.g.
                                                        startd_health_container_image_info{image,platform,os,...}
  startd_health_<probe>_<measurement>[_<unit>]{labels}  measurements
  startd_health_<family>_<measurement>[_<unit>]{probe,labels}  measurements several probes share
                                                        (Measurement.family: every site check's
                                                        startd_health_site_check_perfdata_bytes{probe,label})
  ..._total                                             a measurement whose unit is "total" is a counter
  startd_health_build_info{version,python}

prometheus_client is imported lazily by the callers' code paths only.
"""

from __future__ import annotations

import math
import re
from typing import Any, Dict, Iterator, List, Sequence, Tuple

from startd_health.core.model import KEYED, ProbeResult, Status, keyed_items
from startd_health.core.verdict import Verdict

PREFIX = "startd_health"
_NOT_NAME = re.compile(r"[^a-zA-Z0-9_]+")


def metric_name(*parts: str) -> str:
    return "_".join(p for p in (_NOT_NAME.sub("_", part).strip("_").lower() for part in parts) if p)


# Suffixes Prometheus reserves for histograms, summaries, counters and info
# metrics (promtool rejects a gauge named like them): a fact such as
# gpu "count" is exported as startd_health_gpu_count_value instead.
RESERVED_SUFFIXES = ("_count", "_sum", "_bucket", "_total", "_created", "_info")


def gauge_name(*parts: str) -> str:
    name = metric_name(*parts)
    return name + "_value" if name.endswith(RESERVED_SUFFIXES) else name


def singular(word: str) -> str:
    return word[:-1] if word.endswith("s") and not word.endswith("ss") else word


# A string fact named *_message is free text (a kernel message): a ClassAd
# attribute only, never a label value.
FREE_TEXT_SUFFIX = "_message"
# A measurement with this unit is a count since the state began: a counter
# (startd_health_<probe>_<name>_total), not a gauge.
COUNTER_UNIT = "total"


def _bool(value: bool) -> float:
    return 1.0 if value else 0.0


def families(results: Sequence[ProbeResult], verdict: Verdict) -> Iterator[Any]:
    from prometheus_client.core import GaugeMetricFamily

    from startd_health.monitor.serving import build_info

    yield build_info()
    yield GaugeMetricFamily(f"{PREFIX}_healthy", "1 when no probe failed: the node may take jobs",
                            value=_bool(verdict.ok))

    success = GaugeMetricFamily(f"{PREFIX}_probe_success", "1 unless the probe failed", labels=["probe"])
    status = GaugeMetricFamily(f"{PREFIX}_probe_status", "1 for the probe's current status", labels=["probe", "status"])
    duration = GaugeMetricFamily(f"{PREFIX}_probe_duration_seconds", "how long the probe's last run took",
                                 labels=["probe"])
    last_run = GaugeMetricFamily(f"{PREFIX}_probe_last_run_timestamp_seconds", "when the probe's last run ended",
                                 labels=["probe"])
    last_ok = GaugeMetricFamily(f"{PREFIX}_probe_last_success_timestamp_seconds",
                                "when the probe last ended not failed (0: never)", labels=["probe"])
    for r in results:
        success.add_metric([r.probe], _bool(r.status.usable))
        for s in Status:
            status.add_metric([r.probe, s.value], _bool(r.status is s))
        duration.add_metric([r.probe], r.duration_seconds)
        last_run.add_metric([r.probe], r.ended_at)
        last_ok.add_metric([r.probe], r.last_success_at)
    yield from (success, status, duration, last_run, last_ok)
    shared: Dict[str, Any] = {}
    for r in results:
        yield from _fact_families(r)
        yield from _measurement_families(r, shared)
    yield from shared.values()


def _fact_families(r: ProbeResult) -> Iterator[Any]:
    from prometheus_client.core import GaugeMetricFamily, InfoMetricFamily

    strings: Dict[str, str] = {}
    for name, value in sorted(r.facts.items()):
        if isinstance(value, bool) or isinstance(value, (int, float)):
            number = float(value)
            if math.isfinite(number):
                yield GaugeMetricFamily(gauge_name(PREFIX, r.probe, name), f"{r.probe} probe: {name}", value=number)
        elif isinstance(value, str) and not name.endswith(FREE_TEXT_SUFFIX):
            strings[metric_name(name)] = value
    if strings:
        yield InfoMetricFamily(metric_name(PREFIX, r.probe), f"{r.probe} probe: descriptive facts", value=strings)
    yield from _keyed_families(r)
    for items, state, ok, bad in _list_facts(r):
        item = singular(items)
        gauge = GaugeMetricFamily(metric_name(PREFIX, r.probe, item, state),
                                  f"{r.probe} probe: 1 per {item} in {items}_{state}"
                                  + (f", 0 per {item} in {items}_failed" if bad else ""), labels=[item])
        for value in ok:
            gauge.add_metric([value], 1.0)
        for value in bad:
            gauge.add_metric([value], 0.0)
        yield gauge


def _list_facts(r: ProbeResult) -> List[Tuple[str, str, Tuple[str, ...], Tuple[str, ...]]]:
    """(items, state, values with 1, values with 0) for each list fact named <items>_<state>;
    an <items>_failed list is folded into its <items>_ok twin as zeros."""
    out = []
    for name, value in sorted(r.facts.items()):
        if not isinstance(value, tuple) or "_" not in name or KEYED in name:
            continue
        items, state = name.rsplit("_", 1)
        if state == "failed" and isinstance(r.facts.get(f"{items}_ok"), tuple):
            continue
        zeros = r.facts.get(f"{items}_failed", ()) if state == "ok" else ()
        out.append((items, state, value, zeros if isinstance(zeros, tuple) else ()))
    return out


MAX_INFO_CHARS = 128


def _keyed_families(r: ProbeResult) -> Iterator[Any]:
    """One info metric per key kind: the keyed facts <what>_by_<key> of a
    probe folded into startd_health_<probe>_<key>_info{<key>, <what>...} = 1."""
    from prometheus_client.core import InfoMetricFamily

    from startd_health.monitor.cron import clean_text

    by_key: Dict[str, Dict[str, Dict[str, str]]] = {}
    for name, value in sorted(r.facts.items()):
        if KEYED not in name or not isinstance(value, tuple):
            continue
        what, key = (metric_name(part) for part in name.split(KEYED, 1))
        for k, v in keyed_items(value):
            # Text from inside an image (its os-release): one bounded line per label.
            by_key.setdefault(key, {}).setdefault(clean_text(k, MAX_INFO_CHARS), {})[what] = \
                clean_text(v, MAX_INFO_CHARS)
    for key, rows in sorted(by_key.items()):
        labels = sorted({what for row in rows.values() for what in row} - {key})
        family = InfoMetricFamily(metric_name(PREFIX, r.probe, key), f"{r.probe} probe: what is known of each {key}",
                                  labels=[key])
        for k, row in sorted(rows.items()):
            family.add_metric([k], {label: row.get(label, "") for label in labels})
        yield family


def _measurement_families(r: ProbeResult, shared: Dict[str, Any]) -> Iterator[Any]:
    """The probe's own measurement families; those of a shared family (the
    probe as a label) are added to `shared`, yielded once after every probe."""
    from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

    by_name: Dict[str, Any] = {}
    for m in r.measurements:
        if not math.isfinite(m.value):
            continue
        labels = ([("probe", r.probe)] if m.family else []) + list(m.labels)
        counter = m.unit == COUNTER_UNIT
        parts = (PREFIX, m.family or r.probe, m.name) + (() if counter else (m.unit,))
        name = metric_name(*parts) if counter else gauge_name(*parts)
        families = shared if m.family else by_name
        family = families.get(name)
        if family is None:
            what = f"{m.family} measurement" if m.family else f"{r.probe} probe"
            kind = CounterMetricFamily if counter else GaugeMetricFamily
            family = families[name] = kind(name, f"{what}: {m.name}" + (f" ({m.unit})" if m.unit else ""),
                                           labels=[k for k, _ in labels])
        family.add_metric([v for _, v in labels], m.value)
    yield from by_name.values()


class ResultsCollector:
    """A prometheus_client collector over whatever `snapshot()` returns now."""

    def __init__(self, snapshot: Any) -> None:
        self._snapshot = snapshot

    def collect(self) -> Iterator[Any]:
        results, verdict = self._snapshot()
        yield from families(results, verdict)


def exposition(results: Sequence[ProbeResult], verdict: Verdict) -> bytes:
    """Text exposition format of the results (no timestamps: the textfile collector rejects them)."""
    from prometheus_client import CollectorRegistry, generate_latest

    registry = CollectorRegistry(auto_describe=False)
    registry.register(ResultsCollector(lambda: (results, verdict)))
    return generate_latest(registry)
