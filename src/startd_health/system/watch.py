"""Event triggers for the daemon: cheap checks, every second or so, of what
a probe depends on, so that a fault the system can see is probed at once
instead of at the probe's next period.

- files (a configured image, the runtime binary): removed or replaced is a
  change of stat()'s (dev, inode, size, mtime, ctime, mode), or of the error;
- the mount table: the kernel flags an open /proc/self/mounts (POLLPRI) when
  a filesystem is mounted or unmounted in our namespace, so the daemon's
  poll() wakes at once and costs nothing meanwhile; then the mounts under a
  watched prefix (the CVMFS root) are compared with the last ones;
- directories that must stay writable (EXECUTE): statvfs()'s ST_RDONLY and
  access(W_OK).

A watched path on a FUSE or network filesystem (CVMFS, NFS, ...) is never
stat()ed here: a hung mount would hang the daemon itself (a probe touches
such paths only in children it can abandon). Its mount appearing or going is
seen in the mount table instead. poll() returns the probes whose inputs
changed since the previous poll; the first poll only records the baseline.
The owner polls mounts_fd() for POLLPRI and calls poll(mounts_changed=True)
when it fires, and poll() every interval when `periodic` (files to stat).
"""

from __future__ import annotations

import os
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence, Set, Tuple

from startd_health.system.procfs import Mount, parse_mounts, path as proc_path

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


def writable_signature(path: str) -> Signature:
    """(read-only filesystem, writable by us) of a directory, or the error."""
    try:
        flags = os.statvfs(path).f_flag
    except OSError as exc:
        return ("error", exc.errno)
    return (bool(flags & os.ST_RDONLY), os.access(path, os.W_OK))


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
                 writable: Mapping[str, Sequence[str]] = {}, system_root: str = "/") -> None:
        self.files = {p: tuple(v) for p, v in files.items() if v}
        self.mounts = {p: tuple(v) for p, v in mounts.items() if v}
        self.writable = {p: tuple(v) for p, v in writable.items() if v}
        self.system_root = system_root
        self._mount_bytes: Optional[bytes] = None
        self._mount_table: Dict[str, Mount] = {}
        self._mount_sets: Dict[str, frozenset] = {}
        self._signatures: Dict[Tuple[str, str], Signature] = {}
        self._local: Dict[str, bool] = {}   # path -> safe to stat here (not on a remote/FUSE mount)
        self._started = False
        self._mounts_file: Optional[Any] = None

    @property
    def empty(self) -> bool:
        return not (self.files or self.mounts or self.writable)

    @property
    def periodic(self) -> bool:
        """Whether anything must be stat()ed at intervals (mounts need not: see mounts_fd)."""
        return bool(self.files or self.writable)

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

    def describe(self) -> List[str]:
        lines = [f"{probe}: file {path}" for probe, paths in self.files.items() for path in paths]
        lines += [f"{probe}: mounts under {path}" for probe, paths in self.mounts.items() for path in paths]
        lines += [f"{probe}: writable {path}" for probe, paths in self.writable.items() for path in paths]
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
        for kind, table, signature in (("file", self.files, file_signature),
                                       ("writable", self.writable, writable_signature)):
            for probe, paths in table.items():
                for path in paths:
                    if not self._local.get(path, False):
                        continue
                    key = (kind, path)
                    now_sig = signature(path)
                    before = self._signatures.get(key)
                    self._signatures[key] = now_sig
                    if before is not None and before != now_sig:
                        changed.add(probe)
        if not self._started:   # the first poll records the baseline
            self._started = True
            return set()
        return changed
