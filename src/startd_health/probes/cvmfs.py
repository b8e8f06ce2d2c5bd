"""CVMFS probe: is each configured repository mounted, readable, and free of
recent I/O errors?

Every access to a repository happens in a child process (a few lines of
Python started with -I -S, ~10 ms): a hung FUSE or autofs mount blocks
whoever touches it in uninterruptible sleep, which no signal ends, so the
one touching it must be a process we can abandon. Repositories are checked
in parallel, each with its own timeout, so that one hung repository does not
use up the others' time.

A child that could not be killed is remembered in the probe's scratch
directory (system/stuck.py: pid and kernel start time). While it lives, its
repository is reported as still hung and no new child is started: otherwise
every run would leave one more process stuck on the mount. The container
probe reads the same records (hung_repository) so as not to launch an image
into a repository known hung.

As on the OSPool, a repository that failed, or whose client reports an I/O
error (user.timestamp_last_ioerr) within the quarantine window, stays
unusable until the window has passed: a flapping repository would otherwise
attract jobs that then fail.

Gather (touches the system, only through ctx.run, the scratch directory
and the mount table under ctx.system_root): the children's findings, the mount
table. Judge (pure): those facts, the remembered failures and the time -> a
result.

The same check for inside a container image, where only /bin/sh and ls can
be assumed, is the cvmfs section of system/inside.py.
"""

from __future__ import annotations

import json
import logging
import os
import re
import sys
import threading
import time
from dataclasses import dataclass, field, replace
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

from startd_health.core.config import Knob, parse_absolute_path, parse_list, parse_positive_seconds, parse_seconds
from startd_health.core.model import Measurement, Probe, ProbeContext, ProbeResult, Status
from startd_health.system import procfs, stuck
from startd_health.system.procfs import Mount
from startd_health.system.procs import KILL_GRACE_SECONDS, REAP_WAIT_SECONDS, CommandResult, command_budget

log = logging.getLogger(__name__)

# Read (under ctx.system_root) to learn what is mounted where, never by stat()ing
# mount points: a hung one would block us.
MOUNTS_FILE = "proc/self/mounts"
DEFAULT_ROOT = "/cvmfs"
DEFAULT_QUARANTINE_SECONDS = 4 * 3600.0    # the OSPool pilot's window
QUARANTINE_FILE = "quarantine.json"

# Attributes a CVMFS client answers on a repository's top directory. Each
# is one cheap in-memory lookup in cvmfs2 (none downloads anything); any of
# them may be protected (CVMFS_XATTR_PROTECTED_XATTRS) or absent in older
# clients, and is then skipped.
XATTRS = ("revision", "nioerr", "timestamp_last_ioerr", "fqrn", "version", "pid", "expires", "usedfd",
          "maxfd", "speed", "hitrate", "proxy", "host", "uptime", "nclg")
MAX_XATTR_CHARS = 256

_REPO_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")

# Runs in the child. It prints "listed" as soon as the top directory was
# read, so that a timeout can tell a hung listing from a hung attribute read,
# then one JSON line with what it found.
CHILD_SCRIPT = r"""
import json, os, sys, time
path, names = sys.argv[1], sys.argv[2].split(",")
found = {}
start = time.monotonic()
try:
    os.listdir(path)
except OSError as exc:
    found["error"] = exc.strerror or str(exc)
else:
    found["first_access"] = time.monotonic() - start
    sys.stdout.write("listed\n")
    sys.stdout.flush()
    values = {}
    for name in names:
        try:
            raw = os.getxattr(path, "user." + name)
        except OSError:
            continue
        values[name] = raw[:%d].decode("utf-8", "replace").strip("\0 \t\n")
    found["xattrs"] = values
    found["realpath"] = os.path.realpath(path)
sys.stdout.write(json.dumps(found) + "\n")
""" % MAX_XATTR_CHARS


# ---------------------------------------------------------------- configuration

def parse_repositories(text: str) -> Tuple[str, ...]:
    repos: List[str] = []
    for repo in parse_list(text):
        if not _REPO_NAME.match(repo) or ".." in repo:
            raise ValueError(f"{repo!r} is not a repository name (e.g. oasis.opensciencegrid.org)")
        if repo not in repos:
            repos.append(repo)
    return tuple(repos)


# ---------------------------------------------------------------- facts

def is_cvmfs(mount: Mount) -> bool:
    return mount.fstype == "fuse.cvmfs2" or (mount.fstype.startswith("fuse") and mount.source.startswith("cvmfs2"))


