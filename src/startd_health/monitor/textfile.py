"""node_exporter's textfile collector: the metrics of a cron run in DIR/startd_health.prom."""

from __future__ import annotations

import logging
import os
from typing import Any, Sequence

log = logging.getLogger("startd-health")

TEXTFILE_NAME = "startd_health.prom"


def write_textfile(directory: str, results: Sequence[Any], verdict: Any) -> str:
    """Atomic, mode 0644, no timestamps (the collector rejects them). Returns an error text or ''."""
    from startd_health.core.state import write_atomic
    from startd_health.monitor.metrics import exposition
    path = os.path.join(directory, TEXTFILE_NAME)
    try:
        write_atomic(path, exposition(results, verdict), mode=0o644)
    except OSError as exc:
        log.warning("cannot write %s: %s", path, exc.strerror or exc)
        return f"textfile {path}: {exc.strerror or exc}"
    return ""
