"""Parsing of the exporter's listen address (kept apart so that the cron path
does not import the exporter)."""

from __future__ import annotations

from typing import Any, Dict, Tuple


def parse_listen(text: str) -> Tuple[str, int]:
    """'127.0.0.1:9761', '[::1]:9761', ':9761' (all interfaces) -> (address, port)."""
    host, sep, port = text.strip().rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError("expected ADDRESS:PORT (e.g. 127.0.0.1:9761, [::1]:9761, :9761)")
    return host.strip("[]") or "0.0.0.0", int(port)


def format_listen(value: Tuple[str, int]) -> str:
    """(address, port) -> the text parse_listen reads back ('[::1]:9761' for IPv6)."""
    host, port = value
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


LISTEN_BACKLOG = 128


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
