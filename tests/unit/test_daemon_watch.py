"""Event triggers (system/watch.py): real files, and a recorded mount table
(a system_root tree whose proc/self/mounts the test rewrites: SIMULATED
mounts and unmounts)."""

from __future__ import annotations

import os
import select
import threading
import time

import pytest

from startd_health.core.model import Probe, ProbeResult, Status

from startd_health.system.watch import StarterLogs, Watcher, is_remote
from startd_health.system.procfs import parse_mounts

from .helpers import fill, tmpfs  # noqa: F401 (a fixture)

MOUNTS = "/dev/vda / ext4 rw 0 0\nproc /proc proc rw 0 0\n"
CVMFS = "cvmfs2 /cvmfs/oasis.opensciencegrid.org fuse ro,nosuid 0 0\n"


def tree(tmp_path, mounts: str) -> str:
    root = tmp_path / "root"
    (root / "proc" / "self").mkdir(parents=True, exist_ok=True)
    (root / "proc" / "self" / "mounts").write_text(mounts)
    return str(root)


def test_an_image_removed_replaced_or_chmodded_triggers_its_probe(tmp_path):
    image = tmp_path / "site.sif"
    image.write_bytes(b"x" * 100)
    runtime = tmp_path / "apptainer"
    runtime.write_text("#!/bin/sh\n")
    w = Watcher(files={"container": [str(image), str(runtime)]}, system_root=tree(tmp_path, MOUNTS))
    assert w.poll() == set()          # the baseline
    assert w.poll(False) == set()     # nothing changed
    image.rename(tmp_path / "away")
    assert w.poll(False) == {"container"}
    (tmp_path / "away").rename(image)
    assert w.poll(False) == {"container"}   # back: a change too (the probe says healthy again)
    replacement = tmp_path / "new.sif"
    replacement.write_bytes(b"y" * 100)
    replacement.rename(image)               # replaced under the same name
    assert w.poll(False) == {"container"}
    image.chmod(0o600)
    assert w.poll(False) == {"container"}
    runtime.unlink()
    assert w.poll(False) == {"container"}
    assert w.poll(False) == set()


def test_a_missing_file_is_watched_for_its_return(tmp_path):
    later = tmp_path / "later.sif"
    w = Watcher(files={"container": [str(later)]}, system_root=tree(tmp_path, MOUNTS))
    w.poll()
    later.write_text("x")
    assert w.poll(False) == {"container"}


def test_a_repository_unmounted_or_mounted_triggers_only_the_probes_that_watch_it(tmp_path):
    root = tree(tmp_path, MOUNTS + CVMFS)
    w = Watcher(mounts={"cvmfs": ["/cvmfs"], "container": ["/cvmfs"]}, system_root=root)
    assert w.poll() == set()
    mounts = tmp_path / "root" / "proc" / "self" / "mounts"
    mounts.write_text(MOUNTS + CVMFS + "tmpfs /scratch tmpfs rw 0 0\n")   # elsewhere: not ours
    assert w.poll() == set()
    mounts.write_text(MOUNTS + "tmpfs /scratch tmpfs rw 0 0\n")            # the repository is gone
    assert w.poll() == {"cvmfs", "container"}
    assert w.poll() == set()
    mounts.write_text(MOUNTS + CVMFS)
    assert w.poll() == {"cvmfs", "container"}


def test_a_path_on_fuse_or_nfs_is_never_statted_here(tmp_path):
    """A hung CVMFS or NFS mount would hang the daemon in stat(): such paths
    are left to the mount table (and to the probes' children)."""
    table = parse_mounts(MOUNTS + CVMFS + "srv:/export /nfs nfs4 rw 0 0\n")
    assert is_remote("/cvmfs/oasis.opensciencegrid.org/images/el9", table)
    assert is_remote("/nfs/images/el9.sif", table)
    assert not is_remote("/opt/images/el9.sif", table)
    # A path under a mount point that is really a FUSE mount of the test's own tree:
    local = tmp_path / "img.sif"
    local.write_text("x")
    fuse_mounts = MOUNTS + f"cvmfs2 {tmp_path} fuse ro 0 0\n"
    w = Watcher(files={"container": [str(local)]}, system_root=tree(tmp_path, fuse_mounts))
    w.poll()
    local.unlink()
    assert w.poll(False) == set(), "a path on a FUSE mount was stat()ed"


