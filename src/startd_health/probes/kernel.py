"""Kernel events probe: what the kernel has already said about the node.

Many black-hole causes are in the kernel log before any job fails: a
filesystem remounted read-only, EXT4/XFS/Btrfs errors, block-device I/O
errors, OOM kills, hung tasks, machine checks, NVIDIA Xid errors. The probe
reads the log since its last position (system/kmsg.py: /dev/kmsg, or
STARTD_HEALTH_KERNEL_LOG, any file in kmsg's format), classifies each kernel
message with a rule set, and judges the events it remembers with time
windows.

Rules are data: one per line, ``CLASS JUDGEMENT REGEX`` (BUILTIN_RULES below,
documented in the README; STARTD_HEALTH_KERNEL_RULES adds a file of the same
form, whose rules are tried first). The first rule whose regex matches a
message (re.search) classifies it. Judgements:

- count     counted only (an OOM kill is a job's problem, not the node's);
- degrade   degrades the node for STARTD_HEALTH_KERNEL_WINDOW after the message;
- fail      fails it for that window;
- readonly  fails it while the filesystem the message names (regex group
            ``device``, or ``mount``) is mounted read-only (/proc/self/mounts);
            when it cannot be found there, for the window;
- xid       an NVIDIA Xid (groups ``code``, ``pci``): a code in
            STARTD_HEALTH_KERNEL_XID_FATAL fails the node for the window
            naming the GPU; other codes are counted.

A reboot (a new boot id) ends every window: the kernel's state starts again.
Only kernel messages (facility 0) are classified: user space may write into
/dev/kmsg too.

What is remembered (the probe's scratch directory, one file written
atomically, so a crash never keeps a cursor without its events): the cursor,
the count per class (the Prometheus counters: monotonic while the state
directory lives), the last message per class, and the events still inside
their window.

Gather: the reader (the only code that touches the log), the boot id and
uptime, the mount table. Judge (pure): remembered events, mounts, time -> a result.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import re
import time
from dataclasses import dataclass, replace
from typing import Any, Dict, List, Optional, Sequence, Tuple

from startd_health.core.config import Count, Knob, Seconds, parse_list, parse_seconds
from startd_health.core.model import Measurement, Probe, ProbeContext, ProbeResult, Status
from startd_health.system import kmsg, procfs
from startd_health.system.kernel_events import STATE_FILE, Event, State, load_state
from startd_health.system.stuck import iso

log = logging.getLogger(__name__)

MOUNTS_FILE = "proc/self/mounts"
MAX_MESSAGE_CHARS = 160      # one message in a reason or attribute
MAX_ACTIVE_EVENTS = 64       # events kept inside their window (newest win)
JUDGEMENTS = ("count", "degrade", "fail", "readonly", "xid")
_CLASS_NAME = re.compile(r"^[a-z][a-z0-9_]{0,39}$")

# NVIDIA's Xid catalogue: the codes after which the GPU needs a reset or the
# node a reboot (48 double-bit ECC, 61/62 internal micro-controller halt, 64
# ECC page-retirement/row-remapping failure, 74 NVLink error, 79 fallen off the
# bus, 95 uncontained ECC error, 119/120 GSP timeout/error, 140 unrecovered ECC,
# 154 recovery action required). Others (13, 31, 43, 45: a job's fault) are counted.
DEFAULT_XID_FATAL = (48, 61, 62, 64, 74, 79, 95, 119, 120, 140, 154)

# The built-in rule set, in the rules file's format. Device groups take the
# kernel's own names (sda1, dm-0, nvme0n1p2). The first match wins, so the
# more specific rule of a class comes first.
BUILTIN_RULES = r"""
# class           judgement  regex (Python re, searched in the message)
read_only_remount readonly   (?:EXT[234]-fs|FAT-fs) \((?P<device>[^)\s]+)\): (?:error: )?(?:Remounting filesystem read-only|Filesystem has been set read-only)
read_only_remount readonly   BTRFS \w+ \(device (?P<device>[^):\s]+)[^)]*\): forced readonly
fs_error          fail       XFS \((?P<device>[^)\s]+)\): (?:.*Shutting down filesystem|Filesystem has been shut down)
fs_error          degrade    EXT[234]-fs error \(device (?P<device>[^)\s]+)\)
fs_error          degrade    EXT[234]-fs \((?P<device>[^)\s]+)\): (?:error count since last fsck|I/O error while writing superblock|previous I/O error to superblock detected|.*Detected aborted journal)
fs_error          degrade    Aborting journal on device (?P<device>[^\s:]+?)(?:[-:]\d+)?\.?$
fs_error          degrade    XFS \((?P<device>[^)\s]+)\): (?:Corruption|Metadata corruption|Metadata CRC error|metadata I/O error|log I/O error|writeback error|Internal error)
fs_error          degrade    BTRFS:? (?:error|critical) \(device (?P<device>[^):\s]+)
io_error          degrade    (?:I/O|critical medium|critical target|critical nexus) error, dev (?P<device>[^,\s]+), sector
io_error          degrade    Buffer I/O error on dev(?:ice)? (?P<device>[^,\s]+)
oom_kill          count      (?:Out of memory|Memory cgroup out of memory): Killed process \d+
oom_kill          count      ^Killed process \d+ \(
hung_task         degrade    INFO: task .+:\d+ blocked for more than \d+ seconds
mce               fail       \[Hardware Error\]: CPU \d+: Machine Check Exception
mce               fail       mce: Uncorrected hardware memory error
mce               fail       EDAC MC\d+: \d+ UE
mce               count      \[Hardware Error\]: Machine check events logged
mce               count      EDAC MC\d+: \d+ CE
gpu_xid           xid        NVRM: Xid \(PCI:(?P<pci>[0-9a-fA-F:.]+)\): (?P<code>\d+)
gpu_xid           fail       NVRM: GPU (?:at PCI:)?(?P<pci>[0-9a-fA-F]{4}:[0-9a-fA-F:.]+?):? (?:GPU )?has fallen off the bus
"""

RULES_FORMAT = "expected `CLASS JUDGEMENT REGEX` (class: lower-case letters, digits, _; judgement: " + \
    ", ".join(JUDGEMENTS) + ")"


# ---------------------------------------------------------------- rules (data)

@dataclass(frozen=True)
class Rule:
    cls: str
    judgement: str
    pattern: str
    origin: str        # "built-in" or "<file> line <n>"


def parse_rules(text: str, origin: str) -> Tuple[Rule, ...]:
    """Rules in the file format; ValueError naming the line and what to do."""
    rules = []
    for number, line in enumerate(text.splitlines(), 1):
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        where = f"{origin} line {number}"
        parts = stripped.split(None, 2)
        if len(parts) < 3:
            raise ValueError(f"{where}: {stripped[:60]!r}: {RULES_FORMAT}")
        cls, judgement, pattern = parts
        if not _CLASS_NAME.match(cls):
            raise ValueError(f"{where}: class {cls!r} is not a name: {RULES_FORMAT}")
        if judgement not in JUDGEMENTS:
            raise ValueError(f"{where}: judgement {judgement!r} is not one of {', '.join(JUDGEMENTS)}")
        try:
            compiled = re.compile(pattern)
        except re.error as exc:
            raise ValueError(f"{where}: not a regular expression ({exc}); fix the regex "
                             f"(Python re syntax, searched in each message)") from None
        if judgement == "xid" and "code" not in compiled.groupindex:
            raise ValueError(f"{where}: an xid rule needs a (?P<code>...) group for the Xid number")
        rules.append(Rule(cls, judgement, pattern, where))
    return tuple(rules)


@functools.lru_cache(maxsize=None)
def builtin_rules() -> Tuple[Rule, ...]:
    """Parsed (and checked) when first used, not at import: every command
    imports every probe module, and compiling the rules costs milliseconds."""
    return parse_rules(BUILTIN_RULES, "built-in rules")


def builtin_classes() -> Tuple[str, ...]:
    return tuple(dict.fromkeys(r.cls for r in builtin_rules()))


def parse_rules_file(text: str) -> Tuple[str, Tuple[Tuple[str, str, str, str], ...]]:
    """STARTD_HEALTH_KERNEL_RULES: a file path -> (path, its rules as plain
    tuples: settings are JSON, and their digest makes an edited file re-run
    the probe)."""
    path = text.strip()
    if not os.path.isabs(path):
        raise ValueError("expected an absolute path to a rules file")
    try:
        with open(path, encoding="utf-8", errors="replace") as handle:
            content = handle.read(1 << 20)
    except OSError as exc:
        raise ValueError(f"cannot read {path}: {exc.strerror or exc}") from None
    rules = parse_rules(content, path)
    return path, tuple((r.cls, r.judgement, r.pattern, r.origin) for r in rules)


def format_rules_file(value: Any) -> str:
    return value[0] if value else ""


def parse_xid_codes(text: str) -> Tuple[int, ...]:
    codes = []
    for item in parse_list(text):
        if not item.isdigit() or not 0 < int(item) < 1000:
            raise ValueError(f"{item!r} is not an Xid number (e.g. 79)")
        codes.append(int(item))
    return tuple(sorted(set(codes)))


def format_codes(value: Any) -> str:
    return ", ".join(str(v) for v in value)


class RuleSet:
    """Compiled rules. Nearly every kernel message matches none, so a miss
    must be cheap (100 000 lines in under 0.5 s): every rule's regex requires
    one of a few literal strings (worked out from the parsed regex: "NVRM: Xid
    (PCI:", "Remounting filesystem read-only"...), and one search for any of
    them (a regex of plain literals, which re scans fast: 0.4 us a message
    against 2 us for the rules' own alternation) rules most messages out.
    Only on a hit are the rules tried one by one. A rule whose literals
    cannot be worked out (case-insensitive, or no literal at all) turns the
    shortcut off: correctness first."""

    def __init__(self, rules: Sequence[Rule]) -> None:
        self.rules = tuple(rules)
        self.compiled = [(r, re.compile(r.pattern)) for r in self.rules]
        self.classes = tuple(dict.fromkeys(r.cls for r in self.rules))
        literals: List[str] = []
        for _, regex in self.compiled:
            found = required_literals(regex)
            if not found:
                literals = []
                break
            literals += found
        self.any = re.compile("|".join(re.escape(x) for x in sorted(set(literals)))) if literals else None

    def match(self, message: str) -> Optional[Tuple[Rule, Dict[str, str]]]:
        if self.any is not None and self.any.search(message) is None:
            return None
        for rule, regex in self.compiled:
            found = regex.search(message)
            if found:
                return rule, {k: v for k, v in found.groupdict().items() if v is not None}
        return None


def _regex_parser() -> Tuple[Any, Any]:
    """The re module's own pattern parser (re._parser since 3.11, sre_parse before)."""
    try:
        from re import _constants as constants, _parser as parser   # type: ignore[attr-defined]
    except ImportError:     # Python < 3.11
        import sre_constants as constants  # type: ignore[no-redef]
        import sre_parse as parser  # type: ignore[no-redef]
    return parser, constants


def required_literals(regex: "re.Pattern[str]") -> List[str]:
    """Strings one of which every match of regex contains ([] when that
    cannot be said: the caller then searches with the regex itself)."""
    if regex.flags & re.IGNORECASE:
        return []
    try:
        parser, constants = _regex_parser()
        return _required(parser.parse(regex.pattern), constants) or []
    except Exception:   # a parser of another Python version: no shortcut, never a wrong answer
        return []


def _scan_start(literal: str) -> str:
    """The part of a required literal to search for (any part of it is
    required too): from its first letter or digit. re skips ahead to where a
    literal's first character occurs, and blanks and punctuation occur everywhere."""
    for index, char in enumerate(literal):
        if char.isalnum():
            return literal[index:]
    return literal


def _rarity(alternatives: List[str]) -> Tuple[bool, int]:
    """Which required literals to search for: ones with capitals (kernel
    subsystems: BTRFS, EXT4-fs, NVRM) are rarer than any lower-case word, then the longest."""
    return all(any(ch.isupper() for ch in x) for x in alternatives), min(len(x) for x in alternatives)


def _required(items: Any, c: Any) -> Optional[List[str]]:
    """Of a sequence of parsed items, the required alternatives with the
    longest shortest literal; None when nothing is known to be required."""
    candidates: List[List[str]] = []
    run: List[str] = []
    for op, arg in items:
        if op is c.LITERAL:
            run.append(chr(arg))
            continue
        if run:
            candidates.append(["".join(run)])
            run = []
        found: Optional[List[str]] = None
        if op is c.SUBPATTERN:
            group, add_flags, _, sub = arg
            found = None if add_flags & c.SRE_FLAG_IGNORECASE else _required(sub, c)
        elif op is c.BRANCH:
            branches = [_required(branch, c) for branch in arg[1]]
            found = None if any(b is None for b in branches) else [x for b in branches for x in (b or [])]
        if found:
            candidates.append(found)
    if run:
        candidates.append(["".join(run)])
    candidates = [[_scan_start(x) for x in alts] for alts in candidates]
    candidates = [alts for alts in candidates if alts and min(len(x) for x in alts) >= 3]
    return max(candidates, key=_rarity) if candidates else None


def rule_set(admin: Any) -> RuleSet:
    extra = tuple(Rule(*item) for item in admin[1]) if admin else ()
    return RuleSet(extra + builtin_rules())


# ---------------------------------------------------------------- events and state

def classify(record: kmsg.Record, rules: RuleSet, epoch_zero: float, xid_fatal: Sequence[int]) -> Optional[Event]:
    if record.prio >> 3 != kmsg.KERNEL_FACILITY:   # (record.facility, without a call: the hot path)
        return None
    found = rules.match(record.message)
    if found is None:
        return None
    rule, groups = found
    judgement, code = rule.judgement, -1
    if judgement == "xid":
        code = int(groups.get("code", "-1")) if groups.get("code", "").isdigit() else -1
        judgement = "fail" if code in xid_fatal else "count"
    return Event(rule.cls, judgement, epoch_zero + record.usec / 1e6, record.message[:1024],
                 groups.get("device") or groups.get("mount") or "", pci_device(groups.get("pci", "")), code)


def pci_device(address: str) -> str:
    """An Xid names the GPU as domain:bus:device (0000:3b:00), other NVRM lines
    add the function (0000:3b:00.0): one spelling, the Xid's."""
    return re.sub(r"\.[0-7]$", "", address.lower())


def save_state(ctx: ProbeContext, state: State) -> None:
    if ctx.scratch_dir() is None:    # no state directory: every run is a fresh start (the look-back)
        return
    try:
        ctx.write_scratch(STATE_FILE, json.dumps(state.to_json(), sort_keys=True).encode())
    except OSError as exc:
        log.warning("cannot keep the kernel log position: %s", exc)


def updated(state: State, events: Sequence[Event], cursor: kmsg.Cursor, rebooted: bool) -> State:
    """The state after this read: counts and last messages grow; a reboot
    drops the windows of the earlier boot (its read-only mounts, its GPUs)."""
    counts = dict(state.counts)
    last = dict(state.last)
    active = [] if rebooted else list(state.active)
    for event in events:
        counts[event.cls] = counts.get(event.cls, 0) + 1
        last[event.cls] = event
        if event.judgement != "count":
            active.append(event)
    return State(cursor, counts, last, active)


# ---------------------------------------------------------------- mounts

@dataclass(frozen=True)
class MountState:
    point: str
    source: str
    read_only: bool


def parse_mount_states(text: str) -> List[MountState]:
    found = []
    for line in text.splitlines():
        fields = line.split()
        if len(fields) >= 4:
            options = fields[3].split(",")
            found.append(MountState(procfs.unescape_mount_field(fields[1]), procfs.unescape_mount_field(fields[0]),
                                    "ro" in options))
    return found


def device_names(source: str, root: str) -> Tuple[str, ...]:
    """The kernel's names for a mount's source: /dev/sda1 -> sda1;
    /dev/mapper/vg-root -> vg-root and dm-0 (its link's target). Only /dev
    is resolved, never a mount point (which could hang)."""
    if not source.startswith("/dev/"):
        return ()
    names = [os.path.basename(source)]
    try:
        target = os.readlink(procfs.path(root, source))
        names.append(os.path.basename(target))
    except OSError:
        pass
    return tuple(names)


def mounts_of(device: str, mounts: Sequence[MountState], root: str) -> List[MountState]:
    """The mounts of the filesystem a message names (a kernel device name or a mount point)."""
    if device.startswith("/"):
        return [m for m in mounts if m.point == device]
    return [m for m in mounts if device in device_names(m.source, root)]


# ---------------------------------------------------------------- judge (pure)

def quoted(message: str) -> str:
    text = message if len(message) <= MAX_MESSAGE_CHARS else message[: MAX_MESSAGE_CHARS - 3] + "..."
    return '"' + text + '"'


def duration(seconds: float) -> str:
    if seconds >= 3600 and seconds % 3600 == 0:
        return f"{seconds / 3600:g} h"
    if seconds >= 60 and seconds % 60 == 0:
        return f"{seconds / 60:g} min"
    return f"{seconds:g} s"


@dataclass(frozen=True)
class Problem:
    event: Event
    status: Status
    detail: str        # what it is now, e.g. "/data (sdb1) is still read-only"


def still_active(event: Event, mounts: Optional[Sequence[MountState]], root: str, now: float,
                 window: float) -> Optional[Problem]:
    """The problem an event still is; None when it is over."""
    in_window = now - event.at < window
    if event.judgement == "readonly":
        mapped = mounts_of(event.device, mounts, root) if mounts is not None and event.device else []
        if mapped:
            read_only = [m for m in mapped if m.read_only]
            if not read_only:
                return None          # writable again (remounted, or repaired and mounted anew)
            points = ", ".join(sorted({m.point for m in read_only}))
            return Problem(event, Status.FAILED, f"{points} ({event.device}) is still read-only")
        if not in_window:
            return None
        where = f"{event.device}: not in the mount table, " if event.device else ""
        return Problem(event, Status.FAILED, f"{where}read-only remount within {duration(window)}")
    if not in_window:
        return None
    if event.judgement == "fail":
        what = f"GPU {event.pci} Xid {event.code}" if event.code >= 0 else \
            f"GPU {event.pci}" if event.pci else event.device
        return Problem(event, Status.FAILED, what)
    if event.judgement == "degrade":
        return Problem(event, Status.DEGRADED, event.device)
    return None


def problems_of(state: State, mounts: Optional[Sequence[MountState]], root: str, now: float,
                window: float) -> List[Problem]:
    return [p for p in (still_active(e, mounts, root, now, window) for e in state.active) if p is not None]


def kept_active(problems: Sequence[Problem]) -> List[Event]:
    """What to remember: the events still active, newest MAX_ACTIVE_EVENTS."""
    events = sorted((p.event for p in problems), key=lambda e: e.at)
    return events[-MAX_ACTIVE_EVENTS:]


@dataclass(frozen=True)
class ReadSummary:
    """What the read found, for the reason and facts."""

    lines: int = 0
    missed: int = 0
    overwritten_reads: int = 0
    capped: bool = False
    fresh_why: str = ""
    lookback: float = 0.0
    too_old: int = 0        # of the lines, older than the look-back (fresh start)
    error: str = ""


def judge(state: State, problems: Sequence[Problem], classes: Sequence[str], read: ReadSummary,
          window: float) -> ProbeResult:
    status = Status.OK
    if any(p.status is Status.FAILED for p in problems):
        status = Status.FAILED
    elif problems:
        status = Status.DEGRADED
    # the reason: each class's problems, the most severe and newest first
    parts: List[str] = []
    by_class: Dict[str, List[Problem]] = {}
    for p in sorted(problems, key=lambda p: (p.status is not Status.FAILED, -p.event.at)):
        by_class.setdefault(p.event.cls, []).append(p)
    for cls, found in by_class.items():
        newest = found[0]
        detail = f" {newest.detail}" if newest.detail else ""
        more = f" (+{len(found) - 1} more)" if len(found) > 1 else ""
        parts.append(f"{cls}{detail} at {iso(newest.event.at)}: {quoted(newest.event.message)}{more}")
    notes = []
    if read.missed:
        notes.append(f"{read.missed} kernel messages were overwritten before they could be read")
    elif read.overwritten_reads:
        notes.append("the kernel log wrapped while it was read: messages may have been missed")
    if read.capped:
        notes.append(f"read stopped after {read.lines} messages (STARTD_HEALTH_KERNEL_MAX_LINES or the "
                     "budget); the rest next run")
    if read.error:
        notes.append(read.error)
    if parts:
        reason = "; ".join(parts + notes)
    else:
        counted = [f"{c} {state.counts[c]}" for c in classes if state.counts.get(c)]
        older = f", {read.too_old} older ones ignored" if read.too_old else ""
        since = f" (fresh start: {read.fresh_why}, looked back {duration(read.lookback)}{older})" \
            if read.fresh_why else ""
        reason = f"{read.lines} new kernel messages{since}, no problem within {duration(window)}"
        if counted:
            reason += "; counted: " + ", ".join(counted)
        if notes:
            reason += "; " + "; ".join(notes)
    facts: Dict[str, Any] = {
        "lines_read": read.lines,
        "messages_missed": read.missed,
        "filesystems_readonly": tuple(sorted({p.event.device for p in problems
                                              if p.event.judgement == "readonly" and p.event.device})),
        "gpus_failed": tuple(sorted({p.event.pci for p in problems
                                     if p.status is Status.FAILED and p.event.pci})),
    }
    found: List[Measurement] = []
    for cls in classes:
        found.append(Measurement("events", float(state.counts.get(cls, 0)), "total", {"class": cls}))
    for cls in classes:
        event = state.last.get(cls)
        if event is not None:
            facts[f"{cls}_last_message"] = event.message[:MAX_MESSAGE_CHARS]
            found.append(Measurement("last_event", event.at, "timestamp_seconds", {"class": cls}))
    return ProbeResult("kernel", status, reason, facts, tuple(found))


# ---------------------------------------------------------------- the probe

def parse_log(text: str) -> str:
    path = text.strip()
    if not os.path.isabs(path):
        raise ValueError("expected an absolute path (/dev/kmsg, or a file in its format)")
    return os.path.normpath(path)


class KernelProbe(Probe):
    name = "kernel"
    description = ("kernel log: read-only remounts, filesystem and I/O errors, OOM kills, hung tasks, "
                   "machine checks, NVIDIA Xid errors")
    default_period = 300.0
    default_timeout = 30.0
    knobs = (
        Knob("KERNEL_LOG", parse_log, kmsg.DEFAULT_LOG, "the kernel log to read: /dev/kmsg, or a file in its "
             "format (`prio,seq,usec,flags;message` lines)", "PATH"),
        Knob("KERNEL_LOOKBACK", parse_seconds, 3600.0, "on a fresh start (first run, after a reboot, another "
             "log) only messages younger than this count; 0: only messages from now on", "SECONDS"),
        Knob("KERNEL_WINDOW", Seconds(), 3600.0, "a degrading or failing kernel message counts for this long "
             "(a read-only remount: until the filesystem is writable again, when it is in the mount table)",
             "SECONDS"),
        Knob("KERNEL_MAX_LINES", Count(minimum=1000, maximum=10_000_000), 100_000, "at most this many new "
             "messages per run (the rest next run)", "COUNT"),
        Knob("KERNEL_RULES", parse_rules_file, (), "a file of extra rules, one `CLASS JUDGEMENT REGEX` per "
             "line (`#` comments), tried before the built-in ones", "FILE", format=format_rules_file,
             default_text="none (the built-in rules)"),
        Knob("KERNEL_XID_FATAL", parse_xid_codes, DEFAULT_XID_FATAL, "NVIDIA Xid codes that fail the node "
             "(naming the GPU's PCI address) for the window; other Xids are counted", "LIST",
             format=format_codes),
    )

    def run(self, ctx: ProbeContext) -> ProbeResult:
        settings = ctx.settings
        root = ctx.system_root
        rules = rule_set(settings["rules"])
        scratch = ctx.scratch_dir()
        state = load_state(scratch)
        now = time.time()
        boot = kmsg.boot_id(root)
        up = kmsg.uptime(root)
        window, lookback = settings["window"], settings["lookback"]
        reader = kmsg.KmsgReader(settings["log"], state.cursor, boot, up, lookback, settings["max_lines"],
                                 time.monotonic() + max(0.5, ctx.remaining() - 2.0))
        try:
            reader.open()
        except OSError as exc:
            return ProbeResult(self.name, Status.SKIPPED, kmsg.open_error_hint(exc, settings["log"], root))
        zero = kmsg.boot_epoch(now, up)
        xid_fatal = settings["xid_fatal"]
        events: List[Event] = []
        try:
            for record in reader.records():
                event = classify(record, rules, zero, xid_fatal)
                if event is not None:
                    # a log recorded elsewhere may run ahead of this clock: never a window in the future
                    events.append(event if event.at <= now else replace(event, at=now))
        finally:
            reader.close()
        stats = reader.stats
        rebooted = state.cursor is not None and bool(state.cursor.boot_id) and state.cursor.boot_id != boot
        new_state = updated(state, events, stats.cursor, rebooted)
        text = procfs.read_text(root, MOUNTS_FILE)
        mounts = parse_mount_states(text) if text is not None else None
        problems = problems_of(new_state, mounts, root, now, window)
        new_state.active = kept_active(problems)
        problems = [p for p in problems if p.event in new_state.active]
        save_state(ctx, new_state)
        read = ReadSummary(stats.lines, stats.missed, stats.overwritten_reads, stats.capped,
                           stats.fresh_why if stats.fresh else "", lookback, stats.too_old, stats.error)
        classes = tuple(dict.fromkeys(builtin_classes() + rules.classes))
        return judge(new_state, problems, classes, read, window)
