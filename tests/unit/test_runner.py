"""The runner: crashes, hangs, hung children, reuse, lock, broken state dir."""

import os
import threading
import time

import pytest

from startd_health.core.model import Probe, ProbeResult, Status
from startd_health.core.runner import OVERRUN_GRACE_SECONDS, run_probes, settings_digest
from startd_health.core.state import StateDir

from .helpers import wait_gone


class Fine(Probe):
    name = "fine"
    description = "returns ok"
    calls = 0

    def run(self, ctx):
        type(self).calls += 1
        return ProbeResult(self.name, Status.OK, "fine", {"n": type(self).calls})


class Crashes(Probe):
    name = "crashes"
    description = "raises"

    def run(self, ctx):
        raise RuntimeError("boom")


class SpinsForever(Probe):
    """Pure-Python hang: the thread cannot be killed, only abandoned."""
    name = "spins"
    description = "never returns"
    stop = threading.Event()

    def run(self, ctx):
        self.stop.wait(600)
        return ProbeResult(self.name, Status.OK)


class HungCommand(Probe):
    """Runs a command that ignores SIGTERM and never ends; records the pids."""
    name = "hung"
    description = "hung child"
    pidfile = ""

    def run(self, ctx):
        result = ctx.run(["/bin/sh", "-c", f"trap '' TERM; sleep 300 & echo $! > {self.pidfile}; wait"])
        return ProbeResult(self.name, Status.FAILED if result.timed_out else Status.OK, result.describe_failure())


class WrongType(Probe):
    name = "wrongtype"
    description = "returns garbage"

    def run(self, ctx):
        return {"status": "ok"}


def settings(*probes, period=300.0, timeout=2.0):
    return {p.name: {"period": period, "timeout": timeout} for p in probes}


def test_crash_becomes_failed_result_and_others_still_run():
    probes = [Crashes(), Fine(), WrongType()]
    report = run_probes(probes, settings(*probes), deadline_seconds=30)
    by_name = {r.probe: r for r in report.results}
    assert by_name["crashes"].status is Status.FAILED
    assert by_name["crashes"].reason == "probe crashed: RuntimeError: boom"
    assert by_name["fine"].status is Status.OK
    assert "returned dict, not ProbeResult" in by_name["wrongtype"].reason


@pytest.mark.slow
def test_python_hang_is_abandoned_within_budget():
    probes = [SpinsForever(), Fine()]
    t0 = time.monotonic()
    report = run_probes(probes, settings(*probes, timeout=1.0), deadline_seconds=30)
    elapsed = time.monotonic() - t0
    SpinsForever.stop.set()
    assert elapsed < 1.0 + OVERRUN_GRACE_SECONDS + 0.5, elapsed
    spins = report.results[0]
    assert spins.status is Status.FAILED and "did not finish within 1s (abandoned)" in spins.reason
    assert report.results[1].status is Status.OK


def test_overall_deadline_caps_probe_timeouts():
    probes = [SpinsForever()]
    t0 = time.monotonic()
    run_probes(probes, settings(*probes, timeout=100), deadline_seconds=5)
    SpinsForever.stop.set()
    assert time.monotonic() - t0 < 5.5


def test_hung_command_group_is_killed(tmp_path):
    HungCommand.pidfile = str(tmp_path / "pid")
    probes = [HungCommand()]
    report = run_probes(probes, settings(*probes, timeout=1.0), deadline_seconds=30)
    assert report.results[0].status is Status.FAILED
    assert "timed out" in report.results[0].reason
    assert wait_gone([int(open(HungCommand.pidfile).read())]) == []


def test_fresh_results_are_reused_and_saved_atomically(tmp_path):
    state = StateDir(str(tmp_path / "state"))
    Fine.calls = 0
    first = run_probes([Fine()], settings(Fine), 30, state=state)
    second = run_probes([Fine()], settings(Fine), 30, state=state)
    assert first.results[0].facts["n"] == 1 and second.results[0].facts["n"] == 1
    assert second.reused == {"fine"}
    forced = run_probes([Fine()], settings(Fine), 30, state=state, force=True)
    assert forced.results[0].facts["n"] == 2
    time.sleep(0.05)
    expired = run_probes([Fine()], settings(Fine, period=0.01), 30, state=state)
    assert expired.results[0].facts["n"] == 3
    assert sorted(os.listdir(state.results_dir)) == ["fine.json"]  # no temporary files left


