"""A simulated CVMFS client for the tests (there is no CVMFS client here).

What is simulated, and how faithfully:

- A healthy repository is a directory tree ``<root>/<repo>/`` with a few
  entries, carrying on its top directory the ``user.*`` extended attributes
  a real CVMFS mount answers (revision, nioerr, timestamp_last_ioerr, fqrn,
  version, ...; set with os.setxattr, which the ext4 under /tmp supports).
  What it does not simulate: the values are static, and the directory is
  not a mount, so a mounts file listing it the way the kernel lists a real
  CVMFS mount (``cvmfs2 <path> fuse ro,... 0 0``) is written next to it and
  given to the probe instead of /proc/self/mounts.
- A hung repository is a REAL FUSE mount (``cvmfs2`` on ``<path>``, type
  ``fuse``, as cvmfs2 mounts) whose server is this test process and never
  answers. Two ways of not answering, as a real client hangs:
    * ``swallow=True``: the server answers the kernel's INIT and then reads
      every request without ever replying, as a cvmfs2 stuck on the network
      or on a lock does. The caller waits in the kernel for an answer to a
      request the server already has: interruptible at first (state S), and
      after any fatal signal uninterruptible (state D, wchan
      request_wait_answer) -- SIGKILL does not end it. This is the case
      that forces a probe to abandon its child. (Until the server thread
      has read a request, its caller is still killable: see wait_requests.)
    * ``swallow=False``: the server never reads /dev/fuse at all (not even
      INIT). Callers wait in fuse_get_req in state D, but killably: SIGTERM
      or SIGKILL ends them.
  Cleanup (always, by the context manager): a lazy unmount and closing
  /dev/fuse, which aborts the connection and frees every blocked caller
  (they see ENOTCONN and exit). If the test process dies instead, the
  kernel closes the descriptor and the same abort happens.
"""

from __future__ import annotations

import ctypes
import errno
import os
import select
import struct
import threading
import time
from contextlib import contextmanager
from typing import Dict, Iterable, Iterator, List, Mapping, Optional

# What a real client answers on a repository's top directory (values as
# cvmfs2 formats them: decimal text, "DIRECT" when there is no proxy).
DEFAULT_XATTRS: Mapping[str, str] = {
    "revision": "12345",
    "nioerr": "0",
    "timestamp_last_ioerr": "0",
    "version": "2.12.7.0",
    "pid": "4242",
    "expires": "3",
    "usedfd": "0",
    "maxfd": "130560",
    "speed": "2011",
    "hitrate": "97.500",
    "proxy": "http://squid.example.org:3128",
    "host": "http://cvmfs-s1.example.org:8000/cvmfs/@fqrn@",
    "uptime": "1440",
    "nclg": "3",
}

# The options a real cvmfs2 mount shows in /proc/self/mounts.
CVMFS_MOUNT_OPTIONS = "ro,nosuid,nodev,relatime,user_id=0,group_id=0,default_permissions,allow_other"


def make_repo(root: str, repo: str, xattrs: Optional[Mapping[str, Optional[str]]] = None) -> str:
    """Create <root>/<repo> with a few entries and the user.* attributes of a
    real mount; xattrs overrides the defaults (value None: attribute absent)."""
    path = os.path.join(root, repo)
    os.makedirs(os.path.join(path, "etc"), exist_ok=True)
    with open(os.path.join(path, "README.txt"), "w") as handle:
        handle.write(f"simulated CVMFS repository {repo}\n")
    values = dict(DEFAULT_XATTRS, fqrn=repo)
    values.update(xattrs or {})
    for name, value in values.items():
        if value is not None:
            value = value.replace("@fqrn@", repo)
            os.setxattr(path, "user." + name, value.encode())
    return path


def mount_line(source: str, point: str, fstype: str, options: str = CVMFS_MOUNT_OPTIONS) -> str:
    """One /proc/self/mounts line, with the kernel's octal escapes for blanks."""
    def escape(text: str) -> str:
        return (text.replace("\\", "\\134").replace(" ", "\\040").replace("\t", "\\011")
                .replace("\n", "\\012"))
    return f"{escape(source)} {escape(point)} {fstype} {options} 0 0\n"


def write_mounts(path: str, cvmfs_points: Iterable[str], extra_lines: Iterable[str] = ()) -> str:
    """A mounts file as a node with CVMFS under autofs shows it: system
    mounts, the autofs map on the root's parent directory, one cvmfs2 FUSE
    line per mounted repository."""
    lines: List[str] = [
        "proc /proc proc rw,nosuid,nodev,noexec,relatime 0 0\n",
        "/dev/vda1 / ext4 rw,relatime 0 0\n",
        "sysfs /sys sysfs rw,nosuid,nodev,noexec,relatime 0 0\n",
    ]
    points = list(cvmfs_points)
    if points:
        autofs_root = os.path.dirname(points[0])
        lines.append(mount_line("/etc/auto.cvmfs", autofs_root, "autofs",
                                "rw,relatime,fd=6,pgrp=1234,timeout=300,minproto=5,maxproto=5,indirect"))
    lines += [mount_line("cvmfs2", point, "fuse") for point in points]
    lines += list(extra_lines)
    with open(path, "w") as handle:
        handle.writelines(lines)
    return path


