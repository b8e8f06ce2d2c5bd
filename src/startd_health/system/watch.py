"""Event triggers for the daemon: cheap checks, every second or so, of what
a probe depends on, so that a fault the system can see is probed at once
instead of at the probe's next period.

- files (a configured image, the runtime binary): removed or replaced is a
  change of stat()'s (dev, inode, size, mtime, ctime, mode), or of the error;
- the mount table: the kernel flags an open /proc/self/mounts (POLLPRI) when
  a filesystem is mounted or unmounted in our namespace, so the daemon's
  poll() wakes at once and costs nothing meanwhile; then the mounts under a
  watched prefix (the CVMFS root) are compared with the last ones;
- directories that must stay writable (EXECUTE): statvfs()'s ST_RDONLY,
  access(W_OK), and whether it is full (free space below `full_bytes`, or no
  free inode).
- the kernel log (/dev/kmsg, for the kernel probe): the daemon polls a
  descriptor opened at its end for POLLIN; a new message of level "err" or
  worse from the kernel itself (a read-only remount, an I/O error, a hung
  task, a machine check, an Xid are all logged at that level) re-runs the
  probe. Chattier levels (iptables, link up/down) do not wake it twice.
- the starter's logs (`$(LOG)/StarterLog*`, for the container probe): when
  HTCondor's own per-job container test fails (SINGULARITY_RUN_TEST_BEFORE_JOB:
  "Non zero return code N from singularity test of ...", "Error running
  singularity test job"), a fault only a launch shows (user namespaces
  refused, a broken --nv, ...) has just sent a job back: the container probe
  re-runs, so the next job does not land there too. Only the bytes appended
  since the last look are read (at most STARTER_LOG_READ of them).

A watched path on a FUSE or network filesystem (CVMFS, NFS, ...) is never
stat()ed here: a hung mount would hang the daemon itself (a probe touches
such paths only in children it can abandon). Its mount appearing or going is
seen in the mount table instead. poll() returns the probes whose inputs
changed since the previous poll; the first poll only records the baseline.
The owner polls mounts_fd() for POLLPRI and calls poll(mounts_changed=True)
when it fires, and poll() every interval when `periodic` (files to stat).
"""

from __future__ import annotations

import errno
import os
import stat
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence, Set, Tuple

from startd_health.system.procfs import Mount, parse_mounts, path as proc_path

# What HTCondor's starter logs when its container test before a job fails
# (src/condor_starter.V6.1/singularity.cpp, runTest).
STARTER_TEST_FAILED = (b"from singularity test of", b"Error running singularity test job")
STARTER_LOG_READ = 1 << 18

# Filesystems whose stat() may block for as long as a server does not answer.
REMOTE_FSTYPES = ("fuse", "nfs", "cifs", "smb", "ceph", "lustre", "gpfs", "cvmfs", "autofs", "9p", "afs",
                  "glusterfs", "beegfs", "sshfs")

Signature = Tuple[object, ...]


def file_signature(path: str) -> Signature:
    """What changes when a file is removed, replaced, rewritten or chmod'ed."""
    try:
        st = os.stat(path)
    except OSError as exc:
        return ("error", exc.errno)
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_mode)


def writable_signature(path: str, full_bytes: int = 0) -> Signature:
    """(read-only filesystem, writable by us, full) of a directory, or the error."""
    try:
        st = os.statvfs(path)
    except OSError as exc:
        return ("error", exc.errno)
    full = st.f_bavail * st.f_frsize < full_bytes or (st.f_files > 0 and st.f_favail == 0)
    return (bool(st.f_flag & os.ST_RDONLY), os.access(path, os.W_OK), full)


def mount_of(path: str, mounts: Mapping[str, Mount]) -> Optional[Mount]:
    """The mount a path lies on (longest mount point that is a prefix of it)."""
    best: Optional[Mount] = None
    for point, mount in mounts.items():
        if path == point or path.startswith(point.rstrip("/") + "/"):
            if best is None or len(point) > len(best.point):
                best = mount
    return best


def is_remote(path: str, mounts: Mapping[str, Mount]) -> bool:
    mount = mount_of(path, mounts)
    return mount is not None and mount.fstype.startswith(REMOTE_FSTYPES)


def under(point: str, prefix: str) -> bool:
    return point == prefix or point.startswith(prefix.rstrip("/") + "/")


