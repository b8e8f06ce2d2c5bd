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
- the starter's logs (STARTER_LOG and its per-slot files, for the container
  probe): when HTCondor's own per-job container test fails
  (SINGULARITY_RUN_TEST_BEFORE_JOB: "Non zero return code N from singularity
  test of ...", "Error running singularity test job"), a fault only a launch
  shows (user namespaces refused, a broken --nv, ...) has just sent a job
  back: the container probe re-runs (and the GPU probe, when the failed test
  had --nv), so the next job does not land there too. When such a test has
  not returned STARTER_TEST_SLOW_SECONDS after it began ("Running job via
  singularity." with no "singularity test returns" after it), the runtime
  may hang (the starter waits for its test without a time limit): the
  container probe re-runs, once per such test, and its own launch timeout
  decides. Only the bytes appended since the last look are read (at most
  STARTER_LOG_READ of them).
- bind sources (the host paths SINGULARITY_EXTRA_ARGUMENTS binds; the
  starter's test fails when one is missing): present or not, same inode,
  same type and mode. Not mtime: a busy data directory changes every second.

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
import time
from dataclasses import dataclass
from typing import Any, Callable, Dict, Iterable, List, Mapping, Optional, Sequence, Set, Tuple

from startd_health.system.procfs import Mount, parse_mounts, path as proc_path

# What HTCondor's starter logs at D_ALWAYS around its container test before
# a job (src/condor_starter.V6.1/os_proc.cpp and singularity.cpp runTest;
# the same in 23.9, 23.10 and 25.x): the test begins right after
# STARTER_TEST_BEGINS, and one of STARTER_TEST_ENDED follows it (the job's
# own start also ends it, when the test is turned off; and the starter's exit).
STARTER_TEST_FAILED = (b"from singularity test of", b"Error running singularity test job")
STARTER_TEST_BEGINS = b"Running job via singularity."
STARTER_TEST_ENDED = (b"singularity test returns", b"Error running singularity test job", b"Create_Process succeeded",
                      b"EXITING WITH STATUS")
# A test of a local image (exit_37-like, or the job's /bin/true) takes well
# under a second with squashfuse and a few with an extraction: one still
# running after this long makes the container probe re-run (its own launch
# timeout then tells a slow runtime from a hung one), and is a suspicion the
# daemon fences on until that run returns (take_suspicions()).
STARTER_TEST_SLOW_SECONDS = 5.0
STARTER_TEST_SLOW_FACTOR = 3.0   # ... or this many times the node's own slowest launch, if longer
STARTER_LOG_READ = 1 << 18

# Filesystems whose stat() may block for as long as a server does not answer.
REMOTE_FSTYPES = ("fuse", "nfs", "cifs", "smb", "ceph", "lustre", "gpfs", "cvmfs", "autofs", "9p", "afs",
                  "glusterfs", "beegfs", "sshfs")

Signature = Tuple[object, ...]


@dataclass(frozen=True)
class StarterLogs:
    """Where the starters log and which probes their container tests concern."""

    directory: str                 # dirname of STARTER_LOG
    prefix: str = "StarterLog"     # basename of STARTER_LOG: the starters add .slot1_1 etc.
    probe: str = "container"       # re-run when a test of a site image fails or hangs
    nv_probe: str = ""             # also re-run when the failed test had --nv ("": none)
    slow_seconds: float = STARTER_TEST_SLOW_SECONDS


@dataclass
class _StarterLogState:
    inode: int
    size: int                      # read up to here
    test_since: Optional[float] = None   # monotonic: a container test began and has not ended
    reported: bool = False         # that test already re-ran the probe


def file_signature(path: str) -> Signature:
    """What changes when a file is removed, replaced, rewritten or chmod'ed."""
    try:
        st = os.stat(path)
    except OSError as exc:
        return ("error", exc.errno)
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_mode)


def presence_signature(path: str) -> Signature:
    """What changes when a path is removed, replaced, or made unusable
    (type and mode), and not when what is inside a directory changes."""
    try:
        st = os.stat(path)
    except OSError as exc:
        return ("error", exc.errno)
    return (st.st_dev, st.st_ino, st.st_mode)


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
    """files / present / mounts / writable: probe -> paths (mount point prefixes for mounts)."""

    def __init__(self, files: Mapping[str, Sequence[str]] = {}, mounts: Mapping[str, Sequence[str]] = {},
                 writable: Mapping[str, Sequence[str]] = {}, system_root: str = "/", full_bytes: int = 0,
                 kernel_log: Optional[Tuple[str, str]] = None, starter_logs: Optional[StarterLogs] = None,
                 site_images: Sequence[str] = (), present: Mapping[str, Sequence[str]] = {},
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.files = {p: tuple(v) for p, v in files.items() if v}
        self.present = {p: tuple(v) for p, v in present.items() if v}
        self.mounts = {p: tuple(v) for p, v in mounts.items() if v}
        self.writable = {p: tuple(v) for p, v in writable.items() if v}
        self.clock = clock
        self._configured: Dict[str, Tuple[str, ...]] = {}   # probe -> its configured files (found_files adds)
        self.system_root = system_root
        self.full_bytes = full_bytes   # a writable directory with less free space than this is full
        self.kernel_log = kernel_log   # (probe, the kmsg device it reads)
        self._kmsg_fd: Optional[int] = None
        self.starter_logs = starter_logs
        self.site_images = tuple(os.fsencode(p) for p in site_images)   # the images that probe tests
        self._starter_seen: Dict[str, _StarterLogState] = {}   # log file -> what was read of it
        self._suspicions: Dict[str, str] = {}   # probe -> why the node is suspect until it has re-run
        self._slow_seconds = starter_logs.slow_seconds if starter_logs is not None else 0.0
        self._mount_bytes: Optional[bytes] = None
        self._mount_table: Dict[str, Mount] = {}
        self._mount_sets: Dict[str, frozenset] = {}
        self._signatures: Dict[Tuple[str, str, str], Signature] = {}
        self._local: Dict[str, bool] = {}   # path -> safe to stat here (not on a remote/FUSE mount)
        self._started = False
        self._mounts_file: Optional[Any] = None

    def found_files(self, probe: str, paths: Sequence[str]) -> None:
        """Files a probe's last run found by itself (the images
        IMAGE_DIRS listed), watched like the configured ones until its next
        run names others. A path seen for the first time only records its
        baseline."""
        configured = self._configured.setdefault(probe, self.files.get(probe, ()))
        now = tuple(dict.fromkeys(configured + tuple(p for p in paths if os.path.isabs(p))))
        if now == self.files.get(probe, ()):
            return
        if now:
            self.files[probe] = now
        else:
            self.files.pop(probe, None)
        for key in [k for k in self._signatures if k[0] == "file" and k[1] == probe and k[2] not in now]:
            del self._signatures[key]
        if self._mount_bytes is not None:
            for path in now:
                self._local.setdefault(path, not is_remote(path, self._mount_table))

    @property
    def empty(self) -> bool:
        return not (self.files or self.present or self.mounts or self.writable or self.kernel_log
                    or self.starter_logs)

    @property
    def periodic(self) -> bool:
        """Whether anything must be stat()ed at intervals (mounts need not: see mounts_fd)."""
        return bool(self.files or self.present or self.writable or self.starter_logs)

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
        lines += [f"{probe}: present {path}" for probe, paths in self.present.items() for path in paths]
        lines += [f"{probe}: mounts under {path}" for probe, paths in self.mounts.items() for path in paths]
        lines += [f"{probe}: writable {path}" for probe, paths in self.writable.items() for path in paths]
        if self.starter_logs is not None:
            logs = self.starter_logs
            lines.append(f"{logs.probe}: HTCondor's container test failing, or running over {logs.slow_seconds:g} s, "
                         f"in {logs.directory}/{logs.prefix}*")
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
        watched = set(self._paths(self.files)) | set(self._paths(self.present)) | set(self._paths(self.writable))
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
                                       ("present", self.present, presence_signature),
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
        if self.starter_logs is not None:
            changed |= self._starter_tests(record_only=not self._started)
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

    def _starter_tests(self, record_only: bool) -> Set[str]:
        """The probes to re-run for what the starter logs said since the
        last look: a failed test of a site image, or a test still running
        after slow_seconds (every log is looked at: a hung test logs nothing)."""
        logs = self.starter_logs
        assert logs is not None
        fire: Set[str] = set()
        try:
            names = [n for n in os.listdir(logs.directory)
                     if (n == logs.prefix or n.startswith(logs.prefix + ".")) and not n.endswith(".old")]
        except OSError:
            return fire
        now, seen = self.clock(), {}
        for name in names:
            path = os.path.join(logs.directory, name)
            try:
                st = os.stat(path)   # opened only when it grew: this runs every WATCH_INTERVAL
            except OSError:
                continue
            state = self._starter_seen.get(path)
            if state is None or state.inode != st.st_ino or state.size > st.st_size:
                # New (read from its start, unless it is the baseline) or rotated.
                state = _StarterLogState(st.st_ino, st.st_size if record_only and state is None else 0)
            seen[path] = state
            if st.st_size > state.size:
                offset = max(state.size, st.st_size - STARTER_LOG_READ)
                data = b""
                try:
                    with open(path, "rb") as handle:
                        handle.seek(offset)
                        data = handle.read(st.st_size - offset)   # up to what was stat()ed: the rest is next time's
                except OSError:
                    pass
                state.size = st.st_size
                for line in data.splitlines():
                    if STARTER_TEST_BEGINS in line:
                        state.test_since, state.reported = now, False
                    elif any(marker in line for marker in STARTER_TEST_ENDED):
                        state.test_since = None
                    if not record_only and self._site_test_failed(line):
                        fire.add(logs.probe)
                        if logs.nv_probe and b" --nv " in line:
                            fire.add(logs.nv_probe)
            if (not record_only and state.test_since is not None and not state.reported
                    and now - state.test_since >= self._slow_seconds):
                state.reported = True
                fire.add(logs.probe)
                self._suspicions[logs.probe] = (f"HTCondor's container test for a job ({name}) has not returned "
                                                f"after {self._slow_seconds:.0f} s")
        self._starter_seen = seen
        return fire

    def launches_take(self, seconds: float) -> None:
        """The node's own launches of its images take up to this long (the
        container probe's last run): a test of HTCondor's is slow only at
        several times that (a node that extracts its images without
        squashfuse must not be suspect on every job start)."""
        if self.starter_logs is not None:
            self._slow_seconds = max(self.starter_logs.slow_seconds, STARTER_TEST_SLOW_FACTOR * seconds)

    def take_suspicions(self) -> Dict[str, str]:
        """probe -> why, for the probes the last polls re-ran on evidence
        that the node itself wrote (a container test of HTCondor's hanging in
        its own StarterLog), not merely on a change; cleared by the call."""
        taken, self._suspicions = self._suspicions, {}
        return taken