@dataclass(frozen=True)
class RepoCheck:
    """What gather found about one repository."""

    repo: str
    path: str
    listed: bool = False                 # the top directory could be read
    error: str = ""                      # why reading it failed (strerror)
    check_error: str = ""                # why the check itself could not be made
    timed_out_after: float = 0.0         # > 0: the child did not answer within this many seconds
    timed_out_listing: bool = True       # ... while listing (else while reading attributes)
    abandoned_pid: int = 0               # that child could not be killed and was left behind
    hung_since: float = 0.0              # > 0: a child of an earlier run is still stuck (not re-checked)
    hung_pid: int = 0
    first_access: Optional[float] = None  # seconds the first listing took
    xattrs: Mapping[str, str] = field(default_factory=dict)
    realpath: str = ""                   # the path with symlinks resolved, as the mount table spells it
    mount: Optional[Mount] = None        # what is mounted there (after the access, which triggers autofs)
    mounts_error: str = ""               # the mount table could not be read: mount state unknown

    def number(self, xattr: str) -> Optional[int]:
        try:
            return int(self.xattrs[xattr])
        except (KeyError, ValueError):
            return None


@dataclass(frozen=True)
class Failure:
    """A failure remembered across runs, for the quarantine window."""

    at: float       # epoch seconds of the last run that found the repository failing
    reason: str


# ---------------------------------------------------------------- gather

remember_hung = stuck.remember_hung_repository   # what the container probe and the hook read too
still_hung = stuck.hung_repository


def load_failures(scratch: Optional[str]) -> Dict[str, Failure]:
    if scratch is None:
        return {}
    path = os.path.join(scratch, QUARANTINE_FILE)
    try:
        with open(path, "rb") as handle:
            data = json.loads(handle.read())
        return {str(repo): Failure(float(f["at"]), str(f["reason"])) for repo, f in data.items()}
    except FileNotFoundError:
        return {}
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        log.warning("ignoring unreadable %s: %s", path, exc)
        return {}


def save_failures(ctx: ProbeContext, failures: Mapping[str, Failure]) -> None:
    if ctx.scratch_dir() is None:   # no state directory: nothing outlives the run
        return
    data = json.dumps({repo: {"at": f.at, "reason": f.reason} for repo, f in sorted(failures.items())})
    try:
        ctx.write_scratch(QUARANTINE_FILE, data.encode())
    except OSError as exc:
        log.warning("cannot keep the quarantine state: %s", exc)


def parse_child_output(stdout: str) -> Optional[Dict[str, object]]:
    lines = stdout.strip().splitlines()
    try:
        found = json.loads(lines[-1]) if lines else None
    except ValueError:
        return None
    return found if isinstance(found, dict) else None


def repo_budget(timeout: float, remaining: float) -> float:
    """The repository's timeout, shortened to fit the probe's budget with a
    hung child's kill sequence (procs.command_budget)."""
    return command_budget(remaining, timeout)


def check_repo(ctx: ProbeContext, repo: str, path: str, timeout: float) -> RepoCheck:
    """List the repository and read its attributes, in a child we can abandon."""
    budget = repo_budget(timeout, ctx.remaining())
    started = time.time()
    python = sys.executable or "python3"
    # cwd "/": the child must not pin, or stumble on, whatever directory we were started in
    result: CommandResult = ctx.run([python, "-I", "-S", "-c", CHILD_SCRIPT, path, ",".join(XATTRS)],
                                    timeout=budget, cwd="/")
    if result.error:   # no time left in the probe's budget (timed_out), or could not start
        return RepoCheck(repo, path, check_error=result.error if result.timed_out else result.describe_failure())
    if result.left_behind:
        remember_hung(ctx.scratch_dir(), repo, result.left_behind, started)
    if result.timed_out:
        return RepoCheck(repo, path, timed_out_after=budget, timed_out_listing="listed" not in result.stdout,
                         abandoned_pid=result.left_behind[0] if result.left_behind else 0)
    found = parse_child_output(result.stdout)
    if found is None:
        return RepoCheck(repo, path, check_error=result.describe_failure())
    first_access = found.get("first_access")
    xattrs = found.get("xattrs")
    return RepoCheck(
        repo, path,
        listed="error" not in found,
        error=str(found.get("error", "")),
        first_access=float(first_access) if isinstance(first_access, (int, float)) else None,
        xattrs={str(k): str(v) for k, v in xattrs.items()} if isinstance(xattrs, dict) else {},
        realpath=str(found.get("realpath", "")),
    )


