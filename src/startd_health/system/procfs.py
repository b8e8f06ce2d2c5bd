"""Reading the kernel's /proc (and /sys, /dev, /etc) safely, from a root.

Every path is taken relative to a ``root``: "/" on a node, a recorded tree
in tests (the one fixture seam; probes pass their context's ``root``). Only
files that take no lock a process stuck on a hung mount may hold are read
here: /proc/<pid>/stat, never /proc/<pid>/cmdline of a stuck process's
memory or maps.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from typing import Dict, List, Optional, Tuple


def path(root: str, relative: str) -> str:
    """``relative`` ("proc/self/mounts" or "/proc/self/mounts") under root."""
    return os.path.join(root, relative.lstrip("/"))


def read_text(root: str, relative: str) -> Optional[str]:
    """The file's text; None when it cannot be read."""
    try:
        with open(path(root, relative), encoding="utf-8", errors="surrogateescape") as handle:
            return handle.read()
    except OSError:
        return None


def unescape_mount_field(text: str) -> str:
    """The kernel writes blanks, tabs, newlines and backslashes in mount
    fields (/proc/*/mounts, /proc/*/mountinfo) as \\NNN octal."""
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), text)


@dataclass(frozen=True)
class Mount:
    """One line of /proc/<pid>/mounts."""

    source: str    # e.g. cvmfs2
    point: str
    fstype: str    # e.g. fuse


def parse_mounts(text: str) -> Dict[str, Mount]:
    """Mount point -> mount; of mounts stacked on one point, the last (visible) one."""
    mounts: Dict[str, Mount] = {}
    for line in text.splitlines():
        fields = line.split()
        if len(fields) >= 3:
            source, point, fstype = (unescape_mount_field(f) for f in fields[:3])
            mounts[point] = Mount(source, point, fstype)
    return mounts


def read_mounts(root: str = "/", relative: str = "proc/self/mounts") -> Tuple[Optional[Dict[str, Mount]], str]:
    """(mount point -> mount, '') or (None, why the table could not be read).
    What is mounted where is read here, never found by stat()ing mount
    points: a hung one would block us."""
    where = path(root, relative)
    try:
        with open(where, encoding="utf-8", errors="surrogateescape") as handle:
            return parse_mounts(handle.read()), ""
    except OSError as exc:
        return None, f"cannot read {where}: {exc.strerror}"


@dataclass(frozen=True)
class MountInfo:
    """One line of /proc/<pid>/mountinfo."""

    root: str             # the mounted filesystem's directory shown here
    mountpoint: str
    read_only: bool       # per-mount option ro
    fstype: str
    super_options: Tuple[str, ...]


def parse_mountinfo(text: str) -> List[MountInfo]:
    """Every well-formed line of a mountinfo file (see proc(5))."""
    found = []
    for line in text.splitlines():
        fields = line.split()
        if "-" not in fields:
            continue
        sep = fields.index("-")
        if sep < 6 or len(fields) < sep + 3:
            continue
        found.append(MountInfo(
            root=unescape_mount_field(fields[3]),
            mountpoint=unescape_mount_field(fields[4]),
            read_only="ro" in fields[5].split(","),
            fstype=fields[sep + 1],
            super_options=tuple(fields[sep + 3].split(",")) if len(fields) > sep + 3 else (),
        ))
    return found


@dataclass(frozen=True)
class ProcessStat:
    """The few fields of /proc/<pid>/stat we use."""

    pid: int
    state: str          # R, S, D, Z, X, ...
    ppid: int
    start_ticks: int    # field 22: tells the same process from a later one with a reused pid
    pgrp: int = 0       # field 5: process group
    session: int = 0    # field 6: session

    @property
    def alive(self) -> bool:
        return self.state not in ("Z", "X")


def parse_stat(text: str) -> Optional[ProcessStat]:
    """/proc/<pid>/stat text -> ProcessStat; None if malformed. The command
    name (field 2) may hold blanks and parentheses: split after the last ')'."""
    try:
        head, tail = text.rsplit(")", 1)
        fields = tail.split()
        return ProcessStat(int(head.split("(", 1)[0]), fields[0], int(fields[1]), int(fields[19]),
                           int(fields[2]), int(fields[3]))
    except (ValueError, IndexError):
        return None


def read_stat(pid: int, root: str = "/") -> Optional[ProcessStat]:
    """A process's stat; None when it has gone (or never was)."""
    text = read_text(root, f"proc/{pid}/stat")
    return parse_stat(text) if text is not None else None


def start_ticks(pid: int, root: str = "/") -> Optional[int]:
    """Start time of a live process; None when it is gone or a zombie."""
    stat = read_stat(pid, root)
    return stat.start_ticks if stat is not None and stat.alive else None


def cmdline_contains(pid: int, marker: str, root: str = "/") -> bool:
    """True when the live process pid has ``marker`` in its command line
    (tells our own test processes from unrelated ones with a reused pid).
    Only for processes of ours that are not stuck on a mount."""
    stat = read_stat(pid, root)
    if stat is None or not stat.alive:
        return False
    try:
        with open(path(root, f"proc/{pid}/cmdline"), "rb") as handle:
            return marker.encode() in handle.read()
    except OSError:
        return False