def test_execute_becoming_read_only_or_unwritable(tmp_path):
    execute = tmp_path / "execute"
    execute.mkdir()
    w = Watcher(writable={"execute": [str(execute)]}, system_root=tree(tmp_path, MOUNTS))
    w.poll()
    assert w.poll(False) == set()
    execute.rmdir()
    assert w.poll(False) == {"execute"}


@pytest.mark.root
def test_execute_filling_up_fires_every_probe_that_writes_there(tmpfs):
    """A real 8 MiB tmpfs filled by a file: the execute probe and the
    container probe (the starter's scratch directory lives in EXECUTE) both
    re-run; freeing it fires them again."""
    execute = tmpfs("execute", "size=8m")
    w = Watcher(writable={"execute": [str(execute)], "container": [str(execute)]}, full_bytes=1 << 20)
    w.poll()
    assert w.poll(False) == set()
    fill(execute / "filler")
    assert w.poll(False) == {"execute", "container"}
    (execute / "filler").unlink()
    assert w.poll(False) == {"execute", "container"}


def test_the_real_mount_table_can_be_polled_for_changes():
    """The kernel flags /proc/self/mounts with POLLPRI on a mount change: the
    daemon registers it and never re-reads the table otherwise."""
    w = Watcher(mounts={"cvmfs": ["/cvmfs"]})
    fd = w.mounts_fd()
    assert fd is not None
    w.poll()
    poller = select.poll()
    poller.register(fd, select.POLLPRI)
    assert [e for _, e in poller.poll(0) if e & select.POLLPRI] == []   # nothing since we opened it
    w.close()
    assert os.path.exists("/proc/self/mounts")


def test_kernel_messages_at_level_err_or_worse_fire_the_kernel_probe(tmp_path):
    """A pipe stands in for /dev/kmsg (the host's kernel log is never written
    to): records in kmsg's format, as the kernel prints them (recorded texts)."""
    fifo = tmp_path / "kmsg"
    os.mkfifo(fifo)
    writer = os.open(fifo, os.O_RDWR)   # kept open: the reader never sees end-of-file
    try:
        w = Watcher(kernel_log=("kernel", str(fifo)))
        fd = w.kmsg_fd()
        assert fd is not None and not w.empty
        poller = select.poll()
        poller.register(fd, select.POLLIN)
        assert poller.poll(0) == []
        os.write(writer, b"6,1001,5000000,-;e1000e: eth0 NIC Link is Up 1000 Mbps Full Duplex\n")
        assert poller.poll(0) and w.kmsg_drain() == set()    # info: not worth a run
        os.write(writer, b"2,1002,6000000,-;EXT4-fs (sdb1): Remounting filesystem read-only\n"
                         b" SUBSYSTEM=block\n DEVICE=b8:17\n")
        assert w.kmsg_drain() == {"kernel"}
        assert poller.poll(0) == [] and w.kmsg_drain() == set()
        os.write(writer, b"30,1003,7000000,-;systemd[1]: Started foo.service\n")   # facility 3: not the kernel
        assert w.kmsg_drain() == set()
        w.close()
    finally:
        os.close(writer)


def test_a_regular_file_as_kernel_log_is_not_polled(tmp_path):
    log = tmp_path / "kmsg.txt"
    log.write_text("2,1,1,-;EXT4-fs (sdb1): Remounting filesystem read-only\n")
    w = Watcher(kernel_log=("kernel", str(log)))
    assert w.kmsg_fd() is None and w.kmsg_drain() == set()