def check_all(ctx: ProbeContext, repos: Sequence[str], root: str, timeout: float,
              scratch: Optional[str]) -> List[RepoCheck]:
    """Check the repositories in parallel, except those still hung from an earlier run."""
    checks: Dict[str, RepoCheck] = {}
    threads = []
    for repo in repos:
        path = os.path.join(root, repo)
        hung = still_hung(scratch, repo)
        if hung is not None:
            checks[repo] = RepoCheck(repo, path, hung_since=hung.since, hung_pid=hung.pid)
            continue

        def work(repo: str = repo, path: str = path) -> None:
            checks[repo] = check_repo(ctx, repo, path, timeout)

        thread = threading.Thread(target=work, name=f"cvmfs-{repo}", daemon=True)
        thread.start()
        threads.append(thread)
    # ctx.run returns within its timeout plus the TERM/KILL/abandon sequence;
    # the join deadline only guards against a bug, never waits on a mount.
    join_until = time.monotonic() + ctx.remaining() + KILL_GRACE_SECONDS + REAP_WAIT_SECONDS + 0.5
    for thread in threads:
        thread.join(max(0.0, join_until - time.monotonic()))
    return [checks.get(repo) or RepoCheck(repo, os.path.join(root, repo), check_error="check did not return")
            for repo in repos]


def with_mounts(checks: Sequence[RepoCheck], root: str) -> List[RepoCheck]:
    """Attach what the mount table (under root) says about each repository,
    read after the accesses (which are what makes autofs mount a repository)."""
    mounts, error = procfs.read_mounts(root, MOUNTS_FILE)
    if mounts is None:
        return [replace(c, mounts_error=error) for c in checks]
    return [replace(c, mount=mounts.get(c.realpath or os.path.normpath(c.path))) for c in checks]


def gather(ctx: ProbeContext, scratch: Optional[str]) -> List[RepoCheck]:
    checks = check_all(ctx, ctx.settings["repositories"], ctx.settings["root"], ctx.settings["repo_timeout"],
                       scratch)
    return with_mounts(checks, ctx.system_root)


# ---------------------------------------------------------------- judge

iso = stuck.iso


def seconds(value: float) -> str:
    return f"{value:.0f}s" if value >= 10 or float(value).is_integer() else f"{value:.1f}s"


def failure_reason(c: RepoCheck) -> str:
    """Why the repository is unusable right now; '' if it works."""
    if c.hung_since:
        return f"still hung since {iso(c.hung_since)} (pid {c.hung_pid} stuck on it; not checked again)"
    if c.timed_out_after:
        what = "ls" if c.timed_out_listing else "reading attributes"
        left = f", pid {c.abandoned_pid} unkillable" if c.abandoned_pid else ""
        return f"{what} timed out after {seconds(c.timed_out_after)} (hung mount{left})"
    if c.check_error:
        return f"check failed: {c.check_error}"
    mount_known = not c.mounts_error
    if not c.listed:
        if mount_known and c.mount is None:
            return f"not mounted ({c.error})"
        return f"ls failed: {c.error}"
    if mount_known and c.mount is None:
        return f"not mounted ({c.realpath or c.path} is a plain directory)"
    if mount_known and c.mount is not None and not is_cvmfs(c.mount) and c.xattrs.get("fqrn") != c.repo:
        return f"not CVMFS: {c.mount.fstype} mount of {c.mount.source}"
    return ""


def quarantine_reason(c: RepoCheck, failure: Optional[Failure], now: float, window: float) -> str:
    """Why a repository that works now is still held back; '' if it is not."""
    if window <= 0:
        return ""
    holds = []
    if failure is not None and now - failure.at < window:
        holds.append((failure.at + window, f"failed at {iso(failure.at)}: {failure.reason}"))
    last_ioerr = c.number("timestamp_last_ioerr") or 0
    if last_ioerr > 0 and now - last_ioerr < window:
        holds.append((last_ioerr + window, f"I/O error at {iso(last_ioerr)}"))
    if not holds:
        return ""
    until, why = max(holds)
    return f"quarantined until {iso(until)} ({why})"


