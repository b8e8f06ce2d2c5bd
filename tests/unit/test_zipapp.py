"""The pilot's zipapp, built for real and run with `python -S` (no site-packages: no HTCondor
bindings, no numpy), as a pilot whose node Python has nothing installed runs it. As a non-root
user and under a real starter in tests/e2e/test_pilot.py."""

import os
import subprocess
import sys

import pytest

from tests.zipapp import build
from tests.unit.helpers import parse_cron_output


@pytest.fixture(scope="module")
def pyz(tmp_path_factory):
    return build(str(tmp_path_factory.mktemp("pilot") / "startd-health.pyz"))


def run(pyz, *args, site=False, stdin="", env=None, timeout=60):
    argv = [sys.executable] + ([] if site else ["-S"]) + [pyz, *args]
    return subprocess.run(argv, input=stdin, capture_output=True, text=True, timeout=timeout,
                          env=dict(os.environ, **(env or {})))


def hook(pyz, stdin, **kw):
    proc = run(pyz, "hook", "prepare-job", "--no-condor-config", stdin=stdin, **kw)
    assert "Traceback" not in proc.stderr, proc.stderr
    return proc


def test_no_bindings_in_the_pilots_python(pyz):
    proc = subprocess.run([sys.executable, "-S", "-c", "import classad2"], capture_output=True)
    assert proc.returncode != 0, "this test needs a Python whose -S hides the bindings"


def test_hook_reads_the_job_ad_without_the_bindings(pyz, tmp_path):
    """A literal image is read and tested (held, requeued or accepted on its merits, never a crash);
    one the hook cannot read starts the job with a message saying it was not checked."""
    proc = hook(pyz, 'SingularityImage = "/nonexistent/el9.sif"\n', env={"PATH": "/nonexistent"})
    assert proc.returncode == 0, proc   # no runtime on PATH here: a node fault, requeued, not held
    assert "HookStatusCode = 300" in proc.stdout and "runtime apptainer|singularity is not usable" in proc.stdout
    for text, why in (('SingularityImage = strcat("/a", "b")\n', "not evaluated without the HTCondor bindings"),
                      ("", "no job ad on stdin")):
        proc = hook(pyz, text)
        assert proc.returncode == 0 and "HookStatusCode" not in proc.stdout, proc
        assert "the job's container image was not checked" in proc.stdout and why in proc.stdout, proc.stdout
    proc = hook(pyz, "ClusterId = 1\n")
    assert proc.returncode == 0 and "no container image in the job" in proc.stdout, proc
    proc = run(pyz, "hook", "prepare-job", "--no-condor-config", "--state-dir", str(tmp_path), stdin='SingularityImage = "/x.sif"\n',
               env={"_CONDOR_STARTD_HEALTH_HOOK_TIMEOUT": "-3"})
    assert proc.returncode == 0 and "not checked: configuration error: STARTD_HEALTH_HOOK_TIMEOUT" in proc.stdout
    assert len(proc.stderr.splitlines()) == 1, proc.stderr


def test_benchmark_runs_its_workers_from_the_zip(pyz, tmp_path):
    """DB12 needs nothing but Python; without numpy (-S) the numpy benchmark says so once."""
    proc = run(pyz, "benchmark", "--no-condor-config", "--state-dir", str(tmp_path / "s"), "--benchmarks-fast",
               "true", "--benchmarks-run", "db12,matmul", timeout=120)
    ad = parse_cron_output(proc.stdout)
    assert ad["StartdHealthBenchmarksDb12Score_single"] > 0, ad
    reason = ad["StartdHealthBenchmarksReason"]
    assert reason.startswith("matmul single, matmul wholenode: ImportError: numpy is not installed for "), reason
    assert "-S: install it, or set STARTD_HEALTH_BENCHMARKS_RUN = db12" in reason
    assert reason.count("numpy") == 1


def test_benchmark_with_the_nodes_numpy(pyz, tmp_path):
    pytest.importorskip("numpy")
    proc = run(pyz, "benchmark", "--no-condor-config", "--state-dir", str(tmp_path / "s"), "--benchmarks-fast",
               "true", "--benchmarks-run", "matmul", site=True, timeout=120)
    ad = parse_cron_output(proc.stdout)
    assert ad["StartdHealthBenchmarksStatus"] == "ok", ad["StartdHealthBenchmarksReason"]
    assert ad["StartdHealthBenchmarksMatmulFlops_single"] > 0
