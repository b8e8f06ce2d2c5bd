"""The node exporter and the textfile against the REAL Prometheus tools:
promtool lints the exposition, a real Prometheus server scrapes the exporter.

The container runtime here is a shell stand-in (the host has no Apptainer;
real Apptainer is exercised in test_real_pool.py): it answers --version and
"launches" in ~50 ms, so that every metric family has data."""

import os
import signal
import ssl
import subprocess
import sys
import time
import urllib.request

import pytest

from tests.prom import Prometheus, free_port, promtool
from tests.unit.helpers import REPO

pytestmark = pytest.mark.e2e


@pytest.fixture
def runtime(tmp_path):
    path = tmp_path / "apptainer"
    # "launches" by running the inside-the-image script on the host
    path.write_text('#!/bin/sh\nif [ "$1" = --version ]; then echo "apptainer version 1.4.5"; exit 0; fi\n'
                    'sleep 0.05; while [ "$1" != /bin/sh ]; do shift; done; exec "$@"\n')
    path.chmod(0o755)
    return str(path)


def base_args(tmp_path, runtime):
    return ["--no-condor-config", "--state-dir", str(tmp_path / "state"), "--container-runtime", runtime,
            "--container-images", "el9=/img/el9.sif,el8=/img/el8.sif"]


def env():
    return dict(os.environ)


def start_exporter(tmp_path, runtime, *extra):
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "startd_health", "exporter", *base_args(tmp_path, runtime),
                             "--exporter-listen", f"127.0.0.1:{port}", "--container-period", "2", *extra],
                            env=env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    return proc, port


def scrape(url, context=None, timeout=30):
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(url, timeout=5, context=context) as response:
                body = response.read().decode()
            if "startd_health_container_image_ok" in body:
                return body
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise AssertionError(f"no probe metrics at {url} after {timeout}s")
        time.sleep(0.2)


def test_textfile_is_atomic_0644_and_passes_promtool(tmp_path, runtime):
    textdir = tmp_path / "textfile"
    textdir.mkdir()
    proc = subprocess.run([sys.executable, "-m", "startd_health", "cron", *base_args(tmp_path, runtime),
                           "--textfile-dir", str(textdir)], env=env(), capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert sorted(os.listdir(textdir)) == ["startd_health.prom"]  # no temporary file left
    path = textdir / "startd_health.prom"
    assert oct(path.stat().st_mode & 0o777) == "0o644"
    text = path.read_text()
    lint = promtool("check", "metrics", input=text)
    assert lint.returncode == 0, lint.stdout + lint.stderr
    assert 'startd_health_container_image_ok{image="el9"} 1.0' in text
    # no sample carries a client timestamp (node_exporter would drop the whole file)
    samples = [line for line in text.splitlines() if line and not line.startswith("#")]
    assert all(len(line.rsplit(" ", 2)) == 2 or not line.rsplit(" ", 1)[-1].isdigit() for line in samples)


def test_every_probe_on_this_machine_passes_promtool(tmp_path, runtime):
    """All probes as they run here (facts like gpu count must not clash with reserved suffixes)."""
    textdir = tmp_path / "textfile"
    textdir.mkdir()
    proc = subprocess.run([sys.executable, "-m", "startd_health", "cron", "--no-condor-config", "--state-dir",
                           str(tmp_path / "state"), "--textfile-dir", str(textdir)], env=env(), capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    text = (textdir / "startd_health.prom").read_text()
    lint = promtool("check", "metrics", input=text)
    assert lint.returncode == 0, lint.stdout + lint.stderr
    assert "startd_health_gpu_count_value 0.0" in text


def test_unwritable_textfile_dir_is_reported_in_the_ad(tmp_path, runtime):
    blocker = tmp_path / "file"
    blocker.write_text("")
    proc = subprocess.run([sys.executable, "-m", "startd_health", "cron", *base_args(tmp_path, runtime),
                           "--textfile-dir", str(blocker)], env=env(), capture_output=True, text=True, timeout=60)
    assert proc.returncode == 3 and "StartdHealthStateError" in proc.stdout and "Traceback" not in proc.stderr


def test_real_prometheus_scrapes_the_exporter(tmp_path, runtime):
    exporter, port = start_exporter(tmp_path, runtime)
    prom = None
    try:
        body = scrape(f"http://127.0.0.1:{port}/metrics")
        lint = promtool("check", "metrics", input=body)
        assert lint.returncode == 0, lint.stdout + lint.stderr
        assert "_created" not in body
        prom = Prometheus(str(tmp_path / "prom"), [f"127.0.0.1:{port}"])
        prom.wait(lambda: prom.query("startd_health_healthy == 1"), 30, "startd_health_healthy scraped")
        prom.wait(lambda: prom.query('startd_health_container_image_ok{image="el8"}'), 30, "per-image series")
        # The launch-time histogram fills as the probe re-runs on its 2 s schedule.
        runs = prom.wait(lambda: [r for r in prom.query('startd_health_probe_runs_total{probe="container"}')
                                  if float(r["value"][1]) >= 2], 30, "two scheduled runs")
        assert runs
        hist = prom.query('histogram_quantile(0.5, sum by (le, image) '
                          '(startd_health_container_launch_duration_seconds_bucket))')
        assert {r["metric"]["image"] for r in hist} == {"el8", "el9"}
        # Scrapes are served from memory: fast even while probes run.
        t0 = time.monotonic()
        for _ in range(20):
            urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read()
        assert (time.monotonic() - t0) / 20 < 0.2
    finally:
        if prom:
            prom.stop()
        exporter.send_signal(signal.SIGTERM)
        out, err = exporter.communicate(timeout=10)
    assert exporter.returncode == 0, err
    assert "stopping" in err


def test_exporter_tls(tmp_path, runtime):
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=localhost",
                    "-keyout", str(key), "-out", str(cert)], check=True, capture_output=True, timeout=60)
    exporter, port = start_exporter(tmp_path, runtime, "--exporter-tls-cert", str(cert), "--exporter-tls-key", str(key))
    try:
        context = ssl.create_default_context(cafile=str(cert))
        context.check_hostname = False
        assert "startd_health_healthy" in scrape(f"https://127.0.0.1:{port}/metrics", context)
    finally:
        exporter.send_signal(signal.SIGTERM)
        exporter.communicate(timeout=10)


def test_exporter_config_errors_are_one_line(tmp_path, runtime):
    for extra, message in [(["--exporter-listen", "nowhere"], "expected ADDRESS:PORT"),
                           (["--exporter-tls-cert", "/x.pem"], "go together")]:
        proc = subprocess.run([sys.executable, "-m", "startd_health", "exporter", *base_args(tmp_path, runtime), *extra],
                              env=env(), capture_output=True, text=True, timeout=30)
        assert proc.returncode == 2 and message in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
    with __import__("socket").socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        proc = subprocess.run([sys.executable, "-m", "startd_health", "exporter", *base_args(tmp_path, runtime),
                               "--exporter-listen", f"127.0.0.1:{port}"], env=env(), capture_output=True, text=True,
                              timeout=30)
    assert proc.returncode == 2 and "cannot listen on 127.0.0.1" in proc.stderr
