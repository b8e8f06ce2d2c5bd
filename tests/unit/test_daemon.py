"""`startd-health daemon` as the startd runs it: a real subprocess whose
stdout is read as the startd reads it (ads ended by `-` lines).

SIMULATED: the container runtime is a shell script (it answers --version
and "launches" an image by running the inside-image script on the host when
the image file is readable, failing as Apptainer does otherwise); the
probes, the runner, the state directory, the socket and the signals are real.
"""

from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time

import pytest

from startd_health.monitor.recheck import request_recheck, socket_path

from .helpers import parse_cron_output

pytestmark = pytest.mark.slow

RUNTIME = """#!/bin/sh
if [ "$1" = --version ]; then echo "apptainer version 1.4.5"; exit 0; fi
img=""
while [ "$1" != /bin/sh ]; do img="$1"; shift; done
[ -r "$img" ] || { echo "FATAL: could not open image $img: no such file or directory" >&2; exit 255; }
exec "$@"
"""


class DaemonProc:
    """The daemon, with a reader thread that splits its stdout into ads."""

    def __init__(self, tmp_path, *args: str, env=None, probes: str = "container") -> None:
        self.state = str(tmp_path / "state")
        self.image = tmp_path / "site.sif"
        if not self.image.exists():
            self.image.write_text("not really an image\n")
        runtime = tmp_path / "apptainer"
        runtime.write_text(RUNTIME)
        runtime.chmod(0o755)
        argv = [sys.executable, "-m", "startd_health", "daemon", "--no-condor-config", "--state-dir", self.state,
                "--probes", probes, "--container-runtime", str(runtime), "--container-images",
                f"site={self.image}", "--container-requirement", "REQUIRED", "--heartbeat", "2", *args]
        self.proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL,
                                     env=env)
        self.ads: "queue.Queue[str]" = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        lines = []
        try:
            for raw in self.proc.stdout:
                line = raw.decode()
                lines.append(line)
                if line.startswith("-"):
                    self.ads.put("".join(lines))
                    lines = []
        except (ValueError, OSError):   # the test closed the pipe
            pass

    def next_ad(self, timeout: float = 10.0) -> str:
        return self.ads.get(timeout=timeout)

    def ad_where(self, predicate, timeout: float = 10.0):
        """The first ad (text, parsed) for which predicate(parsed) is true."""
        deadline = time.monotonic() + timeout
        while True:
            text = self.next_ad(max(0.01, deadline - time.monotonic()))
            ad = parse_cron_output(text)
            if predicate(ad):
                return text, ad

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(10)


@pytest.fixture
def daemon(tmp_path):
    running = []

    def start(*args, **kw):
        d = DaemonProc(tmp_path, *args, **kw)
        running.append(d)
        return d
    yield start
    for d in running:
        d.stop()


def test_streams_complete_ads_and_a_heartbeat_with_a_fresh_timestamp(daemon):
    d = daemon()
    first_text, first = d.ad_where(lambda ad: True)
    assert first["StartdHealthOk"] is True, first["StartdHealthReason"]
    assert first["StartdHealthContainerImagesOk"] == ["site"]
    # A new ad: update:true asks the startd for an immediate collector update.
    assert first_text.endswith("- update:true\n")
    second_text, second = d.ad_where(lambda ad: True, timeout=5)
    # Nothing changed: the heartbeat (2 s) re-prints the ad with a newer timestamp only.
    assert second_text.endswith("\n-\n")
    assert second["StartdHealthTimestamp"] > first["StartdHealthTimestamp"]
    assert second["StartdHealthOk"] is True