def test_htcondors_own_container_test_failing_fires_the_container_probe(tmp_path):
    """HTCondor's StarterLog lines: the first recorded from a real 25.14.1
    starter (the fault experiment's node3, a site image whose launch fails),
    the other as singularity.cpp's runTest prints it. The container test
    before a job failed, so a launch-only fault has just sent a job back."""
    log = tmp_path / "StarterLog.slot1_1"
    log.write_bytes(b"12/03/26 23:10:01 (pid:4242) Running job as user tester\n")
    w = Watcher(files={"container": ["/opt/site/images/site.sif", "/usr/bin/singularity"]},
                starter_logs=StarterLogs(str(tmp_path)), site_images=["/opt/site/images/site.sif"])
    assert not w.empty and w.periodic
    w.poll()   # the baseline: what was logged before is not news
    assert w.poll(False) == set()
    with open(log, "ab") as handle:
        handle.write(b"12/03/26 23:10:02 (pid:4243) singularity test returns 255\n")
    assert w.poll(False) == set()
    with open(log, "ab") as handle:
        handle.write(b"12/03/26 23:32:17 (pid:14242) Non zero return code 65280 from singularity test of "
                     b"/opt/site/bin/apptainer -s -q test -S /tmp -S /var/tmp -W /var/lib/condor/execute/node3/"
                     b"dir_14242/scratch --pwd /var/lib/condor/execute/node3/dir_14242/scratch -B /var/lib/condor/"
                     b"execute/node3/dir_14242 -B /cvmfs --home /var/lib/condor/execute/node3/dir_14242/scratch "
                     b"-C /opt/site/images/site.sif\n")
    assert w.poll(False) == {"container"}
    assert w.poll(False) == set()    # read once
    log.unlink()                      # rotated: the new file is read from its start
    log.write_bytes(b"12/03/26 23:11:00 (pid:4250) Error running singularity test job: /usr/bin/singularity -s -q "
                    b"test -C /opt/site/images/site.sif\n")
    assert w.poll(False) == {"container"}
    with open(log, "ab") as handle:   # a job's own image: not the node's fault
        handle.write(b"12/03/26 23:12:00 (pid:4260) Non zero return code 65280 from singularity test of "
                     b"/usr/bin/singularity -s -q test -S /tmp -C /home/alice/broken.sif\n")
    assert w.poll(False) == set()
    (tmp_path / "StarterLog.slot1_2.old").write_bytes(b"Non zero return code 1 from singularity test of x\n")
    assert w.poll(False) == set()


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def append(path, text: str) -> None:
    with open(path, "ab") as handle:
        handle.write(text.encode())


def test_htcondors_container_test_that_does_not_return_fires_the_container_probe_once(tmp_path):
    """The starter waits for its per-job container test without a time limit
    (singularity.cpp runTest): a hanging runtime logs "Running job via
    singularity." and then nothing. Lines as os_proc.cpp / runTest print them."""
    log = tmp_path / "StarterLog.node3.slot1_1"
    log.write_bytes(b"")
    (tmp_path / "StarterLog.node3").write_bytes(b"")   # HTCondor's own, without the slot's name
    clock = Clock()
    w = Watcher(starter_logs=StarterLogs(str(tmp_path), "StarterLog.node3", slow_seconds=5), clock=clock)
    w.poll()
    append(log, "12/04/26 06:00:00 (pid:500) Running job via singularity.\n")
    assert w.poll(False) == set()
    clock.now += 4
    assert w.poll(False) == set()
    clock.now += 1.5
    assert w.poll(False) == {"container"}    # 5.5 s and no "singularity test returns"
    clock.now += 60
    assert w.poll(False) == set()            # once per test
    append(log, "12/04/26 06:01:10 (pid:500) singularity test returns 0\n"
                "12/04/26 06:01:10 (pid:500) Create_Process succeeded, pid=501\n")
    assert w.poll(False) == set()
    # A test that returns in time, and one turned off (the job starts at once), fire nothing.
    append(log, "12/04/26 06:02:00 (pid:600) Running job via singularity.\n")
    assert w.poll(False) == set()
    clock.now += 1
    append(log, "12/04/26 06:02:01 (pid:600) singularity test returns 0\n")
    clock.now += 10
    assert w.poll(False) == set()
    append(log, "12/04/26 06:03:00 (pid:700) Running job via singularity.\n"
                "12/04/26 06:03:00 (pid:700) Create_Process succeeded, pid=701\n")
    clock.now += 10
    assert w.poll(False) == set()
    # Another node's starter log in the same LOG directory is not ours.
    other = tmp_path / "StarterLog.node30.slot1_1"   # node30 is not node3
    other.write_bytes(b"12/04/26 06:04:00 (pid:800) Running job via singularity.\n")
    assert w.poll(False) == set()
    clock.now += 10
    assert w.poll(False) == set()


