"""Run by the pre-job hook (monitor/hook.py; kept beside the probes' child
programs) as a budgeted child: look at the
paths a job is about to need, as the job's user (the hook's user).

It touches the paths, which is what can block on a hung CVMFS/FUSE/NFS
mount, and is why it is a child the hook can abandon (system/procs.py).
Standard library only (run with -I -S, ~10 ms). Arguments: KIND:PATH, one
per path; prints one JSON line per path, in order, as soon as it is known:

  d:DIR    a CVMFS repository's top directory (stat()ing it makes autofs mount it)
  x:FILE   the container runtime: an executable file (a name, or names separated
           by |, looked up in PATH)
  r:IMAGE  the job's image: a readable file (of a SIF image, the header's
           data size against the file size: a truncated copy is caught) or
           a sandbox directory we may list
  e:PATH   a path that must exist (a bind source of SINGULARITY_EXTRA_ARGUMENTS)
  w:DIR    the job's scratch directory on EXECUTE: free space and inodes
           (statvfs), read-only or not, writable by us
"""

import json
import os
import shutil
import stat
import struct
import sys

SIF_MAGIC = b"SIF_MAGIC\0"
SIF_HEADER_BYTES = 128   # launch script (32), magic (10), version, arch, uuid, then int64 fields
SIF_DATA_FIELDS = 112    # offset of dataoff, datalen (little-endian int64) in the global header


def look(kind, path):
    found = {"kind": kind, "path": path, "ok": False}
    if kind == "x" and not os.path.isabs(path):
        resolved = next(filter(None, (shutil.which(name) for name in path.split("|"))), None)
        if resolved is None:
            found["error"] = "not found in PATH (" + os.environ.get("PATH", "") + ")"
            return found
        path = found["resolved"] = resolved
    try:
        info = os.stat(path)
    except OSError as exc:
        found["error"] = exc.strerror or str(exc)
        return found
    is_dir = stat.S_ISDIR(info.st_mode)
    if kind == "e":
        found["ok"] = True
        return found
    if kind == "w":
        fs = os.statvfs(path)
        found.update(ok=True, free_bytes=fs.f_bavail * fs.f_frsize, total_bytes=fs.f_blocks * fs.f_frsize,
                     free_inodes=fs.f_favail, total_inodes=fs.f_files,
                     read_only=bool(fs.f_flag & os.ST_RDONLY), write_ok=os.access(path, os.W_OK))
        return found
    if kind == "d":
        found["ok"] = is_dir
        found["realpath"] = os.path.realpath(path)
        if not is_dir:
            found["error"] = "not a directory"
    elif kind == "x":
        found["ok"] = not is_dir and os.access(path, os.X_OK)
        if not found["ok"]:
            found["error"] = "a directory" if is_dir else "not executable"
    elif is_dir:
        found["ok"] = os.access(path, os.R_OK | os.X_OK)
        if not found["ok"]:
            found["error"] = "directory not readable"
    else:
        try:
            with open(path, "rb") as handle:
                head = handle.read(SIF_HEADER_BYTES)
        except OSError as exc:
            found["error"] = exc.strerror or str(exc)
            return found
        found["ok"] = True
        if len(head) == SIF_HEADER_BYTES and head[32:42] == SIF_MAGIC:
            offset, length = struct.unpack_from("<qq", head, SIF_DATA_FIELDS)
            if offset + length > info.st_size:
                found["ok"] = False
                found["error"] = f"truncated SIF image ({info.st_size} bytes, its header says {offset + length})"
    return found


def main(argv):
    for arg in argv:
        kind, _, path = arg.partition(":")
        sys.stdout.write(json.dumps(look(kind, path)) + "\n")
        sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
