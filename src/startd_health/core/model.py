"""The typed result every probe returns, and the base class of probes.

Probes know nothing of ClassAds or Prometheus: they return a ProbeResult
made of a status, a one-line reason, measurements with units and the facts
they found. Renderers in monitor/ decide how each output spells them.
"""

from __future__ import annotations

import enum
import math
import time
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, ClassVar, Dict, List, Mapping, Optional, Protocol, Sequence, Set, Tuple, Union

if TYPE_CHECKING:   # typing only: the model imports nothing that runs commands
    from startd_health.system.procs import CommandResult

# A fact is what a probe found out, in the few shapes every output can carry.
Fact = Union[bool, int, float, str, Tuple[str, ...]]

# A keyed fact, named <what>_by_<key>, holds `key=value` elements (the
# container probe's image_by_platform: `rhel9=/path`, ...).
KEYED = "_by_"


def keyed_items(value: Fact) -> List[Tuple[str, str]]:
    """A keyed fact's (key, value) pairs."""
    if not isinstance(value, tuple):
        return []
    return [(key, text) for key, _, text in (item.partition("=") for item in value if "=" in item)]


class Status(str, enum.Enum):
    OK = "ok"              # works as it should
    DEGRADED = "degraded"  # works, with a defect jobs may care about (reason says which)
    FAILED = "failed"      # broken: the node must not take jobs that need this
    SKIPPED = "skipped"    # not applicable here (e.g. no GPU): neither good nor bad

    @property
    def usable(self) -> bool:
        """True unless the probe failed: the value a START expression gates on."""
        return self is not Status.FAILED


@dataclass(frozen=True)
class Measurement:
    """A number with its unit, e.g. Measurement("launch", 0.14, "seconds", {"image": "el9"}).

    Units are Prometheus base units spelled out (seconds, bytes, ratio, ...);
    labels distinguish several measurements of one kind within a probe.
    family: a metric family several probes share (e.g. "site_check": every
    site check's perfdata in one family, told apart by a probe label);
    empty: the probe's own (startd_health_<probe>_<name>). ClassAd names are
    per probe either way.
    """

    name: str
    value: float
    unit: str
    labels: Tuple[Tuple[str, str], ...] = ()
    family: str = ""

    def __post_init__(self) -> None:
        if isinstance(self.labels, Mapping):
            object.__setattr__(self, "labels", tuple(sorted(self.labels.items())))

    def to_json(self) -> Dict[str, Any]:
        value = self.value if math.isfinite(self.value) else None
        data = {"name": self.name, "value": value, "unit": self.unit, "labels": dict(self.labels)}
        if self.family:
            data["family"] = self.family
        return data

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> "Measurement":
        value = data["value"]
        return cls(str(data["name"]), float("nan") if value is None else float(value),
                   str(data["unit"]), tuple(sorted((str(k), str(v)) for k, v in data.get("labels", {}).items())),
                   str(data.get("family", "")))


def _fact_from_json(value: Any) -> Fact:
    if isinstance(value, list):
        return tuple(str(v) for v in value)
    if isinstance(value, (bool, int, float, str)):
        return value
    raise ValueError(f"not a fact value: {value!r}")


