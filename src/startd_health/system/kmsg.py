"""Reading the kernel log since a saved position: /dev/kmsg, or any file in its format.

The format (the kernel's Documentation/ABI/testing/dev-kmsg): every record is
one line ``prio,seq,usec,flags[,...];message`` followed by zero or more
continuation lines that start with a space, ``" KEY=VALUE"`` (the record's
dictionary: SUBSYSTEM=, DEVICE=). prio is the syslog priority, facility
included (facility 0 = the kernel itself, anything else was written into
/dev/kmsg by user space); seq is the record's sequence number, contiguous and
increasing within one boot; usec is the kernel's clock (local_clock, since
boot) when it was logged. Bytes that are not printable are escaped as \\xNN.

/dev/kmsg hands out one record per read() and remembers each reader's own
position: a fresh open starts at the oldest record still in the ring buffer.
It cannot seek to a sequence number, so a reader re-reads the buffer and skips
what its Cursor says it has seen (a header split, no message parsing: about a
microsecond a record). Reads are non-blocking: EAGAIN is the end of the log;
EPIPE means the records at our position were overwritten before we got to them
(the ring wrapped), and the next read goes on at the oldest record left; the
gap in sequence numbers is how many we missed.

The file is only ever opened read-only: nothing here writes into the kernel's log.

A Cursor is (boot id, last sequence number handled, the log's path): a
different boot id (/proc/sys/kernel/random/boot_id changes at every boot, and
the sequence numbers start again), or another log, is a fresh start, where
only records younger than the look-back (judged against usec and
/proc/uptime) are handed out.
"""

from __future__ import annotations

import errno
import os
import re
import stat
import time
from dataclasses import dataclass
from typing import Any, Callable, Dict, Iterable, Iterator, List, NamedTuple, Optional, Tuple

from startd_health.system import procfs

DEFAULT_LOG = "/dev/kmsg"
BOOT_ID_FILE = "proc/sys/kernel/random/boot_id"
UPTIME_FILE = "proc/uptime"
DMESG_RESTRICT_FILE = "proc/sys/kernel/dmesg_restrict"
# One read() of /dev/kmsg returns one whole record or fails with EINVAL when the
# buffer is too small; the kernel's largest is CONSOLE_EXT_LOG_MAX (8 KiB).
RECORD_BUFFER = 16384
FILE_CHUNK = 1 << 20
MAX_LINE_BYTES = 1 << 20
KERNEL_FACILITY = 0

_ESCAPE = re.compile(r"\\x([0-9a-fA-F]{2})")


class Record(NamedTuple):
    """One kernel log record (a NamedTuple: 100 000 of them are made per benchmark run)."""

    seq: int
    usec: int
    prio: int                              # syslog priority: facility << 3 | level
    message: str
    fields: Tuple[Tuple[str, str], ...]    # the dictionary (continuation lines)

    @property
    def facility(self) -> int:
        return self.prio >> 3

    @property
    def level(self) -> int:
        return self.prio & 7


def unescape(text: str) -> str:
    """The kernel writes bytes < 0x20, >= 0x7f and backslash as \\xNN (UTF-8 text byte by byte)."""
    if "\\x" not in text:
        return text
    pieces = _ESCAPE.split(text)     # literal, hex, literal, hex, ..., literal
    raw = bytearray()
    for index, piece in enumerate(pieces):
        raw += bytes([int(piece, 16)]) if index % 2 else piece.encode("utf-8", "surrogateescape")
    return raw.decode("utf-8", "replace")


@dataclass(frozen=True)
class Cursor:
    boot_id: str
    seq: int          # the last record handled; -1 none
    log: str          # the log it belongs to

    def to_json(self) -> Dict[str, Any]:
        return {"boot_id": self.boot_id, "seq": self.seq, "log": self.log}

    @classmethod
    def from_json(cls, data: Any) -> Optional["Cursor"]:
        try:
            return cls(str(data["boot_id"]), int(data["seq"]), str(data["log"]))
        except (KeyError, TypeError, ValueError):
            return None


def boot_id(root: str = "/") -> str:
    """This boot's id ('' when it cannot be read: then only the log path keys the cursor)."""
    text = procfs.read_text(root, BOOT_ID_FILE)
    return text.strip() if text else ""


