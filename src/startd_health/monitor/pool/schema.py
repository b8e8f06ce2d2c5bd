"""What the pool exporter asks the collector for: the StartdHealth*
attributes as the cron renderer (monitor/cron.py) spells them, and the
constraint that leaves dynamic slots out."""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import List, Tuple

POOL = "startd_health_pool"
# List facts published as StartdHealth<Probe><Items>Ok / ...Failed, exported
# per item. A probe that adds such a pair adds a line here (the projection
# cannot use wildcards, so the attribute names must be known).
LIST_FACTS = (("container", "images"), ("cvmfs", "repos"))
# Remote ads are outside text: bound how many label values one family takes.
MAX_LABEL_VALUES = 256
MAX_LABEL_CHARS = 128


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
