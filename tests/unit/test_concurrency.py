"""Many `startd-health cron` runs at once (the startd restarting a slow job,
an admin by hand, the exporter): no pile-up, no corrupt state, every output
a valid ad. The runtime is a shell stand-in that takes 3 s per launch (long enough that the twenty runs start while the first still holds the lock, also on a loaded machine) and
records each call, so the test can count how often the probe really ran."""

import subprocess
import sys
import time

import pytest

from .helpers import parse_cron_output

RUNS = 20


@pytest.mark.slow
def test_twenty_concurrent_cron_runs(tmp_path, cli_env):
    calls = tmp_path / "calls"
    runtime = tmp_path / "apptainer"
    runtime.write_text(f"""#!/bin/sh
echo "$$ $1" >> {calls}
if [ "$1" = --version ]; then echo "apptainer version 1.4.5"; exit 0; fi
sleep 3; while [ "$1" != /bin/sh ]; do shift; done; exec "$@"
""")
    runtime.chmod(0o755)
    argv = [sys.executable, "-c", "from startd_health.cli import cron_main; cron_main()", "--no-condor-config",
            "--state-dir", str(tmp_path / "state"), "--container-runtime", str(runtime),
            "--container-images", "t=/img", "--deadline", "20", "--probes", "container"]
    t0 = time.monotonic()
    procs = [subprocess.Popen(argv, env=cli_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(RUNS)]
    outputs = [p.communicate(timeout=60) for p in procs]
    elapsed = time.monotonic() - t0
    assert all(p.returncode == 0 for p in procs), [err for _, err in outputs]
    ads = [parse_cron_output(out) for out, _ in outputs]
    assert all(ad["StartdHealthOk"] is True for ad in ads)
    launches = [line for line in calls.read_text().splitlines() if line.split()[1] == "exec"]
    # One run launches; the others wait for its lock and re-publish its result.
    assert len(launches) == 1, launches
    # (A run that starts after the first has finished finds its fresh result instead.)
    assert sum(1 for ad in ads if ad.get("StartdHealthOverlapped") is True) >= RUNS // 2
    assert elapsed < 20, elapsed
    assert sorted(p.name for p in (tmp_path / "state" / "results").iterdir()) == ["container.json"]
