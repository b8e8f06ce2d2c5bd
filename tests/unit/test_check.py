"""`startd-health check`: table, JSON, exit status."""

import json
import time

from startd_health.core.model import Measurement, ProbeResult, Status
from startd_health.monitor.terminal import exit_status, table
from startd_health.core.verdict import judge

from .helpers import run_cli


def test_exit_status_convention():
    ok, degraded, bad = (ProbeResult("a", Status.OK), ProbeResult("b", Status.DEGRADED),
                         ProbeResult("c", Status.FAILED))
    assert exit_status([ok, ProbeResult("s", Status.SKIPPED)]) == 0
    assert exit_status([ok, degraded]) == 1
    assert exit_status([degraded, bad]) == 2


def test_table_has_every_probe_age_and_figures():
    now = time.time()
    results = [ProbeResult("container", Status.OK, "apptainer 1.4.5: 1/1 images launch", {},
                           (Measurement("launch", 0.134, "seconds", {"image": "el9"}),), started_at=now - 125),
               ProbeResult("cvmfs", Status.FAILED, "oasis: hung", started_at=now - 3)]
    text = table(results, judge(results), now, colour=False)
    lines = text.splitlines()
    assert lines[0].split() == ["PROBE", "STATUS", "AGE", "REASON"]
    assert "container  ok" in lines[1] and " 2m " in lines[1] and "launch[el9]=0.13s" in lines[1]
    assert lines[-1] == "node: UNHEALTHY (cvmfs: oasis: hung)"
    assert "\033[" not in text
    assert "\033[31;1mfailed\033[0m" in table(results, judge(results), now, colour=True)


def test_cli_check_json_and_exit_code(cli_env, tmp_path):
    proc = run_cli(["check", "--json", "--no-condor-config", "--container-runtime", "/nonexistent",
                    "--container-requirement", "REQUIRED"], cli_env)
    assert proc.returncode == 2
    doc = json.loads(proc.stdout)
    assert doc["healthy"] is False and doc["failed"] == ["container"]
    assert doc["probes"][0]["probe"] == "container" and "age_seconds" in doc["probes"][0]
    proc = run_cli(["check", "--no-condor-config", "--deadline", "bad"], cli_env)
    assert proc.returncode == 3 and proc.stderr.count("\n") == 1
