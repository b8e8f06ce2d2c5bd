"""The continuous daemon under a REAL condor_startd (HTCondor 23.9 and
25.14), configured only through the packaging: 50 + 54 (+ 51 on 25.14),
with real Apptainer and a SIMULATED CVMFS repository (conftest).

Measured here (printed): how soon a streamed ad is in the startd's own slot
ad (`condor_status -direct`, what START is evaluated on) and in the
collector (what the negotiator matches on); how soon after an image is
removed the startd refuses jobs. The pool's UPDATE_INTERVAL is 15 s here, so
that a collector update the daemon's `- update:true` forces is told apart
from the periodic one.
"""

import os
import signal
import subprocess
import time

import pytest

from startd_health.monitor.recheck import request_recheck
from tests.realpool.pool import PoolError, RealPool, hanging_runtime

from .conftest import ENTRY_POINTS, REPO, SIMULATED_CVMFS

pytestmark = pytest.mark.e2e

HEARTBEAT = 5
UPDATE_INTERVAL = 15
STATE = "/tmp/condor/spool/startd_health"
# The probes at their default periods (5 min): a fault is seen through an
# event trigger, or not for minutes.
DAEMON_CONF = f"""\
STARTD_HEALTH_HEARTBEAT = {HEARTBEAT}
UPDATE_INTERVAL = {UPDATE_INTERVAL}
STARTD_HEALTH_CONTAINER_REQUIREMENT = REQUIRED
STARTD_HEALTH_CONTAINER_IMAGES = sif=/opt/containers/site.sif
STARTD_HEALTH_CONTAINER_FLAGS = --ipc --pid --contain --bind /cvmfs
STARTD_HEALTH_CVMFS_REPOSITORIES = {REPO}
STARTD_HEALTH_CVMFS_QUARANTINE = 0
SINGULARITY = /opt/site-bin/apptainer
"""
# HTCondor's SINGULARITY for this pool: the real Apptainer, except that while
# HANG_FLAG exists every call but --version waits (SIMULATED: a runtime that
# hangs, e.g. on a stuck filesystem); removing the flag lets them go on.
HANG_FLAG = "/opt/site-bin/hang"
CONTAINER_JOB = """\
universe = container
container_image = /opt/containers/site.sif
transfer_container = false
executable = /bin/true
transfer_executable = false
should_transfer_files = YES
log = hang-job.log
queue
"""
SNIPPETS = {"mix": ("50-startd-health.conf", "54-startd-health-daemon.conf"),
            "sid": ("50-startd-health.conf", "51-startd-health-healthexprs.conf", "54-startd-health-daemon.conf")}
JOB = """\
executable = /bin/true
should_transfer_files = NO
log = daemon-job.log
queue
"""
# One line per sample, from inside the pool (no unshare per query): wall
# clock, then the startd's own slot ad, then the collector's.
WATCH = """\
addr=$(condor_status -startd -af MyAddress | head -1)
end=$(( $(date +%s) + {seconds} ))
while [ "$(date +%s)" -lt "$end" ]; do
  d=$(condor_status -direct "$addr" -af StartdHealthOk StartdHealthTimestamp 2>/dev/null | head -1)
  c=$(condor_status -af StartdHealthOk StartdHealthTimestamp 2>/dev/null | head -1)
  echo "$(date +%s.%N) ${{d:-none none}} ${{c:-none none}}"
  sleep 0.2
done
"""


@pytest.fixture(scope="module", params=["mix", "sid"], ids=["condor23.9", "condor25.14"])
def pool(request):
    # STARTD_HEALTH_E2E_INSTANCE: a copy of the root filesystem of its own
    # (own port), to run this module beside other pools without the lock.
    pool = RealPool(request.param, instance=os.environ.get("STARTD_HEALTH_E2E_INSTANCE", ""))
    pool.build()
    pool.install_project()
    pool.sh("cp /opt/containers/test.sif /opt/containers/site.sif && chmod 644 /opt/containers/site.sif")
    pool.write("/opt/site-bin/apptainer", hanging_runtime(HANG_FLAG), mode=0o755)
    pool.configure(*SNIPPETS[request.param], extra=ENTRY_POINTS + DAEMON_CONF)
    t0 = time.monotonic()
    pool.start(pre_start=SIMULATED_CVMFS)
    pool.wait_for(lambda: healthy(pool), 60, "a healthy verdict from the daemon in the collector")
    print(f"[{pool.variant}] condor_master start -> daemon's healthy ad in the collector: {time.monotonic() - t0:.1f}s")
    try:
        yield pool
    finally:
        pool.stop()


