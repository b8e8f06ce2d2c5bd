"""The pool exporter's knobs, apart from the exporter itself: every command
(the periodic cron job included) lists all knobs, and importing the exporter
just for these would cost each cron run ~10 ms."""

from __future__ import annotations

from typing import Optional, Tuple

from startd_health.core.config import CondorParams, Knob, parse_bool, parse_list, parse_positive_seconds
from startd_health.monitor.exporter_listen import format_listen, parse_listen


def parse_constraint(text: str) -> str:
    text = text.strip()
    if text:
        import classad2
        try:
            classad2.ExprTree(text)
        except Exception:
            raise ValueError("not a valid ClassAd expression") from None
    return text


POOL_KNOBS = (
    Knob("POOL_COLLECTORS", parse_list, (), "collectors for `startd-health pool-exporter` to query, in order: "
         "the first that answers is used (default: HTCondor's COLLECTOR_HOST)", "LIST"),
    Knob("POOL_INTERVAL", parse_positive_seconds, 60.0, "the pool exporter queries the collector this often",
         "SECONDS"),
    Knob("POOL_QUERY_TIMEOUT", parse_positive_seconds, 30.0, "budget for one collector's answer; then the "
         "query is killed and the next collector tried", "SECONDS"),
    Knob("POOL_LISTEN", parse_listen, ("127.0.0.1", 9762), "address:port of `startd-health pool-exporter`",
         "ADDR:PORT", format_listen),
    Knob("POOL_STALE_AFTER", parse_positive_seconds, 900.0, "a machine whose StartdHealthTimestamp is older "
         "counts as stale", "SECONDS"),
    Knob("POOL_CONSTRAINT", parse_constraint, "", "extra ClassAd constraint on the slot ads the pool exporter "
         "reads (e.g. one site's glideins; empty: all)", "EXPR"),
    Knob("POOL_NODE_METRICS", parse_bool, True, "export startd_health_pool_node_healthy{machine}, one series "
         "per machine", "BOOL"),
)


def default_collectors(condor: CondorParams) -> Optional[Tuple[Tuple[str, ...], str]]:
    """Derived default of POOL_COLLECTORS: HTCondor's COLLECTOR_HOST (may be a list)."""
    value = condor.get("COLLECTOR_HOST")
    collectors = parse_list(value) if value else ()
    return (collectors, "default (HTCondor COLLECTOR_HOST)") if collectors else None