def test_an_image_removed_is_seen_at_once_and_repaired_too(daemon):
    """The event trigger: the image's stat() changes, the container probe
    re-runs now (its own period is 300 s)."""
    d = daemon()
    d.ad_where(lambda ad: ad["StartdHealthOk"] is True)
    broken = str(d.image) + ".off"
    os.rename(d.image, broken)
    t0 = time.monotonic()
    text, ad = d.ad_where(lambda ad: ad["StartdHealthOk"] is False, timeout=8)
    seen = time.monotonic() - t0
    assert ad["StartdHealthFailedProbes"] == ["container"] and "site" in ad["StartdHealthReason"]
    assert text.endswith("- update:true\n")
    assert seen < 5, f"the removal took {seen:.1f}s to reach the ad"
    os.rename(broken, d.image)
    d.ad_where(lambda ad: ad["StartdHealthOk"] is True, timeout=8)


def test_sigterm_ends_it_at_once_and_leaves_nothing(daemon):
    d = daemon()
    d.next_ad()
    assert os.path.exists(socket_path(d.state))
    t0 = time.monotonic()
    d.proc.send_signal(signal.SIGTERM)
    assert d.proc.wait(5) == 0
    # The startd sends SIGKILL 1 s after SIGTERM.
    assert time.monotonic() - t0 < 1.0
    assert not os.path.exists(socket_path(d.state))


def test_it_exits_when_the_startd_closes_its_stdout(daemon):
    d = daemon()
    d.next_ad()
    d.proc.stdout.close()   # the reading end: the startd has gone away
    assert d.proc.wait(5) == 0
    with open(os.path.join(d.state, "daemon.log")) as handle:
        assert "exiting: stdout closed" in handle.read()


def test_results_survive_a_sigkill_and_a_restart_costs_no_probe_run(daemon, tmp_path):
    d = daemon()
    d.ad_where(lambda ad: ad["StartdHealthOk"] is True)
    with open(os.path.join(d.state, "results", "container.json")) as handle:
        ran_at = json.load(handle)["started_at"]
    d.proc.kill()
    d.proc.wait(5)
    t0 = time.monotonic()
    again = daemon()
    text, ad = again.ad_where(lambda ad: True, timeout=5)
    assert time.monotonic() - t0 < 5
    assert ad["StartdHealthOk"] is True
    with open(os.path.join(d.state, "results", "container.json")) as handle:
        assert json.load(handle)["started_at"] == ran_at, "the restarted daemon ran the probe again"
    # The killed daemon's socket file was replaced by the new daemon's.
    assert request_recheck(d.state, ["container"]) == "queued container"


def test_a_hung_runtime_neither_stops_the_heartbeat_nor_piles_up(daemon, tmp_path):
    """--version never returns: each run is cut at the probe's budget, the
    ads keep coming, and threads and children stay bounded."""
    d = daemon("--container-timeout", "2", "--container-period", "1")
    (tmp_path / "apptainer").write_text("#!/bin/sh\nexec sleep 600\n")
    _, ad = d.ad_where(lambda ad: ad["StartdHealthOk"] is False, timeout=20)
    assert "container" in ad["StartdHealthFailedProbes"]
    counts = []
    for _ in range(4):
        d.next_ad(timeout=5)
        status = open(f"/proc/{d.proc.pid}/status").read()
        threads = int(status.split("Threads:")[1].split()[0])
        children = [p for p in os.listdir("/proc") if p.isdigit() and _ppid(p) == d.proc.pid]
        counts.append((threads, len(children)))
    assert max(t for t, _ in counts) <= 5 and max(c for _, c in counts) <= 1, counts


def _ppid(pid: str) -> int:
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return int(handle.read().rsplit(")", 1)[1].split()[1])
    except (OSError, ValueError, IndexError):
        return -1


