"""What both exporters (`startd-health exporter`, `startd-health
pool-exporter`) share: their registry, build information, the HTTP(S)
server, the scheduler that does the work off the scrape path, and running
until SIGTERM. prometheus_client and APScheduler are imported only here, by
the daemons, never on the cron path.
"""

from __future__ import annotations

import datetime
import logging
import platform
import signal
import threading
import time
from typing import Any, Dict, Tuple

log = logging.getLogger(__name__)

LISTEN_BACKLOG = 128
# Histogram buckets for launch times, node (over time) and pool (across machines) alike.
LAUNCH_BUCKETS = (0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0)


def build_info() -> Any:
    """startd_health_build_info{version,python}."""
    from prometheus_client.core import InfoMetricFamily

    from startd_health import __version__
    from startd_health.monitor.metrics import PREFIX

    return InfoMetricFamily(f"{PREFIX}_build", "startd-health build information",
                            value={"version": __version__, "python": platform.python_version()})


def new_registry() -> Any:
    """A registry with the process' own metrics, without *_created series."""
    import prometheus_client
    from prometheus_client import CollectorRegistry
    from prometheus_client.process_collector import ProcessCollector

    if hasattr(prometheus_client, "disable_created_metrics"):  # 0.17+: no *_created noise series
        prometheus_client.disable_created_metrics()
    registry = CollectorRegistry(auto_describe=False)
    ProcessCollector(registry=registry)
    return registry


def start_metrics_server(listen: Tuple[str, int], registry: Any, certfile: str = "", keyfile: str = "") -> Any:
    """prometheus_client's HTTP server on listen, TLS when a certificate is given; returns the server."""
    from prometheus_client import exposition, start_http_server

    # Its server class keeps socketserver's listen backlog of 5: with 8 or
    # more concurrent scrapers the kernel dropped connections (1 s+ stalls,
    # errors: benchmarks/pool_exporter_cost.py). A class attribute, read
    # when the socket starts listening.
    exposition.ThreadingWSGIServer.request_queue_size = LISTEN_BACKLOG
    tls: Dict[str, str] = {"certfile": certfile, "keyfile": keyfile} if certfile else {}
    server, _ = start_http_server(listen[1], addr=listen[0], registry=registry, **tls)
    return server


class ScheduledServer:
    """An HTTP endpoint serving ``registry`` and a background scheduler doing
    the work (probe runs, collector queries) at its own pace, so that a
    scrape never waits for it. Subclasses set ``registry`` and add their
    jobs in ``schedule``."""

    registry: Any = None
    scheduler: Any = None
    server: Any = None
    what = "metrics"   # for the log line: what is served

    def schedule(self, scheduler: Any, now: datetime.datetime) -> None:  # pragma: no cover - interface
        raise NotImplementedError

    def start(self, listen: Tuple[str, int], certfile: str = "", keyfile: str = "") -> None:
        from apscheduler.schedulers.background import BackgroundScheduler

        self.server = start_metrics_server(listen, self.registry, certfile, keyfile)
        self.scheduler = BackgroundScheduler(timezone=datetime.timezone.utc)
        self.schedule(self.scheduler, datetime.datetime.now(datetime.timezone.utc))
        self.scheduler.start()
        log.info("serving %s on %s://%s:%d/metrics", self.what, "https" if certfile else "http", *listen)

    def stop(self) -> None:
        if self.scheduler is not None:
            self.scheduler.shutdown(wait=False)
        self.stop_work()
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()

    def stop_work(self) -> None:
        """Between the scheduler's and the server's shutdown: end work still running."""


def serve(exporter: ScheduledServer, listen: Tuple[str, int], certfile: str = "", keyfile: str = "") -> int:
    """Run until SIGTERM or SIGINT; then stop cleanly (exit status 0)."""
    stopping = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stopping.set())
    exporter.start(listen, certfile, keyfile)
    while not stopping.wait(3600):
        pass
    log.info("stopping")
    exporter.stop()
    time.sleep(0)  # let the server thread see the shutdown
    return 0


def serve_configured(exporter: ScheduledServer, config: Any, listen_knob: str) -> int:
    """Serve an exporter on config[listen_knob] until SIGTERM. The TLS knobs go
    together; a listen address that cannot be used is a configuration error
    naming its knob."""
    from startd_health.core.config import ConfigError

    certfile, keyfile = config["EXPORTER_TLS_CERT"], config["EXPORTER_TLS_KEY"]
    if bool(certfile) != bool(keyfile):
        raise ConfigError("STARTD_HEALTH_EXPORTER_TLS_CERT and STARTD_HEALTH_EXPORTER_TLS_KEY go together: "
                          "set both or neither")
    try:
        return serve(exporter, config[listen_knob], certfile, keyfile)
    except OSError as exc:
        address, port = config[listen_knob]
        raise ConfigError(f"STARTD_HEALTH_{listen_knob} ({config.source(listen_knob)}): cannot listen on "
                          f"{address}:{port}: {exc.strerror or exc}") from None
