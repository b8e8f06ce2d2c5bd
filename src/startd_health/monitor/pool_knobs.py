"""The pool exporter's knobs, apart from the exporter itself: `startd-health
config` and the help read them without importing the exporter."""

from __future__ import annotations

from typing import Any, Optional, Tuple

from startd_health.core.config import CondorParams, Knob, parse_bool, parse_list, parse_positive_seconds
from startd_health.monitor.exporter_listen import format_listen, parse_listen


def parse_constraint(text: str) -> str:
    text = text.strip()
    if text:
        try:
            import classad2
        except ImportError:  # only the pool exporter evaluates it, and it refuses to start without the bindings
            return text
        try:
            classad2.ExprTree(text)
        except Exception:
            raise ValueError("not a valid ClassAd expression") from None
    return text


def default_collectors(condor: CondorParams) -> Optional[Tuple[Tuple[str, ...], str]]:
    """Derived default of POOL_COLLECTORS: HTCondor's COLLECTOR_HOST (may be a list)."""
    value = condor.get("COLLECTOR_HOST")
    collectors = parse_list(value) if value else ()
    return (collectors, "default (HTCondor COLLECTOR_HOST)") if collectors else None


def _no_collectors(config: Any) -> Tuple[str, str]:
    return "", "none: HTCondor's COLLECTOR_HOST is not set; name the collectors"


POOL_KNOBS = (
    Knob("POOL_COLLECTORS", parse_list, (), "collectors for `startd-health pool-exporter`, tried in order; the "
         "first that answers is used", "LIST", default_text="HTCondor's `COLLECTOR_HOST`",
         derive=default_collectors, resolve=_no_collectors),
    Knob("POOL_INTERVAL", parse_positive_seconds, 60.0, "seconds between collector queries",
         "SECONDS"),
    Knob("POOL_QUERY_TIMEOUT", parse_positive_seconds, 30.0, "budget for one collector's answer; then the "
         "query is killed and the next collector tried", "SECONDS"),
    Knob("POOL_LISTEN", parse_listen, ("127.0.0.1", 9762), "where `startd-health pool-exporter` listens "
         "(TLS: the `STARTD_HEALTH_EXPORTER_TLS_*` knobs)", "ADDR:PORT", format_listen),
    Knob("POOL_STALE_AFTER", parse_positive_seconds, 900.0, "a machine whose `StartdHealthTimestamp` is older "
         "counts as stale", "SECONDS"),
    Knob("POOL_CONSTRAINT", parse_constraint, "", "extra ClassAd constraint on the slot ads the pool exporter "
         "reads (e.g. one site's glideins)", "EXPR", default_text="empty (all)"),
    Knob("POOL_NODE_METRICS", parse_bool, True, "export `startd_health_pool_node_healthy{machine}`, one series "
         "per machine", "BOOL"),
)
