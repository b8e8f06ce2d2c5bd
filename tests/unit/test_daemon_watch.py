"""Event triggers (system/watch.py): real files, and a recorded mount table
(a system_root tree whose proc/self/mounts the test rewrites: SIMULATED
mounts and unmounts)."""

from __future__ import annotations

import os
import select

from startd_health.system.watch import Watcher, is_remote
from startd_health.system.procfs import parse_mounts

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
