"""A REAL Prometheus server (Debian's `prometheus` package) on loopback, for
tests: start it with a scrape config, wait for data, query its HTTP API."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import time
import urllib.parse
import urllib.request
from typing import Any, Dict, List, Optional, Sequence

from tests.waiting import wait_until


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def binary(name: str) -> str:
    path = shutil.which(name)
    if not path:
        raise AssertionError(f"{name} not found: install Debian's prometheus package (./dev test does it)")
    return path


def promtool(*args: str, input: Optional[str] = None, cwd: Optional[str] = None) -> subprocess.CompletedProcess:
    return subprocess.run([binary("promtool"), *args], input=input, capture_output=True, text=True, timeout=120,
                          cwd=cwd)


class Prometheus:
    def __init__(self, workdir: str, targets: Sequence[str], scrape_interval: str = "1s",
                 rule_files: Sequence[str] = (), extra_scrape: str = "") -> None:
        self.workdir = workdir
        self.port = free_port()
        os.makedirs(workdir, exist_ok=True)
        config = os.path.join(workdir, "prometheus.yml")
        rules = "".join(f"  - {path}\n" for path in rule_files)
        with open(config, "w") as handle:
            handle.write(f"""global:
  scrape_interval: {scrape_interval}
  evaluation_interval: {scrape_interval}
{"rule_files:" + chr(10) + rules if rules else ""}scrape_configs:
  - job_name: startd_health
    static_configs:
      - targets: [{", ".join(repr(t) for t in targets)}]
{extra_scrape}""")
        self.log = open(os.path.join(workdir, "prometheus.log"), "w")
        self.proc = subprocess.Popen(
            [binary("prometheus"), f"--config.file={config}", f"--storage.tsdb.path={workdir}/data",
             f"--web.listen-address=127.0.0.1:{self.port}", "--web.enable-lifecycle"],
            stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True)
        self.url = f"http://127.0.0.1:{self.port}"
        self.wait(lambda: self._get("/-/ready") is not None, 30, "prometheus ready")

    def _get(self, path: str, params: Optional[Dict[str, str]] = None) -> Optional[Any]:
        url = self.url + path + ("?" + urllib.parse.urlencode(params) if params else "")
        try:
            with urllib.request.urlopen(url, timeout=5) as response:
                body = response.read()
        except OSError:
            return None
        try:
            return json.loads(body)
        except ValueError:
            return body

    def query(self, expr: str) -> List[Dict[str, Any]]:
        data = self._get("/api/v1/query", {"query": expr})
        if not isinstance(data, dict) or data.get("status") != "success":
            raise AssertionError(f"query failed: {expr}: {data}")
        return data["data"]["result"]

    def query_range(self, expr: str, seconds: int = 300, step: str = "5s") -> List[Dict[str, Any]]:
        end = time.time()
        data = self._get("/api/v1/query_range", {"query": expr, "start": str(end - seconds), "end": str(end),
                                                 "step": step})
        if not isinstance(data, dict) or data.get("status") != "success":
            raise AssertionError(f"range query failed: {expr}: {data}")
        return data["data"]["result"]

    def targets_up(self) -> bool:
        return bool(self.query("up == 1")) and not self.query("up == 0")

    def wait(self, predicate, timeout: float, what: str) -> Any:
        def alive_and(predicate=predicate):
            if self.proc.poll() is not None:
                raise RuntimeError(f"prometheus exited {self.proc.returncode}: {open(self.log.name).read()[-2000:]}")
            return predicate()
        return wait_until(alive_and, timeout, what)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        self.log.close()