def test_a_failed_test_with_nv_also_fires_the_gpu_probe(tmp_path):
    log = tmp_path / "StarterLog.slot1_1"
    log.write_bytes(b"")
    w = Watcher(starter_logs=StarterLogs(str(tmp_path), nv_probe="gpu"), site_images=["/opt/site/images/site.sif"])
    w.poll()
    append(log, "12/04/26 06:00:01 (pid:900) Non zero return code 255 from singularity test of /usr/bin/apptainer "
                "-s -q test -S /tmp --nv -C /opt/site/images/site.sif\n")
    assert w.poll(False) == {"container", "gpu"}
    append(log, "12/04/26 06:00:02 (pid:901) Non zero return code 255 from singularity test of /usr/bin/apptainer "
                "-s -q test -S /tmp -C /opt/site/images/site.sif\n")
    assert w.poll(False) == {"container"}


def test_a_bind_source_gone_or_chmodded_fires_but_its_contents_changing_does_not(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    w = Watcher(present={"container": [str(data)]}, system_root=tree(tmp_path, MOUNTS))
    w.poll()
    (data / "new-file").write_text("x")     # a busy data directory: not a change of the bind
    assert w.poll(False) == set()
    data.rename(tmp_path / "data.off")
    assert w.poll(False) == {"container"}
    (tmp_path / "data.off").rename(data)
    assert w.poll(False) == {"container"}
    data.chmod(0o700)
    assert w.poll(False) == {"container"}


def test_the_daemon_watches_the_bind_sources_and_this_nodes_starter_log(tmp_path):
    """What watcher_for derives from HTCondor's configuration (a dict here):
    SINGULARITY_EXTRA_ARGUMENTS' bind sources, and STARTER_LOG's own files
    (a pool whose nodes share one LOG directory names them apart)."""
    from startd_health.cli.app import make_parser
    from startd_health.cli.base import build_config, probe_settings, selected_probes
    from startd_health.monitor.daemon import watcher_for

    image = tmp_path / "site.sif"
    image.write_bytes(b"x")
    args = make_parser("daemon").parse_args(["daemon", "--no-condor-config", "--probes", "container,gpu",
                                             "--container-images", str(image)])
    config = build_config(args)
    probes = selected_probes(config)
    settings = probe_settings(config, probes)
    condor = {"SINGULARITY_EXTRA_ARGUMENTS": "-B /opt/site/data:/site-data --bind=/srv/x,rel:/y",
              "LOG": str(tmp_path), "STARTER_LOG": f"{tmp_path}/StarterLog.node3", "SINGULARITY": "/usr/bin/apptainer"}
    w = watcher_for(probes, settings, condor)
    assert w.present == {"container": ("/opt/site/data", "/srv/x")}
    assert w.starter_logs.directory == str(tmp_path) and w.starter_logs.prefix == "StarterLog.node3"
    assert w.starter_logs.nv_probe == "gpu"
    del condor["STARTER_LOG"]
    assert watcher_for(probes, settings, condor).starter_logs.prefix == "StarterLog"


def test_images_a_run_found_are_watched_until_a_run_names_others(tmp_path):
    """The daemon hands the watcher the images the container probe launched
    (IMAGE_DIRS finds them at run time, no configuration names them)."""
    runtime = tmp_path / "apptainer"
    runtime.write_text("#!/bin/sh\n")
    found = tmp_path / "images" / "rhel9.sif"
    found.parent.mkdir()
    found.write_bytes(b"x")
    w = Watcher(files={"container": [str(runtime)]}, system_root=tree(tmp_path, MOUNTS))
    w.poll()
    w.found_files("container", [str(found), "docker://x/y"])
    assert w.files["container"] == (str(runtime), str(found))
    assert w.poll(False) == set()            # first sight: the baseline
    found.rename(tmp_path / "gone.sif")
    assert w.poll(False) == {"container"}
    w.found_files("container", [])           # the next run no longer lists it
    assert w.files["container"] == (str(runtime),)
    assert w.poll(False) == set()


def test_a_hanging_container_test_is_a_suspicion_taken_once(tmp_path):
    log = tmp_path / "StarterLog.slot1_1"
    log.write_bytes(b"")
    clock = Clock()
    w = Watcher(starter_logs=StarterLogs(str(tmp_path), slow_seconds=5), clock=clock)
    w.poll()
    append(log, "12/04/26 06:00:00 (pid:500) Running job via singularity.\n")
    w.poll(False)
    assert w.take_suspicions() == {}          # a test under way is no evidence yet
    clock.now += 6
    assert w.poll(False) == {"container"}
    why = w.take_suspicions()["container"]
    assert "StarterLog.slot1_1" in why and "not returned after 5 s" in why
    assert w.take_suspicions() == {}          # taken
    # A node whose own launches take 4 s (extraction, no squashfuse): a test is slow at 12 s only.
    w.launches_take(4.0)
    append(log, "12/04/26 06:01:00 (pid:600) Running job via singularity.\n")
    w.poll(False)
    clock.now += 11
    assert w.poll(False) == set()
    clock.now += 1.5
    assert w.poll(False) == {"container"}
    assert "not returned after 12 s" in w.take_suspicions()["container"]


class _ScriptedWatcher:
    """The daemon's view of a Watcher: the first poll after `fire_after`
    reports a hanging container test."""

    empty, periodic = False, True

    def __init__(self, fire_at: float) -> None:
        self.fire_at, self.fired, self.suspicions = fire_at, False, {}

    def mounts_fd(self):
        return None

    def kmsg_fd(self):
        return None

    def found_files(self, probe, paths):
        pass

    def launches_take(self, seconds):
        pass

    def poll(self, mounts_changed=True):
        if not self.fired and time.monotonic() >= self.fire_at:
            self.fired = True
            self.suspicions = {"container": "HTCondor's container test for a job (StarterLog.slot1_1) "
                                            "has not returned after 5 s"}
            return {"container"}
        return set()

    def take_suspicions(self):
        taken, self.suspicions = self.suspicions, {}
        return taken


class _SlowOkProbe(Probe):
    name = "container"
    description = "a container probe whose re-check takes a while and passes"

    def __init__(self) -> None:
        self.runs = 0

    def run(self, ctx):
        self.runs += 1
        if self.runs > 1:
            time.sleep(1.5)    # the re-check
        return ProbeResult("container", Status.OK, "ok")


def _run_daemon(tmp_path, probe, watcher, seconds, done=None):
    """The real Daemon loop in a thread, for `seconds` or until done(ads);
    (the daemon, the ads it printed)."""
    from startd_health.core.state import StateDir
    from startd_health.monitor.daemon import Daemon, DaemonOptions

    ads = []
    daemon = Daemon([probe], {probe.name: {"period": 300.0, "timeout": 30.0}}, StateDir(str(tmp_path / "state")),
                    DaemonOptions(heartbeat=60.0, watch_interval=0.1), watcher=watcher, write=ads.append)
    stop = threading.Event()
    thread = threading.Thread(target=daemon.run, kwargs={"stop": stop, "out_fd": None}, daemon=True)
    thread.start()
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and not (done is not None and done(ads)):
        time.sleep(0.05)
    stop.set()
    daemon.wake()
    thread.join(5)
    return daemon, ads


def _refused_then_accepted(ads):
    refused = [i for i, ad in enumerate(ads) if "re-checking" in ad]
    return bool(refused) and "StartdHealthOk = true" in ads[-1] and refused[-1] < len(ads) - 1


def test_the_daemon_refuses_while_a_hanging_container_test_is_re_checked_then_accepts(tmp_path):
    """HTCondor's own test hanging is the node's own evidence: the verdict
    fails at once ("re-checking: ..."), not after the container probe's
    launch timeout, and the re-check's passing result lifts it."""
    probe = _SlowOkProbe()
    daemon, ads = _run_daemon(tmp_path, probe, _ScriptedWatcher(time.monotonic() + 1.0), 15, _refused_then_accepted)
    refused = [ad for ad in ads if "re-checking" in ad]
    assert refused, ads
    assert "StartdHealthOk = false" in refused[0] and "StarterLog.slot1_1" in refused[0]
    assert "StartdHealthOk = true" in ads[0]
    assert "StartdHealthOk = true" in ads[-1] and probe.runs == 2, (probe.runs, ads[-1])
    assert not daemon.suspicions


class _QuickProbe(Probe):
    """Answers in milliseconds when healthy (as cvmfs does); its re-check
    after the event takes `slow` seconds, then passes."""

    name = "cvmfs"
    description = "a quick probe"
    answers_within = 0.5

    def __init__(self, slow: float) -> None:
        self.slow, self.runs = slow, 0

    def run(self, ctx):
        self.runs += 1
        if self.runs > 1:
            time.sleep(self.slow)
        return ProbeResult("cvmfs", Status.OK, "ok")


class _EventWatcher(_ScriptedWatcher):
    """Fires `probe` once (an event), with no suspicion of its own."""

    def __init__(self, fire_at: float, probe: str) -> None:
        super().__init__(fire_at)
        self.probe = probe

    def poll(self, mounts_changed=True):
        if not self.fired and time.monotonic() >= self.fire_at:
            self.fired = True
            return {self.probe}
        return set()


def test_a_quick_probes_re_check_that_does_not_answer_in_time_refuses_until_it_does(tmp_path):
    """A hung CVMFS repository: the re-check after the mount change hangs;
    the node refuses after answers_within, not after the repository timeout."""
    probe = _QuickProbe(slow=2.0)
    daemon, ads = _run_daemon(tmp_path, probe, _EventWatcher(time.monotonic() + 0.5, "cvmfs"), 4.5)
    oks = [("StartdHealthOk = true" in ad, "re-checking" in ad) for ad in ads]
    assert oks[0] == (True, False) and (False, True) in oks and oks[-1] == (True, False), oks
    refused = next(ad for ad in ads if "re-checking" in ad)
    assert "the re-check after an event has not answered in 0.5 s" in refused
    assert probe.runs == 2 and not daemon.suspicions


def test_a_quick_probes_re_check_that_answers_in_time_changes_nothing(tmp_path):
    """A request (any local user may send one) costs a healthy node no refusal and no extra ad."""
    probe = _QuickProbe(slow=0.05)
    daemon, ads = _run_daemon(tmp_path, probe, _EventWatcher(time.monotonic() + 0.5, "cvmfs"), 2.0)
    assert probe.runs == 2 and len(ads) == 1 and "StartdHealthOk = true" in ads[0], ads