def measurements(c: RepoCheck) -> List[Measurement]:
    labels = {"repo": c.repo}
    found = []
    for name, xattr, unit in (("revision", "revision", ""), ("nioerr", "nioerr", ""),
                              ("last_ioerr", "timestamp_last_ioerr", "timestamp_seconds")):
        value = c.number(xattr)
        if value is not None:
            found.append(Measurement(name, float(value), unit, labels))
    if c.first_access is not None:
        found.append(Measurement("first_access", c.first_access, "seconds", labels))
    return found


def judge(checks: Sequence[RepoCheck], failures: Mapping[str, Failure], now: float, window: float) -> ProbeResult:
    """Every repository is ok, failed (unusable now) or quarantined (works,
    but failed or had an I/O error within the window); any but ok fails the probe."""
    ok: List[str] = []
    failed: List[str] = []
    quarantined: List[str] = []
    problems: List[str] = []
    found: List[Measurement] = []
    for c in checks:
        found += measurements(c)
        why = failure_reason(c)
        held = "" if why else quarantine_reason(c, failures.get(c.repo), now, window)
        if why:
            failed.append(c.repo)
        elif held:
            quarantined.append(c.repo)
        else:
            ok.append(c.repo)
        if why or held:
            problems.append(f"{c.repo}: {why or held}")
    facts: Dict[str, object] = {"repos_ok": tuple(ok), "repos_failed": tuple(failed),
                                "repos_quarantined": tuple(quarantined)}
    versions = sorted({c.xattrs["version"] for c in checks if c.xattrs.get("version")})
    if versions:
        facts["client_version"] = ",".join(versions)
    summary = f"{len(ok)}/{len(checks)} repositories ok"
    if problems:
        return ProbeResult("cvmfs", Status.FAILED, summary + "; " + "; ".join(problems), facts, tuple(found))
    return ProbeResult("cvmfs", Status.OK, summary, facts, tuple(found))


def updated_failures(checks: Sequence[RepoCheck], failures: Mapping[str, Failure], now: float,
                     window: float) -> Dict[str, Failure]:
    """What to remember: this run's failures, and earlier ones still inside
    the window (of configured repositories only)."""
    if window <= 0:
        return {}
    kept = {c.repo: failures[c.repo] for c in checks
            if c.repo in failures and now - failures[c.repo].at < window}
    for c in checks:
        why = failure_reason(c)
        if not why:
            continue
        earlier = kept.get(c.repo)
        if c.hung_since and earlier is not None:
            why = earlier.reason   # what the hang looked like when it was found, not "still hung"
        kept[c.repo] = Failure(now, why)
    return kept


class CvmfsProbe(Probe):
    name = "cvmfs"
    description = "CVMFS: each configured repository mounted, listable, its revision and I/O errors; quarantine"
    default_period = 300.0
    # Repositories are checked in parallel: one repository timeout (20 s),
    # plus the kill sequence of a hung child, plus start-up.
    default_timeout = 30.0
    # A mounted repository lists its root from the loaded catalogue in
    # milliseconds; the 20 s repository timeout is for a slow first load.
    answers_within = 3.0
    knobs = (
        Knob("CVMFS_REPOSITORIES", parse_repositories, (), "repositories to check, separated by commas or "
             "spaces (e.g. `oasis.opensciencegrid.org, cms.cern.ch`)", "LIST", default_text="none (probe skipped)"),
        Knob("CVMFS_ROOT", parse_absolute_path, DEFAULT_ROOT, "where the repositories are mounted", "PATH"),
        Knob("CVMFS_REPO_TIMEOUT", parse_positive_seconds, 20.0, "budget for one repository (listing + extended "
             "attributes, in a child process); shortened to fit the probe's budget; a check that hangs is "
             "abandoned and the repository failed", "SECONDS"),
        Knob("CVMFS_QUARANTINE", parse_seconds, DEFAULT_QUARANTINE_SECONDS, "a repository that failed, or "
             "whose client reported an I/O error, stays unusable this long; 0 turns it off", "SECONDS",
             default_text="14400 (4 h, as the OSPool pilot)"),
    )

    def run(self, ctx: ProbeContext) -> ProbeResult:
        if not ctx.settings["repositories"]:
            return ProbeResult(self.name, Status.SKIPPED,
                               "no repository configured (STARTD_HEALTH_CVMFS_REPOSITORIES)")
        scratch = ctx.scratch_dir()
        failures = load_failures(scratch)
        checks = gather(ctx, scratch)
        now = time.time()
        window = ctx.settings["quarantine"]
        save_failures(ctx, updated_failures(checks, failures, now, window))
        return judge(checks, failures, now, window)
