"""What the kernel probe remembers of the kernel log, for whoever needs it.

The kernel probe (probes/kernel.py) writes it, atomically, into its scratch
directory: the reader's cursor, the count and the last event per class, and
the events still inside their window. Other probes read it here, never by
importing the kernel probe: the GPU probe asks which GPUs logged a fatal Xid
(``gpu_failures``), so that a GPU fallen off the bus fails the GPU probe too,
even when nvidia-smi and the PCI bus no longer show it.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, field
from typing import Any, Dict, List, Mapping, Optional

from startd_health.system import kmsg

log = logging.getLogger(__name__)

STATE_FILE = "kernel_events.json"
PROBE = "kernel"    # whose scratch directory holds it


@dataclass(frozen=True)
class Event:
    cls: str
    judgement: str     # what it does now: count, degrade, fail or readonly (an xid is resolved)
    at: float          # epoch seconds it was logged
    message: str
    device: str = ""   # filesystem or block device (kernel name) or mount point
    pci: str = ""      # GPU PCI address (Xid)
    code: int = -1     # Xid number

    def to_json(self) -> Dict[str, Any]:
        return {"class": self.cls, "judgement": self.judgement, "at": self.at, "message": self.message,
                "device": self.device, "pci": self.pci, "code": self.code}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> "Event":
        return cls(str(data["class"]), str(data["judgement"]), float(data["at"]), str(data["message"]),
                   str(data.get("device", "")), str(data.get("pci", "")), int(data.get("code", -1)))


@dataclass
class State:
    cursor: Optional[kmsg.Cursor] = None
    counts: Dict[str, int] = field(default_factory=dict)
    last: Dict[str, Event] = field(default_factory=dict)       # the last event per class
    active: List[Event] = field(default_factory=list)          # degrade/fail/readonly events in their window

    def to_json(self) -> Dict[str, Any]:
        return {"cursor": self.cursor.to_json() if self.cursor else None, "counts": self.counts,
                "last": {c: e.to_json() for c, e in sorted(self.last.items())},
                "active": [e.to_json() for e in self.active]}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> "State":
        return cls(kmsg.Cursor.from_json(data.get("cursor")),
                   {str(c): int(n) for c, n in dict(data.get("counts", {})).items()},
                   {str(c): Event.from_json(e) for c, e in dict(data.get("last", {})).items()},
                   [Event.from_json(e) for e in data.get("active", [])])


def load_state(scratch: Optional[str]) -> State:
    if scratch is None:
        return State()
    path = os.path.join(scratch, STATE_FILE)
    try:
        with open(path, "rb") as handle:
            return State.from_json(json.loads(handle.read()))
    except FileNotFoundError:
        return State()
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        log.warning("ignoring unreadable %s: %s", path, exc)
        return State()


def gpu_failures(scratch: Optional[str], boot_id: str, now: float, window: float) -> List[Event]:
    """The newest failing event per GPU (PCI address) inside the window, of
    this boot (a reboot resets a GPU; the kernel probe drops such events at
    its next run, this does not wait for it)."""
    state = load_state(scratch)
    if state.cursor is not None and state.cursor.boot_id and boot_id and state.cursor.boot_id != boot_id:
        return []
    newest: Dict[str, Event] = {}
    for event in state.active:
        if event.pci and event.judgement == "fail" and now - event.at < window:
            if event.pci not in newest or event.at >= newest[event.pci].at:
                newest[event.pci] = event
    return [newest[pci] for pci in sorted(newest)]