@dataclass(frozen=True)
class ProbeResult:
    probe: str
    status: Status
    reason: str = ""
    facts: Mapping[str, Fact] = field(default_factory=dict)
    measurements: Tuple[Measurement, ...] = ()
    started_at: float = 0.0          # epoch seconds when the probe started
    duration_seconds: float = 0.0    # how long the probe ran
    last_success_at: float = 0.0     # epoch seconds when it last ended not failed (0: never); kept by the runner

    @property
    def ended_at(self) -> float:
        return self.started_at + self.duration_seconds

    def age(self, now: Optional[float] = None) -> float:
        return max(0.0, (time.time() if now is None else now) - self.ended_at)

    def with_timing(self, started_at: float, duration_seconds: float) -> "ProbeResult":
        return replace(self, started_at=started_at, duration_seconds=duration_seconds)

    def to_json(self) -> Dict[str, Any]:
        return {
            "probe": self.probe,
            "status": self.status.value,
            "reason": self.reason,
            "facts": {k: list(v) if isinstance(v, tuple) else v for k, v in self.facts.items()},
            "measurements": [m.to_json() for m in self.measurements],
            "started_at": self.started_at,
            "duration_seconds": self.duration_seconds,
            "last_success_at": self.last_success_at,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> "ProbeResult":
        return cls(
            probe=str(data["probe"]),
            status=Status(data["status"]),
            reason=str(data.get("reason", "")),
            facts={str(k): _fact_from_json(v) for k, v in data.get("facts", {}).items()},
            measurements=tuple(Measurement.from_json(m) for m in data.get("measurements", ())),
            started_at=float(data.get("started_at", 0.0)),
            duration_seconds=float(data.get("duration_seconds", 0.0)),
            last_success_at=float(data.get("last_success_at", 0.0)),
        )


def failed(probe: str, reason: str, **facts: Fact) -> ProbeResult:
    return ProbeResult(probe, Status.FAILED, reason, facts)


@dataclass
class RunReport:
    """What one run of the probes produced, for the renderers."""

    results: List[ProbeResult]
    reused: Set[str] = field(default_factory=set)   # probes whose cached result was published
    state_error: str = ""                          # why results could not be kept, if so
    overlapped: bool = False                       # another run held the lock: cached results only
    duration_seconds: float = 0.0


class ProbeContext(Protocol):
    """What a probe may use (core.runner.BudgetedContext is the real one;
    tests build theirs with the same class). Everything a probe touches goes
    through it, so that the runner can enforce budgets and the tests can
    point it at recorded trees."""

    probe: str
    settings: Mapping[str, Any]    # the probe's knobs (lower-case, without the probe's prefix)
    condor: Any                    # core.config.CondorParams: HTCondor's own knobs, or None
    # Where /proc, /sys, /dev and /etc are read from (system.procfs): "/"
    # on a node, a recorded tree in tests. Commands always run for real.
    system_root: str

    def remaining(self) -> float:
        """Seconds left of the probe's budget."""

    def run(self, argv: Sequence[str], timeout: Optional[float] = None,
            env: Optional[Mapping[str, str]] = None, cwd: Optional[str] = None) -> "CommandResult":
        """Run a command within the budget; its process group dies with the probe."""

    def scratch_dir(self, probe: Optional[str] = None) -> Optional[str]:
        """The probe's own directory that outlives the run; None without a state directory."""

    def write_scratch(self, name: str, data: bytes) -> None:
        """Replace file ``name`` in the scratch directory atomically (OSError when it cannot)."""


class Probe:
    """One health check. Subclasses live one per module under probes/.

    ``run`` gathers facts (the only code that touches the system, always
    through ``ctx`` so the runner can enforce budgets) and judges them into a
    ProbeResult. It must not touch possibly-hung filesystems in this process:
    use ``ctx.run`` so that a stuck child can be abandoned.
    """

    name: ClassVar[str]
    description: ClassVar[str]
    default_period: ClassVar[float] = 300.0   # seconds between runs
    default_timeout: ClassVar[float] = 60.0   # budget for one run
    enabled_by_default: ClassVar[bool] = True
    # False: an on-demand probe (benchmarks). Only `startd-health benchmark`
    # runs it (HTCondor's BENCHMARKS, when the node is idle); cron, check and
    # the exporter never run it, but publish its last result from the state
    # directory with its age, and it never counts for the node's verdict.
    periodic: ClassVar[bool] = True
    # Probe-specific configuration knobs (core.config.Knob), without the
    # STARTD_HEALTH_ prefix; period and timeout knobs are added for every probe.
    knobs: ClassVar[Sequence[Any]] = ()
    # Other probes' knobs this probe reads (without the STARTD_HEALTH_ prefix);
    # they arrive in ctx.settings under their lower-cased full name
    # (CVMFS_REPOSITORIES -> "cvmfs_repositories") and count for the cache.
    shared_knobs: ClassVar[Sequence[str]] = ()
    # The prefix of the probe's _PERIOD and _TIMEOUT knobs and of the knobs
    # whose settings keys lose it; empty: the name in upper case. A site
    # check `disk` (probe site_disk) has SITE_CHECK_DISK_PERIOD.
    knob_prefix: ClassVar[str] = ""
    # True: made from configuration (probes/__init__.py configure), not a module of its own.
    dynamic: ClassVar[bool] = False
    # > 0: a healthy run answers well within this many seconds (a hang-safe
    # check that only stats and reads): a re-check the daemon runs on an event
    # or a request that has not answered by then makes the node refuse until
    # it does (monitor/daemon.py). 0: runs may take long (launches, benchmarks).
    answers_within: ClassVar[float] = 0.0

    @classmethod
    def prefix(cls) -> str:
        return cls.knob_prefix or cls.name.upper()

    def run(self, ctx: ProbeContext) -> ProbeResult:  # pragma: no cover - interface
        raise NotImplementedError