# ---------------------------------------------------------------- hung FUSE mount

MNT_DETACH = 2
FUSE_INIT = 26
_IN_HEADER = struct.Struct("<IIQQIIIHH")   # len, opcode, unique, nodeid, uid, gid, pid, total_extlen, padding
_OUT_HEADER = struct.Struct("<IiQ")        # len, error, unique
# fuse_init_out: major, minor, max_readahead, flags, max_background,
# congestion_threshold, max_write, time_gran, max_pages, map_alignment,
# flags2, max_stack_depth, unused[6]
_INIT_OUT = struct.Struct("<IIIIHHIIHHII6I")
_READ_SIZE = 1 << 17                       # the kernel refuses reads smaller than its largest request


def fuse_available() -> str:
    """'' when a FUSE mount can be made here, else why not."""
    if not os.path.exists("/dev/fuse"):
        return "/dev/fuse is missing"
    if os.geteuid() != 0:
        return "mounting FUSE without fusermount needs root"
    try:
        os.close(os.open("/dev/fuse", os.O_RDWR))
    except OSError as exc:
        return f"/dev/fuse: {exc.strerror}"
    return ""


def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(None, use_errno=True)


class HungMount:
    """A FUSE mount at ``target`` whose server never answers (see the module docstring)."""

    def __init__(self, target: str, swallow: bool = True) -> None:
        self.target = target
        self.swallow = swallow
        self.requests: List[int] = []    # opcodes read and left unanswered
        self._fd = -1
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None

    def mount(self) -> "HungMount":
        os.makedirs(self.target, exist_ok=True)
        self._fd = os.open("/dev/fuse", os.O_RDWR | os.O_CLOEXEC | os.O_NONBLOCK)
        options = f"fd={self._fd},rootmode=40000,user_id=0,group_id=0,allow_other".encode()
        if _libc().mount(b"cvmfs2", self.target.encode(), b"fuse", 0, options) != 0:
            err = ctypes.get_errno()
            os.close(self._fd)
            self._fd = -1
            raise OSError(err, f"mount fuse on {self.target}: {os.strerror(err)}")
        if self.swallow:
            self._answer_init()
            self._thread = threading.Thread(target=self._swallow, name="fuse-swallow", daemon=True)
            self._thread.start()
        return self

    def _answer_init(self) -> None:
        """The kernel queues INIT at mount time; accept it, so that later
        requests reach us (and are then never answered)."""
        ready, _, _ = select.select([self._fd], [], [], 5.0)
        if not ready:
            raise OSError(errno.ETIMEDOUT, "no FUSE INIT request from the kernel")
        request = os.read(self._fd, _READ_SIZE)
        _, opcode, unique, *_ = _IN_HEADER.unpack_from(request)
        if opcode != FUSE_INIT:
            raise OSError(errno.EPROTO, f"expected FUSE INIT, got opcode {opcode}")
        body = _INIT_OUT.pack(7, 31, 0, 0, 12, 9, 4096, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0)
        os.write(self._fd, _OUT_HEADER.pack(_OUT_HEADER.size + len(body), 0, unique) + body)

    def _swallow(self) -> None:
        while not self._stop.is_set():
            ready, _, _ = select.select([self._fd], [], [], 0.05)
            if not ready:
                continue
            try:
                request = os.read(self._fd, _READ_SIZE)
            except BlockingIOError:
                continue
            except OSError:   # connection aborted: nothing more will come
                return
            self.requests.append(_IN_HEADER.unpack_from(request)[1])

    def wait_requests(self, count: int, timeout: float = 3.0) -> bool:
        """Wait until the server has read (and so will never answer) ``count`` requests."""
        deadline = time.monotonic() + timeout
        while len(self.requests) < count and time.monotonic() < deadline:
            time.sleep(0.01)
        return len(self.requests) >= count

    def cleanup(self) -> None:
        """Unmount and abort the connection; every blocked caller is freed."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(2.0)
        if self._fd >= 0:
            _libc().umount2(self.target.encode(), MNT_DETACH)
            os.close(self._fd)   # the last /dev/fuse reference: the kernel aborts pending requests
            self._fd = -1


@contextmanager
def hung_mount(target: str, swallow: bool = True) -> Iterator[HungMount]:
    mount = HungMount(target, swallow).mount()
    try:
        yield mount
    finally:
        mount.cleanup()


# ---------------------------------------------------------------- processes

def proc_state(pid: int) -> str:
    """State letter from /proc/<pid>/stat ('' when gone). Never reads
    cmdline or anything else that could block on a hung process."""
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return ""


def children_of(parent: int) -> Dict[int, str]:
    """Live (non-zombie) children of ``parent``: pid -> state letter."""
    found: Dict[int, str] = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat") as handle:
                fields = handle.read().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[1]) == parent and fields[0] not in ("Z", "X"):
            found[int(name)] = fields[0]
    return found


def wait_state(pid: int, states: str, timeout: float = 3.0) -> str:
    """Wait until the process is in one of ``states`` (letters); its last state."""
    deadline = time.monotonic() + timeout
    state = proc_state(pid)
    while (not state or state not in states) and time.monotonic() < deadline:
        time.sleep(0.02)
        state = proc_state(pid)
    return state