def uptime(root: str = "/") -> Optional[float]:
    text = procfs.read_text(root, UPTIME_FILE)
    try:
        return float(text.split()[0]) if text else None
    except (IndexError, ValueError):
        return None


def dmesg_restricted(root: str = "/") -> Optional[bool]:
    text = procfs.read_text(root, DMESG_RESTRICT_FILE)
    return text.strip() != "0" if text and text.strip() else None


@dataclass
class ReadStats:
    """What one read found besides the records (filled in as the reader goes)."""

    cursor: Cursor
    fresh: bool = False          # no usable cursor: the look-back applied
    fresh_why: str = ""          # first run, another boot, another log
    lines: int = 0               # new records handed out or skipped as too old
    too_old: int = 0             # ... of them, older than the look-back (fresh start only)
    malformed: int = 0           # lines that are no record
    missed: int = 0              # records overwritten before we read them (sequence gaps, /dev/kmsg)
    overwritten_reads: int = 0   # reads that failed with EPIPE
    capped: bool = False         # stopped at max_lines or the deadline: more remain for the next read
    error: str = ""              # a read error that ended the read early


class KmsgReader:
    """Iterate over the records after ``cursor`` in the log at ``path``.

    Open it with ``open()`` (raises OSError: the caller says what to do);
    iterate ``records()``; then ``stats`` holds the new cursor and what was
    missed. ``now_uptime`` is the kernel's uptime in seconds (None: unknown,
    then the look-back cannot be judged and every record counts as new).
    """

    def __init__(self, path: str, cursor: Optional[Cursor], current_boot: str, now_uptime: Optional[float],
                 lookback_seconds: float, max_lines: int, deadline: float) -> None:
        self.path = path
        self.max_lines = max_lines
        self.deadline = deadline          # time.monotonic() value
        self._fd = -1
        self._device = False
        fresh_why = ""
        if cursor is None:
            fresh_why = "no saved position"
        elif cursor.log != path:
            fresh_why = f"the log was {cursor.log}"
        elif cursor.boot_id != current_boot:
            fresh_why = "the machine rebooted"
        start = cursor if not fresh_why and cursor is not None else Cursor(current_boot, -1, path)
        self.stats = ReadStats(start, fresh=bool(fresh_why), fresh_why=fresh_why)
        # usec below this is older than the look-back (fresh start only)
        self._oldest_usec = -1
        if fresh_why and now_uptime is not None:
            self._oldest_usec = int((now_uptime - lookback_seconds) * 1e6)

    def open(self) -> None:
        # O_RDONLY: never write into the kernel's log. O_NONBLOCK: the end of
        # /dev/kmsg is EAGAIN, not a wait for the next message.
        self._fd = os.open(self.path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
        self._device = stat.S_ISCHR(os.fstat(self._fd).st_mode)

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def __enter__(self) -> "KmsgReader":
        self.open()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def _lines(self) -> Iterator[str]:
        if self._device:
            return device_lines(lambda: os.read(self._fd, RECORD_BUFFER), self.stats)
        return file_lines(lambda: os.read(self._fd, FILE_CHUNK), self.stats)

    def records(self, lines: Optional[Iterable[str]] = None) -> Iterator[Record]:
        """The new records, oldest first; stops at the end of the log, at
        max_lines new records, or at the deadline (then stats.capped).
        lines: the log's lines from elsewhere than the open file (tests).

        The loop is the probe's hot path (100 000 lines in under 0.5 s,
        benchmarks/kmsg_cost.py): counters are locals, written back at the end."""
        stats = self.stats
        after = stats.cursor.seq
        expected = after + 1 if after >= 0 else -1
        count_gaps = self._device    # a file may hold a filtered excerpt: gaps there mean nothing
        oldest, max_lines = self._oldest_usec, self.max_lines
        # the record being assembled (its dictionary lines may follow)
        p_seq = p_usec = p_prio = -1
        p_message = ""
        p_fields: Optional[List[Tuple[str, str]]] = None
        last_seq = after
        count = too_old = malformed = missed = 0
        check_every = 1024
        try:
            for line in self._lines() if lines is None else lines:
                if line[:1] == " ":
                    if p_seq >= 0:
                        key, sep, value = line[1:].partition("=")
                        if sep:
                            if p_fields is None:
                                p_fields = []
                            p_fields.append((key, value))
                    continue
                if p_seq >= 0:
                    yield Record(p_seq, p_usec, p_prio, p_message, tuple(p_fields) if p_fields else ())
                    p_seq, p_fields = -1, None
                head, sep, message = line.partition(";")
                if not sep:
                    if line:
                        malformed += 1
                    continue
                parts = head.split(",", 4)
                try:
                    seq = int(parts[1])
                    if seq <= after:
                        continue           # seen by an earlier read
                    prio, usec = int(parts[0]), int(parts[2])
                except (IndexError, ValueError):
                    malformed += 1
                    continue
                if count >= max_lines:
                    stats.capped = True    # this record is the next read's first
                    break
                check_every -= 1
                if not check_every:
                    check_every = 1024
                    if time.monotonic() > self.deadline:
                        stats.capped = True
                        break
                if count_gaps and expected >= 0 and seq > expected:
                    missed += seq - expected
                expected = last_seq = seq
                expected += 1
                count += 1
                if usec < oldest:
                    too_old += 1
                else:
                    p_seq, p_usec, p_prio = seq, usec, prio
                    p_message = unescape(message) if "\\x" in message else message
            if p_seq >= 0:
                yield Record(p_seq, p_usec, p_prio, p_message, tuple(p_fields) if p_fields else ())
        finally:
            stats.lines += count
            stats.too_old += too_old
            stats.malformed += malformed
            stats.missed += missed
            stats.cursor = Cursor(stats.cursor.boot_id, last_seq, stats.cursor.log)


def device_lines(read: Callable[[], bytes], stats: ReadStats) -> Iterator[str]:
    """The lines of /dev/kmsg's records, one read() per record, until EAGAIN.
    ``read`` is os.read on the open device (a scripted one in the tests: EPIPE
    cannot be provoked without flooding the host's log)."""
    while True:
        try:
            data = read()
        except BlockingIOError:       # EAGAIN: we are at the end
            return
        except BrokenPipeError:       # EPIPE: overwritten under us; the next read goes on
            stats.overwritten_reads += 1
            continue
        except InterruptedError:
            continue
        except OSError as exc:
            stats.error = f"read failed: {exc.strerror or exc}"
            return
        if not data:
            return
        yield from data.decode("utf-8", "replace").rstrip("\n").split("\n")


def file_lines(read: Callable[[], bytes], stats: ReadStats) -> Iterator[str]:
    """The lines of a regular file, read in big chunks (decoded whole lines at a time)."""
    rest = b""
    while True:
        try:
            chunk = read()
        except InterruptedError:
            continue
        except OSError as exc:
            stats.error = f"read failed: {exc.strerror or exc}"
            return
        if not chunk:
            break
        rest += chunk
        cut = rest.rfind(b"\n")
        if cut < 0:
            if len(rest) > MAX_LINE_BYTES:   # no record is this long: not a kmsg file, do not hoard it
                stats.malformed += 1
                rest = b""
            continue
        text, rest = rest[:cut].decode("utf-8", "replace"), rest[cut + 1:]
        yield from text.split("\n")
    if rest:
        yield rest.decode("utf-8", "replace")


def open_error_hint(exc: OSError, path: str, root: str = "/") -> str:
    """Why the log cannot be read, and what to do, in one line."""
    if exc.errno in (errno.EPERM, errno.EACCES):
        restricted = dmesg_restricted(root)
        why = ("kernel.dmesg_restrict = 1 keeps the kernel log from accounts without CAP_SYSLOG"
               if restricted and path == DEFAULT_LOG else "permission denied")
        return (f"cannot read {path} as uid {os.getuid()}: {why}; run the probe as root, set "
                f"kernel.dmesg_restrict = 0 (sysctl), or point STARTD_HEALTH_KERNEL_LOG at a readable "
                f"log in kmsg format")
    if exc.errno == errno.ENOENT:
        return f"no {path} here (a container without the kernel log?); point STARTD_HEALTH_KERNEL_LOG at one"
    return f"cannot read {path}: {exc.strerror or exc}"


def boot_epoch(now: float, now_uptime: Optional[float]) -> float:
    """Epoch seconds of the kernel's clock zero (usec 0); ``now`` when uptime is unknown.
    local_clock() does not advance in suspend while /proc/uptime does: after a
    suspend, events look older than they are (servers do not suspend)."""
    return now - now_uptime if now_uptime is not None else now
