"""Run as a child by the execute probe (probes/execute.py), one per
directory: a hung filesystem blocks this process, never the probe.

usage: _execute_test.py DIRECTORY [UID GID]

UID GID: run as root, the child first becomes that account (HTCondor's,
which creates the job scratch directories), so that root's privilege does
not hide a directory condor cannot write.

Prints one JSON line: free bytes and inodes (statvfs, as an unprivileged
user sees them), whether the filesystem is mounted read-only, and the
outcome of creating, writing, fsyncing and removing a file in DIRECTORY
(step and errno name of the first failure). Standard library only.
"""

import errno
import json
import os
import sys


def main() -> None:
    path = sys.argv[1]
    if len(sys.argv) == 4 and os.geteuid() == 0:
        os.setgroups([])
        os.setgid(int(sys.argv[3]))
        os.setuid(int(sys.argv[2]))
    found = {"path": path}
    try:
        vfs = os.statvfs(path)
    except OSError as exc:
        found["error"] = {"step": "statvfs", "errno": errno.errorcode.get(exc.errno, str(exc.errno)),
                          "text": exc.strerror or str(exc)}
        print(json.dumps(found))
        return
    found.update(free_bytes=vfs.f_bavail * vfs.f_frsize, total_bytes=vfs.f_blocks * vfs.f_frsize,
                 free_inodes=vfs.f_favail, total_inodes=vfs.f_files, read_only=bool(vfs.f_flag & os.ST_RDONLY))
    sys.stdout.write("statvfs\n")   # a timeout after this line: the write hung, not the statvfs
    sys.stdout.flush()
    name = os.path.join(path, ".startd-health-execute.%d" % os.getpid())
    failure = None
    try:
        fd = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except OSError as exc:
        failure = ("create", exc)
    else:
        step = "write"
        try:
            block = b"startd-health\n" * 292   # about one 4 KiB block
            if os.write(fd, block) != len(block):
                raise OSError(errno.ENOSPC, "short write")
            step = "fsync"
            os.fsync(fd)
        except OSError as exc:
            failure = (step, exc)
        finally:
            try:
                os.close(fd)
            except OSError as exc:   # NFS reports a failed write-back here
                failure = failure or ("close", exc)
        try:
            os.unlink(name)
        except OSError as exc:
            failure = failure or ("remove", exc)
    if failure is None:
        found["write_ok"] = True
    else:
        step, exc = failure
        found["error"] = {"step": step, "errno": errno.errorcode.get(exc.errno, str(exc.errno)),
                          "text": exc.strerror or str(exc)}
    print(json.dumps(found))


if __name__ == "__main__":
    main()
