"""Parsing of the exporters' listen address (kept apart so that the cron path
does not import the exporters; their server is in monitor/serving.py)."""

from __future__ import annotations

from typing import Tuple


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