class Watcher:
    """files / mounts / writable: probe -> paths (mount point prefixes for mounts)."""

    def __init__(self, files: Mapping[str, Sequence[str]] = {}, mounts: Mapping[str, Sequence[str]] = {},
                 writable: Mapping[str, Sequence[str]] = {}, system_root: str = "/", full_bytes: int = 0,
                 kernel_log: Optional[Tuple[str, str]] = None, starter_logs: Optional[Tuple[str, str]] = None,
                 site_images: Sequence[str] = ()) -> None:
        self.files = {p: tuple(v) for p, v in files.items() if v}
        self.mounts = {p: tuple(v) for p, v in mounts.items() if v}
        self.writable = {p: tuple(v) for p, v in writable.items() if v}
        self.system_root = system_root
        self.full_bytes = full_bytes   # a writable directory with less free space than this is full
        self.kernel_log = kernel_log   # (probe, the kmsg device it reads)
        self._kmsg_fd: Optional[int] = None
        self.starter_logs = starter_logs   # (probe, HTCondor's LOG directory)
        self.site_images = tuple(os.fsencode(p) for p in site_images)   # the images that probe tests
        self._starter_seen: Dict[str, Tuple[int, int]] = {}   # log file -> (inode, size read up to)
        self._mount_bytes: Optional[bytes] = None
        self._mount_table: Dict[str, Mount] = {}
        self._mount_sets: Dict[str, frozenset] = {}
        self._signatures: Dict[Tuple[str, str, str], Signature] = {}
        self._local: Dict[str, bool] = {}   # path -> safe to stat here (not on a remote/FUSE mount)
        self._started = False
        self._mounts_file: Optional[Any] = None

    @property
    def empty(self) -> bool:
        return not (self.files or self.mounts or self.writable or self.kernel_log or self.starter_logs)

    @property
    def periodic(self) -> bool:
        """Whether anything must be stat()ed at intervals (mounts need not: see mounts_fd)."""
        return bool(self.files or self.writable or self.starter_logs)

    def mounts_fd(self) -> Optional[int]:
        """The descriptor to poll for POLLPRI (a mount or unmount); None if it cannot be opened."""
        if self._mounts_file is None:
            try:
                self._mounts_file = open(proc_path(self.system_root, "proc/self/mounts"), "rb", buffering=0)
            except OSError:
                return None
        return self._mounts_file.fileno()

    def close(self) -> None:
        if self._mounts_file is not None:
            self._mounts_file.close()
            self._mounts_file = None
        if self._kmsg_fd is not None:
            os.close(self._kmsg_fd)
            self._kmsg_fd = None

    def kmsg_fd(self) -> Optional[int]:
        """A descriptor on the kernel log, at its end, to poll for POLLIN; None
        when there is none to watch: not configured, unreadable (the kernel
        probe says why), or neither a kmsg device nor a pipe (a regular file
        always polls readable)."""
        if self._kmsg_fd is None and self.kernel_log is not None:
            try:
                fd = os.open(self.kernel_log[1], os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
            except OSError:
                return None
            try:
                mode = os.fstat(fd).st_mode
                if not (stat.S_ISCHR(mode) or stat.S_ISFIFO(mode)):
                    os.close(fd)
                    self.kernel_log = None
                    return None
                if stat.S_ISCHR(mode):
                    os.lseek(fd, 0, os.SEEK_END)   # on /dev/kmsg: after the last record
            except OSError:
                os.close(fd)
                return None
            self._kmsg_fd = fd
        return self._kmsg_fd

    def kmsg_drain(self, max_records: int = 10000) -> Set[str]:
        """Read what the kernel logged since the last call; the kernel probe
        when one of it is a kernel message at level err (3) or worse."""
        fd, serious = self._kmsg_fd, False
        if fd is None or self.kernel_log is None:
            return set()
        for _ in range(max_records):
            try:
                record = os.read(fd, 8192)
            except BlockingIOError:
                break
            except OSError as exc:
                if exc.errno == errno.EPIPE:   # overwritten before we read them: go on from the oldest kept
                    serious = True
                    continue
                break
            if not record:
                break
            # One record per read on /dev/kmsg, several lines from a pipe;
            # continuation lines (" KEY=value") start with a space.
            for line in record.split(b"\n"):
                head = line.split(b",", 1)[0]
                if head.isdigit() and int(head) <= 3:   # facility 0 (kernel) * 8 + level 0..3
                    serious = True
        return {self.kernel_log[0]} if serious else set()

    def describe(self) -> List[str]:
        lines = [f"{probe}: file {path}" for probe, paths in self.files.items() for path in paths]
        lines += [f"{probe}: mounts under {path}" for probe, paths in self.mounts.items() for path in paths]
        lines += [f"{probe}: writable {path}" for probe, paths in self.writable.items() for path in paths]
        if self.starter_logs is not None:
            lines.append(f"{self.starter_logs[0]}: HTCondor's container test failing in {self.starter_logs[1]}/StarterLog*")
        if self.kernel_log is not None:
            lines.append(f"{self.kernel_log[0]}: kernel messages at level err or worse in {self.kernel_log[1]}")
        return lines

    def _read_mounts(self) -> bool:
        """Whether the mount table changed since the last read."""
        try:
            if self._mounts_file is not None:
                self._mounts_file.seek(0)
                data = b"".join(iter(lambda: self._mounts_file.read(1 << 16), b""))
            else:
                with open(proc_path(self.system_root, "proc/self/mounts"), "rb") as handle:
                    data = handle.read()
        except OSError:
            data = b""
        if data == self._mount_bytes:
            return False
        self._mount_bytes = data
        self._mount_table = parse_mounts(data.decode("utf-8", "surrogateescape"))
        watched = set(self._paths(self.files)) | set(self._paths(self.writable))
        self._local = {path: not is_remote(path, self._mount_table) for path in watched}
        return True

    @staticmethod
    def _paths(table: Mapping[str, Sequence[str]]) -> Iterable[str]:
        return (path for paths in table.values() for path in paths)

    def _mount_set(self, prefixes: Sequence[str]) -> frozenset:
        return frozenset((m.point, m.source, m.fstype) for m in self._mount_table.values()
                         if any(under(m.point, prefix) for prefix in prefixes))

    def poll(self, mounts_changed: bool = True) -> Set[str]:
        """Probes whose watched inputs changed since the last poll.
        mounts_changed=False: the mount table is known unchanged (no POLLPRI
        on mounts_fd since the last poll): it is not read again."""
        changed: Set[str] = set()
        if (mounts_changed or not self._started) and not self.empty:
            if self._read_mounts():
                for probe, prefixes in self.mounts.items():
                    now = self._mount_set(prefixes)
                    if self._mount_sets.get(probe) != now:
                        if probe in self._mount_sets:
                            changed.add(probe)
                        self._mount_sets[probe] = now
        full = self.full_bytes
        for kind, table, signature in (("file", self.files, file_signature),
                                       ("writable", self.writable, lambda path: writable_signature(path, full))):
            for probe, paths in table.items():
                for path in paths:
                    if not self._local.get(path, False):
                        continue
                    key = (kind, probe, path)   # per probe: two probes may watch one path
                    now_sig = signature(path)
                    before = self._signatures.get(key)
                    self._signatures[key] = now_sig
                    if before is not None and before != now_sig:
                        changed.add(probe)
        if self.starter_logs is not None and self._starter_test_failed(record_only=not self._started):
            changed.add(self.starter_logs[0])
        if not self._started:   # the first poll records the baseline
            self._started = True
            return set()
        return changed

    def _site_test_failed(self, line: bytes) -> bool:
        """A failed container test of a site image the probe tests (a job's
        own broken image is the job's problem: it must not make every such
        job cost the node a probe run)."""
        if not any(marker in line for marker in STARTER_TEST_FAILED):
            return False
        return not self.site_images or any(image in line for image in self.site_images)

    def _starter_test_failed(self, record_only: bool) -> bool:
        """Whether a starter log got a failed container test since the last look."""
        assert self.starter_logs is not None
        directory, found, seen = self.starter_logs[1], False, {}
        try:
            names = [n for n in os.listdir(directory) if n.startswith("StarterLog") and not n.endswith(".old")]
        except OSError:
            return False
        for name in names:
            path = os.path.join(directory, name)
            try:
                st = os.stat(path)   # opened only when it grew: this runs every WATCH_INTERVAL
            except OSError:
                continue
            inode, before = self._starter_seen.get(path, (st.st_ino, st.st_size if record_only else 0))
            start = before if inode == st.st_ino and before <= st.st_size else 0   # rotated: from its start
            seen[path] = (st.st_ino, st.st_size)
            if record_only or st.st_size == start:
                continue
            offset = max(start, st.st_size - STARTER_LOG_READ)
            try:
                with open(path, "rb") as handle:
                    handle.seek(offset)
                    data = handle.read(st.st_size - offset)   # up to what was stat()ed: the rest is next time's
            except OSError:
                continue
            found = found or any(self._site_test_failed(line) for line in data.splitlines())
        self._starter_seen = seen
        return found