def healthy(pool):
    return any(ad.get("StartdHealthOk") is True for ad in pool.slots("StartdHealthOk"))


def watch(pool, seconds):
    """Start sampling both ads for `seconds`; .result() -> [(wall, direct ok, direct ts, coll ok, coll ts)]."""
    proc = subprocess.Popen(["tests/realpool/rootfs.sh", "enter", "/bin/sh", "-c", WATCH.format(seconds=seconds)],
                            cwd=REPO_ROOT, env=pool.env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)

    class Samples:
        def result(self):
            out, _ = proc.communicate(timeout=seconds + 30)
            rows = []
            for line in out.splitlines():
                fields = line.split()
                if len(fields) == 5:
                    rows.append((float(fields[0]), fields[1], fields[2], fields[3], fields[4]))
            return rows
    return Samples()


REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def daemon_pids(pool):
    """startd-health daemon processes of this pool (host pids: the pool shares our pid namespace)."""
    master = pool.master_pid()
    if master is None:   # its pid file between two writes (condor_reconfig): wait_for asks again
        raise PoolError("condor_master's pid file is not readable now")
    ns = os.stat(f"/proc/{master}/ns/mnt").st_ino
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as handle:
                argv = handle.read().split(b"\0")
            if b"daemon" in argv and any(a.endswith(b"startd-health") for a in argv) \
                    and os.stat(f"/proc/{entry}/ns/mnt").st_ino == ns:
                found.append(int(entry))
        except OSError:
            pass
    # Not its own children (it reads HTCondor's configuration in a forked child, same command line).
    return sorted(p for p in found if _ppid(p) not in found)


def alive(pid):
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _ppid(pid):
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return int(handle.read().rsplit(")", 1)[1].split()[1])
    except (OSError, ValueError, IndexError):
        return -1


def descendants(pid):
    children = [int(e) for e in os.listdir("/proc") if e.isdigit() and _ppid(int(e)) == pid]
    return children + [d for c in children for d in descendants(c)]


def test_streamed_ads_reach_the_slot_ad_and_the_collector(pool):
    """Heartbeat ads (a plain `-`): in the startd's slot ad at once; in the
    collector at the next UPDATE_INTERVAL. One process all along."""
    before = daemon_pids(pool)
    assert len(before) == 1, before
    rows = watch(pool, 3 * HEARTBEAT + 2).result()
    assert rows, "no samples"
    direct_lag, coll_lag = {}, {}
    for wall, dok, dts, cok, cts in rows:
        if dts.isdigit():
            direct_lag.setdefault(int(dts), wall - int(dts))
        if cts.isdigit():
            coll_lag.setdefault(int(cts), wall - int(cts))
    stamps = sorted(direct_lag)
    assert len(stamps) >= 3, f"the heartbeat ({HEARTBEAT}s) did not refresh the slot ad: {stamps}"
    gaps = [b - a for a, b in zip(stamps, stamps[1:])]
    assert all(g <= HEARTBEAT + 1 for g in gaps[1:]), gaps
    first_seen = [direct_lag[s] for s in stamps[1:]]   # the first may predate the sampling
    # Timestamp is whole seconds (up to 1 s early), sampling every ~0.3 s.
    assert max(first_seen) < 2.5, first_seen
    print(f"[{pool.variant}] heartbeat ad -> startd's slot ad: {', '.join(f'{x:.1f}' for x in first_seen)} s; "
          f"-> collector: {', '.join(f'{coll_lag[s]:.1f}' for s in sorted(coll_lag)[1:]) or 'none'} s "
          f"(UPDATE_INTERVAL {UPDATE_INTERVAL} s)")
    assert daemon_pids(pool) == before, "the daemon was restarted"
    # MAX_AGE of 54 (UPDATE_INTERVAL + 3 heartbeats), in START / the health expression unchanged.
    usable = pool.enter("condor_config_val", "STARTD_HEALTH_USABLE").stdout.strip()
    assert f"({UPDATE_INTERVAL} + 3 * {HEARTBEAT})" in usable, usable