def test_changed_settings_invalidate_the_cached_result(tmp_path):
    state = StateDir(str(tmp_path / "state"))
    Fine.calls = 0
    run_probes([Fine()], settings(Fine), 30, state=state)
    changed = {"fine": {"period": 300.0, "timeout": 2.0, "images": ("el9=/new.sif",)}}
    assert run_probes([Fine()], changed, 30, state=state).results[0].facts["n"] == 2


def test_probe_being_run_elsewhere_is_not_run_twice(tmp_path):
    state = StateDir(str(tmp_path / "state"))
    Fine.calls = 0
    run_probes([Fine()], settings(Fine), 30, state=state, force=True)
    with state.lock("fine") as elsewhere, state.lock("crashes") as elsewhere2:
        assert elsewhere.try_acquire() and elsewhere2.try_acquire()
        t0 = time.monotonic()
        report = run_probes([Fine(), Crashes()], settings(Fine, Crashes), 30, state=state, force=True,
                            lock_wait_seconds=0.2)
        assert time.monotonic() - t0 < 1.0
    assert report.overlapped and Fine.calls == 1
    assert report.results[0].status is Status.OK and report.reused == {"fine"}
    assert report.results[1].status is Status.FAILED and "another run" in report.results[1].reason


def test_stale_cached_result_is_not_evidence_of_health(tmp_path):
    state = StateDir(str(tmp_path / "state"))
    state.ensure()
    configured = settings(Fine, period=60)
    state.save(ProbeResult("fine", Status.OK, "fine", started_at=time.time() - 10_000),
               settings_digest(configured["fine"]))
    with state.lock("fine") as elsewhere:
        assert elsewhere.try_acquire()
        report = run_probes([Fine()], configured, 30, state=state, lock_wait_seconds=0.1)
    assert report.results[0].status is Status.FAILED and "stale" in report.results[0].reason


def test_unwritable_state_dir_is_reported_not_fatal(tmp_path):
    # A regular file where the directory should be fails for root too.
    blocker = tmp_path / "file"
    blocker.write_text("")
    report = run_probes([Fine()], settings(Fine), 30, state=StateDir(str(blocker / "state")))
    assert report.results[0].status is Status.OK
    assert report.state_error.startswith(f"state directory {blocker}/state:")


class UsesScratch(Probe):
    name = "scratchy"
    description = "writes a marker"

    def run(self, ctx):
        path = ctx.scratch_dir()
        marker = os.path.join(path, "marker")
        seen = os.path.exists(marker)
        open(marker, "w").close()
        return ProbeResult(self.name, Status.OK, "", {"seen": seen, "dir": path})


def test_scratch_dir_outlives_the_run(tmp_path):
    state = StateDir(str(tmp_path / "state"))
    first = run_probes([UsesScratch()], settings(UsesScratch, period=0.01), 30, state=state)
    time.sleep(0.02)
    second = run_probes([UsesScratch()], settings(UsesScratch, period=0.01), 30, state=state)
    assert first.results[0].facts["seen"] is False and second.results[0].facts["seen"] is True
    assert first.results[0].facts["dir"] == str(tmp_path / "state" / "probes" / "scratchy")


def test_last_success_is_carried_across_failures(tmp_path):
    state = StateDir(str(tmp_path / "state"))
    ok = run_probes([Fine()], settings(Fine, period=0.01), 30, state=state).results[0]
    assert ok.last_success_at == ok.ended_at > 0

    class NowFails(Probe):
        name = "fine"
        description = "same name, now failing"

        def run(self, ctx):
            return ProbeResult(self.name, Status.FAILED, "broke")

    time.sleep(0.02)
    bad = run_probes([NowFails()], settings(NowFails, period=0.01), 30, state=state).results[0]
    assert bad.status is Status.FAILED and bad.last_success_at == ok.last_success_at
