"""The userns probe's clone test (probes/userns.py), run by path as
`python -I -S _clone_test.py UID GID`: standard library only, nothing of
startd_health (it must start fast, and may run as another user).

Drops to uid/gid when root and uid != 0, creates a user namespace and maps
root in it to uid/gid, as `unshare --user --map-root-user` does. Prints "ok"
(exit 0) or "<step>: <error>" (exit 3).
"""

import os
import sys

CLONE_NEWUSER = 0x10000000
PR_SET_DUMPABLE = 4


def load_libc():
    """ctypes' libc, when needed (no os.unshare before Python 3.12, or prctl
    as root): loaded before dropping privileges."""
    if hasattr(os, "unshare") and os.getuid() != 0:
        return None
    import ctypes
    return ctypes.CDLL(None, use_errno=True)


def unshare(libc):
    if hasattr(os, "unshare"):
        os.unshare(CLONE_NEWUSER)
        return
    if libc.unshare(CLONE_NEWUSER) != 0:
        import ctypes
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


def write(path, text):
    fd = os.open(path, os.O_WRONLY)
    try:
        os.write(fd, text.encode())
    finally:
        os.close(fd)


def main(argv):
    uid, gid = int(argv[0]), int(argv[1])
    libc = load_libc()
    step = "drop privileges"
    try:
        if os.getuid() == 0 and uid != 0:
            os.setgroups([])
            os.setgid(gid)
            os.setuid(uid)
            # Changing uid made us non-dumpable: /proc/self/uid_map would stay root's.
            if libc.prctl(PR_SET_DUMPABLE, 1, 0, 0, 0) != 0:
                import ctypes
                raise OSError(ctypes.get_errno(), "prctl(PR_SET_DUMPABLE)")
        step = "unshare(CLONE_NEWUSER)"
        unshare(libc)
        step = "write uid_map"
        if os.path.exists("/proc/self/setgroups"):
            write("/proc/self/setgroups", "deny")
        write("/proc/self/uid_map", "0 %d 1" % uid)
        write("/proc/self/gid_map", "0 %d 1" % gid)
        if os.getuid() != 0:
            raise OSError(0, "not root inside the namespace (uid %d)" % os.getuid())
    except OSError as exc:
        print("%s: %s" % (step, exc.strerror or exc))
        return 3
    print("ok")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