def test_an_image_removed_is_refused_at_once_and_a_waiting_job_starts_after_repair(pool):
    assert healthy(pool)
    site, broken = pool.path("/opt/containers/site.sif"), pool.path("/opt/containers/site.sif.off")
    samples = watch(pool, 10)
    time.sleep(1.5)
    t_fault = time.time()
    os.rename(site, broken)   # the site image disappears
    rows = samples.result()
    refused = next((wall for wall, dok, *_ in rows if wall > t_fault and dok == "false"), None)
    coll = next((wall for wall, _, _, cok, _ in rows if wall > t_fault and cok == "false"), None)
    try:
        assert refused is not None, f"the startd's slot ad still said healthy 8 s after the fault: {rows[-3:]}"
        print(f"[{pool.variant}] image removed -> startd refuses (slot ad StartdHealthOk false): "
              f"{refused - t_fault:.1f}s; collector: "
              + (f"{coll - t_fault:.1f}s" if coll else f"not within 8 s (UPDATE_INTERVAL {UPDATE_INTERVAL} s)"))
        assert refused - t_fault <= 5.0
        if pool.variant == "sid":   # 25.x honours `- update:true`: the collector knows at once too
            assert coll is not None and coll - t_fault <= 5.0
            out = pool.sh(f"condor_status -direct \"$(condor_status -startd -af MyAddress | head -1)\" "
                          "-af Healthy HealthFactor").stdout.split()
            assert out == ["0", "0.0"], out
        job = pool.submit(JOB)
        idle_since = time.monotonic()
        while time.monotonic() - idle_since < 8:   # several negotiation cycles
            assert pool.job_status(job) == 1, "a job started on a node without its site image"
            time.sleep(1)
    finally:
        os.rename(broken, site)
    t_repair = time.monotonic()
    pool.wait_for(lambda: healthy(pool), 30, "the repaired node's healthy verdict in the collector", interval=0.2)
    t_healthy = time.monotonic() - t_repair
    pool.wait_for(lambda: pool.job_status(job) in (2, 4), 60, f"job {job} to start once repaired")
    print(f"[{pool.variant}] repaired -> healthy in the collector in {t_healthy:.1f}s; the waiting job started "
          f"{time.monotonic() - t_repair:.1f}s after the repair")
    pool.wait_for(lambda: pool.job_status(job) == 4, 60, f"job {job} to complete")


