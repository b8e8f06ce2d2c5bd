"""Slot ads -> PoolSnapshot: what one answered query says about the pool,
small and JSON-able (it crosses from the query child to the daemon). Pure."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Dict, Iterable, List, Mapping, Optional, Tuple

from startd_health.monitor.pool.schema import LIST_FACTS, MAX_LABEL_CHARS, MAX_LABEL_VALUES, Schema

NODE_STATES = ("healthy", "unhealthy", "stale", "unknown")
PROBE_STATUSES = ("ok", "degraded", "failed", "skipped")   # core.model.Status values


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
