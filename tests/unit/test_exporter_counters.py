"""The exporter's probe counters exist at 0 for every enabled probe before
anything ran or failed (Prometheus' "avoid missing metrics": rate() and
increase() over a series that appears only at the first failure see nothing).
Scraped over HTTP from the real exporter process, and from prometheus_client's
HTTP server in-process, to pin down the state before any run."""

import re
import shutil
import subprocess
import sys
import urllib.request

from startd_health.core.model import Probe, ProbeResult, Status
from startd_health.core.state import StateDir
from startd_health.monitor.exporter import NodeExporter

from tests.prom import free_port
from tests.waiting import wait_until

COUNTERS = ("startd_health_probe_runs_total", "startd_health_probe_failures_total")


def samples(body):
    """{'name{labels}': value} of a text exposition."""
    return {line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1])
            for line in body.splitlines() if line and not line.startswith("#")}


def get(url):
    with urllib.request.urlopen(url, timeout=5) as response:
        return response.read().decode()


def lint(body):
    if shutil.which("promtool"):  # Prometheus' own linter, when installed (./dev test installs it)
        proc = subprocess.run(["promtool", "check", "metrics"], input=body, capture_output=True, text=True,
                              timeout=30)
        assert proc.returncode == 0, proc.stdout + proc.stderr


class Works(Probe):
    name = "works"
    description = "always ok (simulated)"

    def run(self, ctx):
        return ProbeResult(self.name, Status.OK, "fine")


class Breaks(Probe):
    name = "breaks"
    description = "always failed (simulated)"

    def run(self, ctx):
        return ProbeResult(self.name, Status.FAILED, "broken")


def test_counters_start_at_zero_before_any_run_and_count_from_there(tmp_path):
    settings = {name: {"timeout": 5.0, "period": 60.0} for name in ("works", "breaks")}
    state = StateDir(str(tmp_path / "state"))
    state.ensure()
    exporter = NodeExporter([Works(), Breaks()], settings, state)
    port = free_port()
    from prometheus_client import start_http_server  # the server the exporter runs, without its scheduler
    server, _ = start_http_server(port, addr="127.0.0.1", registry=exporter.registry)
    try:
        url = f"http://127.0.0.1:{port}/metrics"
        before = get(url)
        lint(before)
        got = samples(before)
        for series in (f'{counter}{{probe="{probe}"}}' for counter in COUNTERS for probe in ("works", "breaks")):
            assert got.get(series) == 0.0, f"{series}: {got.get(series)}"
        exporter.run_probe(Works())
        exporter.run_probe(Breaks())
        got = samples(get(url))
        assert got['startd_health_probe_runs_total{probe="works"}'] == 1.0
        assert got['startd_health_probe_failures_total{probe="works"}'] == 0.0
        assert got['startd_health_probe_failures_total{probe="breaks"}'] == 1.0
    finally:
        server.shutdown()
        server.server_close()


def test_the_exporter_process_serves_every_enabled_probes_counters(tmp_path, cli_env):
    """The real `startd-health exporter`, real probes that do not fail here:
    the failures series are there, at 0, from the first scrape on. Simulated:
    the container runtime (a script that answers --version and runs the
    inside-the-image checks on the host, as tests/e2e/test_prometheus.py does)."""
    runtime = tmp_path / "apptainer"
    runtime.write_text('#!/bin/sh\nif [ "$1" = --version ]; then echo "apptainer version 1.4.5"; exit 0; fi\n'
                       'while [ "$1" != /bin/sh ]; do shift; done; exec "$@"\n')
    runtime.chmod(0o755)
    probes = ("container", "sessions", "gpu")
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "startd_health", "exporter", "--no-condor-config",
                             "--state-dir", str(tmp_path / "state"), "--probes", ",".join(probes),
                             "--container-runtime", str(runtime), "--container-images", "el9=/img/el9.sif",
                             "--exporter-listen", f"127.0.0.1:{port}"],
                            env=cli_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        def first_scrape():
            if proc.poll() is not None:
                raise RuntimeError(f"the exporter exited: {proc.communicate()[1]}")
            return get(f"http://127.0.0.1:{port}/metrics")
        body = wait_until(first_scrape, 60, "the exporter to answer", interval=0.1)
        lint(body)
        got = samples(body)
        for counter in COUNTERS:
            present = {m.group(1) for key in got for m in [re.match(counter + r'\{probe="(\w+)"\}$', key)] if m}
            assert present == set(probes), f"{counter}: series for {sorted(present)}, not {sorted(probes)}"
        assert all(got[f'startd_health_probe_failures_total{{probe="{p}"}}'] == 0.0 for p in probes), body
    finally:
        proc.terminate()
        proc.communicate(timeout=30)
    assert proc.returncode == 0