def in_pool_namespace(pool, script):
    """As root in the pool's own mount namespace, where the simulated CVMFS is mounted."""
    return subprocess.run(["nsenter", "-t", str(pool.master_pid()), "-m", "--", "/bin/sh", "-c", script],
                          capture_output=True, text=True, timeout=30, check=True,
                          env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin"})


def test_a_repository_unmounted_is_refused_at_once(pool):
    """The mount table changing wakes the daemon (POLLPRI on /proc/self/mounts): the cvmfs probe re-runs now."""
    assert healthy(pool)
    samples = watch(pool, 8)
    time.sleep(1.5)
    t_fault = time.time()
    in_pool_namespace(pool, f"umount -l /cvmfs/{REPO}")
    rows = samples.result()
    try:
        refused = next((wall for wall, dok, *_ in rows if wall > t_fault and dok == "false"), None)
        assert refused is not None, f"still healthy 6 s after the unmount: {rows[-3:]}"
        print(f"[{pool.variant}] CVMFS repository unmounted -> startd refuses: {refused - t_fault:.1f}s")
        assert refused - t_fault <= 5.0
    finally:
        in_pool_namespace(pool, f"squashfuse -o allow_other,fsname=cvmfs2 /opt/cvmfs-sim/repo.sqfs /cvmfs/{REPO}")
    t_repair = time.monotonic()
    pool.wait_for(lambda: startd_says_healthy(pool), 40, "healthy again once the repository is back")
    print(f"[{pool.variant}] repository mounted again -> the startd's slot ad healthy in "
          f"{time.monotonic() - t_repair:.1f}s")


def startd_says_healthy(pool):
    """The startd's own slot ad (not the collector's copy)."""
    out = pool.sh('condor_status -direct "$(condor_status -startd -af MyAddress | head -1)" -af StartdHealthOk',
                  check=False).stdout.split()
    return out[:1] == ["true"]


def test_a_hanging_container_test_of_htcondors_refuses_jobs_at_once(pool):
    """The runtime hangs (all but --version): nothing on the node changed, so
    no trigger but the starter's own container test, which waits for it
    without a time limit. The daemon sees that test still running in the
    StarterLog and refuses ("re-checking: ...") well before its container
    probe's own launch timeout (30 s) could say so; after the repair (the
    runtime replaced) the waiting job completes and the node accepts again."""
    pool.wait_for(lambda: healthy(pool), 30, "a healthy node in the collector (the last test's repair)")
    flag, wrapper = pool.path(HANG_FLAG), pool.path("/opt/site-bin/apptainer")
    open(flag, "w").close()
    try:
        job = pool.submit(CONTAINER_JOB)
        pool.wait_for(lambda: "Running job via singularity." in starter_logs(pool), 90,
                      "the starter to begin its container test")
        t_test = time.monotonic()
        reason = pool.wait_for(lambda: startd_reason(pool, "re-checking"), 20,
                               "the startd's slot ad to refuse while the container probe re-checks")
        waited = time.monotonic() - t_test
        print(f"[{pool.variant}] HTCondor's container test hanging -> startd refuses in {waited:.1f}s: {reason}")
        assert waited <= 12.0, waited   # 5 s slow threshold + a watch interval + the ad (30 s launch timeout: no)
        assert "HTCondor's container test for a job (StarterLog.slot" in reason, reason
        assert pool.job_status(job) in (1, 2), "the job with the hanging test ended"
    finally:
        os.unlink(flag)
        os.utime(wrapper)   # the runtime "replaced": its file trigger re-runs the container probe
    t_repair = time.monotonic()
    pool.wait_for(lambda: pool.job_status(job) == 4, 60, f"job {job} to complete once the runtime answers")
    pool.wait_for(lambda: startd_says_healthy(pool), 60, "healthy again once the runtime answers")
    print(f"[{pool.variant}] runtime answering again -> job done and the startd's slot ad healthy in "
          f"{time.monotonic() - t_repair:.1f}s")


def starter_logs(pool):
    text = ""
    for name in os.listdir(pool.path("/tmp/condor/log")):
        if name.startswith("StarterLog"):
            with open(pool.path(f"/tmp/condor/log/{name}"), errors="replace") as handle:
                text += handle.read()
    return text


def startd_reason(pool, contains):
    """StartdHealthReason of the startd's own slot ad, if it contains `contains`."""
    out = pool.sh('condor_status -direct "$(condor_status -startd -af MyAddress | head -1)" '
                  '-af StartdHealthReason', check=False).stdout.strip().splitlines()
    return out[0] if out and contains in out[0] else None


def test_sigkill_the_startd_restarts_it_and_nothing_is_left_behind(pool):
    (old,) = daemon_pids(pool)
    children = descendants(old)
    os.kill(old, signal.SIGKILL)
    t0 = time.monotonic()
    new = pool.wait_for(lambda: [p for p in daemon_pids(pool) if p != old], 20, "the startd to restart the daemon")
    print(f"[{pool.variant}] daemon SIGKILLed -> restarted by the startd in {time.monotonic() - t0:.1f}s")
    assert len(new) == 1 and daemon_pids(pool) == new
    # SIGKILL leaves the daemon no chance to end what its probes were running:
    # the new daemon does (from the journal of running commands).
    pool.wait_for(lambda: not [c for c in children if alive(c)], 10, "the killed daemon's children to be ended")
    # The new daemon took the socket over (once it has started); its ads keep coming.
    reply = pool.wait_for(lambda: request_recheck(pool.path(STATE), ["cvmfs"], timeout=1.0), 20,
                          "the restarted daemon to answer on its socket")
    assert reply == "queued cvmfs", reply
    stamp = max(ad.get("StartdHealthTimestamp", 0) for ad in pool.slots("StartdHealthTimestamp"))
    pool.wait_for(lambda: any(ad.get("StartdHealthTimestamp", 0) > stamp
                              for ad in pool.slots("StartdHealthTimestamp")), UPDATE_INTERVAL + 2 * HEARTBEAT,
                  "a newer ad from the restarted daemon")
    assert healthy(pool)
    # condor_reconfig: the startd sends SIGHUP (RECONFIG = True); the daemon
    # exits and is started again with the new configuration.
    pool.reconfig()
    again = pool.wait_for(lambda: [p for p in daemon_pids(pool) if p not in new], 20, "a daemon started anew "
                          "after condor_reconfig")
    assert len(again) == 1 and daemon_pids(pool) == again
    with open(pool.path(f"{STATE}/daemon.log")) as handle:
        assert "exiting on signal 1" in handle.read()
    pool.wait_for(lambda: request_recheck(pool.path(STATE), ["cvmfs"], timeout=1.0), 20,
                  "the daemon started after condor_reconfig to answer")


def test_the_startd_stopping_ends_the_daemon_cleanly(pool):
    """Last: condor_off stops the startd, which sends the job SIGTERM."""
    (pid,) = daemon_pids(pool)
    pool.enter("condor_off", "-daemon", "startd")
    pool.wait_for(lambda: not os.path.exists(f"/proc/{pid}"), 20, "the daemon to exit with the startd")
    assert daemon_pids(pool) == []
    assert not os.path.exists(pool.path(f"{STATE}/recheck.sock"))
    with open(pool.path(f"{STATE}/daemon.log")) as handle:
        log = handle.read()
    assert "exiting on signal 15" in log, log[-2000:]