def test_a_configuration_error_is_an_unhealthy_ad_and_no_restart_loop(tmp_path, cli_env):
    proc = subprocess.Popen([sys.executable, "-m", "startd_health", "daemon", "--no-condor-config",
                             "--state-dir", str(tmp_path / "s"), "--heartbeat", "0"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=cli_env)
    try:
        line = b""
        text = b""
        while not line.startswith(b"-"):
            line = proc.stdout.readline()
            text += line
        ad = parse_cron_output(text.decode())
        assert ad["StartdHealthOk"] is False
        assert "STARTD_HEALTH_HEARTBEAT = '0'" in ad["StartdHealthReason"]
        time.sleep(1)
        assert proc.poll() is None, "it must wait before exiting: the startd restarts it at once"
    finally:
        proc.kill()
        proc.wait(5)


def test_check_now_asks_the_daemon_and_shows_its_fresh_result(daemon, tmp_path, cli_env):
    d = daemon()
    d.next_ad()
    with open(os.path.join(d.state, "results", "container.json")) as handle:
        before = json.load(handle)["started_at"]
    proc = subprocess.run([sys.executable, "-m", "startd_health", "check", "--now", "--json", "--no-condor-config",
                           "--state-dir", d.state, "--probes", "container", "--container-runtime",
                           str(tmp_path / "apptainer"), "--container-images", f"site={d.image}",
                           "--container-requirement", "REQUIRED"],
                          capture_output=True, text=True, env=cli_env, timeout=60)
    assert proc.returncode == 0, proc.stderr
    with open(os.path.join(d.state, "results", "container.json")) as handle:
        after = json.load(handle)["started_at"]
    assert after > before
    with open(os.path.join(d.state, "daemon.log")) as handle:
        assert "queued container" in handle.read()


def test_runs_from_the_pilot_zipapp_with_python_S(tmp_path):
    """No site-packages (no bindings, no apscheduler): the daemon needs none."""
    from tests.zipapp import build
    pyz = build(str(tmp_path / "startd-health.pyz"))
    proc = subprocess.Popen([sys.executable, "-S", pyz, "daemon", "--no-condor-config", "--state-dir",
                             str(tmp_path / "s"), "--probes", "userns", "--heartbeat", "1"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        text = b""
        while text.count(b"\n-") < 2:   # two ads: the first, then a heartbeat
            line = proc.stdout.readline()
            assert line, proc.stderr.read().decode()
            text += line
        first = text.decode().split("-")[0]
        assert first.startswith("StartdHealthOk = true\n"), text
    finally:
        proc.terminate()
        assert proc.wait(5) == 0


def test_the_textfile_follows_every_run(daemon, tmp_path):
    pytest.importorskip("prometheus_client")
    d = daemon("--textfile-dir", str(tmp_path), "--container-period", "1")
    d.next_ad()
    path = tmp_path / "startd_health.prom"
    first = path.stat().st_mtime_ns
    assert 'startd_health_probe_last_run_timestamp_seconds{probe="container"}' in path.read_text()
    deadline = time.monotonic() + 10
    while path.stat().st_mtime_ns == first:   # the ad stays the same; the last-run time moves on
        assert time.monotonic() < deadline, "the textfile was not rewritten after a run"
        time.sleep(0.2)


def test_what_a_sigkilled_daemon_left_running_is_killed_by_the_next_one(daemon, tmp_path):
    """SIGKILL leaves the daemon no chance to end its commands (a launch
    that hangs here); the daemon the startd starts next ends them, from
    the journal of running commands in the state directory."""
    (tmp_path / "apptainer").write_text("#!/bin/sh\nexec sleep 600\n")
    d = daemon("--container-timeout", "60")
    (tmp_path / "apptainer").write_text("#!/bin/sh\nexec sleep 600\n")   # DaemonProc wrote its own
    deadline = time.monotonic() + 10
    sleeper = []
    while not sleeper:
        assert time.monotonic() < deadline, "the hanging launch never started"
        time.sleep(0.2)
        sleeper = [int(p) for p in os.listdir("/proc") if p.isdigit() and _ppid(p) == d.proc.pid]
    d.proc.kill()
    d.proc.wait(5)
    time.sleep(0.5)
    assert os.path.exists(f"/proc/{sleeper[0]}"), "SIGKILL took the child along after all: nothing to test"
    daemon()
    deadline = time.monotonic() + 10
    while os.path.exists(f"/proc/{sleeper[0]}") and _state(sleeper[0]) != "Z":
        assert time.monotonic() < deadline, "the next daemon left the killed one's command running"
        time.sleep(0.1)


def _state(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().rsplit(")", 1)[1].split()[0]
    except OSError:
        return "gone"
