"""`startd-health cron` with a state directory it cannot write: the ad is
still complete and says why, the exit status is 3, and there is no traceback.

As root (CI), a private mount namespace gives a REAL read-only filesystem and a
REAL full one (a tiny tmpfs); otherwise directory permissions stand in for
read-only (they do not bind root)."""

import os
import shutil
import subprocess
import sys

import pytest

from .helpers import REPO, parse_cron_output

CRON = [sys.executable, "-c", "from startd_health.cli import cron_main; cron_main()", "--no-condor-config",
        "--container-runtime", "/bin/false", "--container-requirement", "REQUIRED"]


def run_in_namespace(setup: str, state_dir: str, env) -> subprocess.CompletedProcess:
    if os.geteuid() != 0 or not shutil.which("unshare"):
        pytest.fail("needs root and unshare (util-linux) for a private mount namespace")
    script = f'set -e; {setup}; exec "$@"'
    return subprocess.run(["unshare", "--mount", "--propagation", "private", "/bin/sh", "-c", script, "sh",
                           *CRON, "--state-dir", state_dir], env=env, capture_output=True, text=True, timeout=60)


def check(proc, expected_reason):
    assert proc.returncode == 3, proc.stderr
    assert "Traceback" not in proc.stderr
    ad = parse_cron_output(proc.stdout)
    assert expected_reason in ad["StartdHealthStateError"], ad["StartdHealthStateError"]
    # The probes still ran and the verdict is still published.
    assert ad["StartdHealthContainerStatus"] == "failed" and ad["StartdHealthOk"] is False


def test_read_only_state_directory(tmp_path, cli_env):
    mnt = tmp_path / "ro"
    mnt.mkdir()
    if os.geteuid() == 0:
        proc = run_in_namespace(f"mount -t tmpfs -o ro,size=64k tmpfs {mnt}", str(mnt / "state"), cli_env)
    else:
        mnt.chmod(0o555)
        proc = subprocess.run(CRON + ["--state-dir", str(mnt / "state")], env=cli_env, capture_output=True,
                              text=True, timeout=60)
    check(proc, "Read-only file system" if os.geteuid() == 0 else "Permission denied")


@pytest.mark.root   # a private mount namespace with a full tmpfs
def test_full_state_directory(tmp_path, cli_env):
    mnt = tmp_path / "full"
    mnt.mkdir()
    # A one-page tmpfs whose only page is taken: directories may still be
    # created (they cost no data page) but no result file can be written.
    setup = (f"mount -t tmpfs -o size=4k tmpfs {mnt}; mkdir -p {mnt}/state/results {mnt}/state/probes; "
             f"dd if=/dev/zero of={mnt}/filler bs=4k count=1 2>/dev/null || true")
    proc = run_in_namespace(setup, str(mnt / "state"), cli_env)
    check(proc, "No space left on device")


def test_exit_status_0_when_state_is_fine(tmp_path, cli_env):
    proc = subprocess.run(CRON + ["--state-dir", str(tmp_path / "state")], env=cli_env, capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "StartdHealthStateError" not in proc.stdout
    assert REPO
