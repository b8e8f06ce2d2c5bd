"""The node-level judgement: one verdict from all probe results."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence, Tuple

from startd_health.core.model import ProbeResult, Status


@dataclass(frozen=True)
class Verdict:
    ok: bool                       # no probe failed: the node may take jobs
    failed: Tuple[str, ...]        # names of failed probes
    degraded: Tuple[str, ...]      # names of degraded probes
    reason: str                    # the failing (else degrading) probes' reasons, one line


def judge(results: Sequence[ProbeResult], extra_failures: Sequence[str] = ()) -> Verdict:
    """extra_failures: reasons that make the node unhealthy without a probe (e.g. bad config)."""
    failed_probes = tuple(r.probe for r in results if r.status is Status.FAILED)
    degraded = tuple(r.probe for r in results if r.status is Status.DEGRADED)
    reasons = list(extra_failures) + [f"{r.probe}: {r.reason}" for r in results if r.status is Status.FAILED]
    if not reasons:
        reasons = [f"{r.probe}: {r.reason}" for r in results if r.status is Status.DEGRADED]
    return Verdict(not failed_probes and not extra_failures, failed_probes, degraded, "; ".join(reasons))
