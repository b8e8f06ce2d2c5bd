"""Sessions probe: do Linux sessions interfere with the local resource manager?

HTCondor's starter calls setsid() for each job (USE_PROCESS_GROUPS, default
true) and kills the job's process group when it ends; a job process that
starts a session of its own leaves that group and survives the group kill.
Only job tracking by cgroups (or condor_procd's parent/child and environment
tracking, which a double fork can lose) catches such a process. This probe
measures, for real, what a job could do here, and what would catch it.

Gather (touches the system; every test process is started through ctx.run):

- the fork test: one supervisor child (probes/_fork_test.py) forks a "job"
  that calls setsid() as the starter does, then from it a grandchild that
  calls setsid() again (its own session) and a double-forked grandchild that
  gets re-parented. The supervisor kills the job's process group with
  SIGKILL, as the starter would, and reports which grandchild survived.
  Every test process is then killed by pid (the supervisor does it, and the
  probe again from a pid file, checking each pid still carries this run's
  token in its command line); they also exit by themselves as soon as the
  supervisor is gone (EOF on a lifeline pipe), so an abandoned test can
  never leave them behind;
- cgroups from /proc/self/cgroup and /proc/self/mountinfo (under ctx.system_root): the version
  (``v1``, ``v2``, ``hybrid`` = v1 controllers plus a cgroup2 hierarchy,
  which HTCondor treats as v1, ``none``), our cgroup in the hierarchy HTCondor
  tracks jobs with (v2: the unified one; v1: the memory controller's),
  whether that filesystem is mounted read-write, whether ``cgroup.kill``
  exists there (v2, kernel >= 5.14), and, from HTCondor's configuration when
  readable, whether BASE_CGROUP was emptied (which turns cgroup tracking off);
- pid namespaces: ``unshare --pid --fork true`` as root (what the starter
  does for USE_PID_NAMESPACES), ``unshare --user --map-root-user --pid
  --fork true`` otherwise (what unprivileged ``apptainer --pid`` needs);
  without unshare, only the kernel's support (/proc/self/ns/pid);
- whether this process is in a session of its own or in its parent's. A
  STARTD_CRON job shares the startd's session (measured with a cron job on
  HTCondor 23.9 and 25.14: its getsid() is the startd's pid); Secure CVMFS
  keys its credential cache on the session id.

Judge (pure): FAILED when setsid() is impossible and HTCondor's
USE_PROCESS_GROUPS is on (every job start would fail), or when the fork test
could not run; DEGRADED when a test process escaped the process-group kill
and nothing could catch it (no usable cgroup tracking); OK otherwise.

``cgroup_tracked`` says HTCondor *can* track jobs with cgroups here; the
running startd's own choice (it needs root for it) is in its StartLog.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import tempfile
import time
import uuid
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence, Tuple

from startd_health.core.config import parse_bool
from startd_health.core.model import Probe, ProbeContext, ProbeResult, Status
from startd_health.system import procfs
from startd_health.system.procfs import MountInfo
from startd_health.system.programs import python_argv
from startd_health.system.procs import last_line

# Read under ctx.system_root: "/" on a node, a recorded tree in tests.
PROC_SELF_CGROUP = "proc/self/cgroup"
PROC_SELF_MOUNTINFO = "proc/self/mountinfo"
PROC_SELF_NS_PID = "proc/self/ns/pid"
FORK_TEST = "_fork_test.py"      # in this package; run by path
TRACKING_CONTROLLER = "memory"   # the v1 hierarchy whose path we report (HTCondor's v1 code uses memory, cpu, freezer...)
FORK_TEST_TIMEOUT = 15.0
SETUP_SECONDS = 5.0               # for the test processes to report in
UNSHARE_TIMEOUT = 10.0

@dataclass(frozen=True)
class ForkTest:
    ran: bool
    error: str = ""                   # why the test did not run or did not complete
    setsid_ok: bool = False
    setsid_error: str = ""
    session_escape: bool = False
    double_fork_escape: bool = False
    double_fork_reparented: bool = False
    pids: Tuple[int, ...] = ()
    leftover: Tuple[int, ...] = ()    # test processes still alive after every cleanup


@dataclass(frozen=True)
class Cgroups:
    version: str = "none"     # v1 | v2 | hybrid | none
    path: str = ""            # our cgroup in the tracking hierarchy, as /proc/self/cgroup says
    directory: str = ""       # where that cgroup is in the filesystem ("" if not mounted)
    writable: bool = False    # the tracking hierarchy is mounted read-write


@dataclass(frozen=True)
class Gathered:
    fork: ForkTest
    cgroups: Cgroups
    cgroup_kill: bool = False
    base_cgroup_disabled: bool = False   # HTCondor's BASE_CGROUP is empty
    use_process_groups: bool = True      # HTCondor's USE_PROCESS_GROUPS
    pid_namespace: bool = False
    pid_namespace_check: str = ""        # how pid_namespace was found out
    pid_namespace_error: str = ""
    in_own_session: bool = False


# ---------------------------------------------------------------- cgroups (pure parsing)

def parse_mountinfo(text: str) -> List[MountInfo]:
    """The cgroup and cgroup2 mounts of a mountinfo text."""
    return [m for m in procfs.parse_mountinfo(text) if m.fstype in ("cgroup", "cgroup2")]


def parse_cgroups(proc_cgroup: str, mountinfo: str) -> Cgroups:
    """Version, our tracking cgroup and where it is mounted, from the two /proc texts."""
    v1_paths: Dict[str, str] = {}
    v2_path: Optional[str] = None
    for line in proc_cgroup.splitlines():
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        hierarchy, controllers, path = parts
        if hierarchy == "0" and controllers == "":
            v2_path = path
        else:
            for controller in controllers.split(","):
                if controller:
                    v1_paths[controller] = path
    mounts = parse_mountinfo(mountinfo)
    v1_mounts = [m for m in mounts if m.fstype == "cgroup"]
    v2_mounts = sorted((m for m in mounts if m.fstype == "cgroup2"), key=lambda m: m.mountpoint != "/sys/fs/cgroup")
    if v1_mounts and v2_mounts:
        version = "hybrid"
    elif v1_mounts:
        version = "v1"
    elif v2_mounts:
        version = "v2"
    else:
        return Cgroups()
    if version == "v2":
        path, mount = v2_path or "", v2_mounts[0]
    else:   # the memory controller's hierarchy if mounted, else the first mounted one we are in
        path, mount = "", v1_mounts[0]
        for controller in [TRACKING_CONTROLLER] + sorted(v1_paths):
            found = next((m for m in v1_mounts if controller in m.super_options), None)
            if controller in v1_paths and found is not None:
                path, mount = v1_paths[controller], found
                break
    if not path:
        return Cgroups(version)
    relative = path
    root = mount.root.rstrip("/")
    if root and (path == root or path.startswith(root + "/")):
        relative = path[len(root):] or "/"
    directory = os.path.join(mount.mountpoint, relative.lstrip("/")) if relative.strip("/") else mount.mountpoint
    return Cgroups(version, path, directory, not mount.read_only)


# ---------------------------------------------------------------- gather

def kill_test_processes(pids: Sequence[int], token: str, wait: float = 2.0) -> Tuple[int, ...]:
    """SIGKILL every listed pid that is still one of this run's test processes; the ones left alive."""
    for pid in pids:
        if procfs.cmdline_contains(pid, token):
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
    end = time.monotonic() + wait
    while time.monotonic() < end and any(procfs.cmdline_contains(p, token) for p in pids):
        time.sleep(0.01)
    return tuple(p for p in pids if procfs.cmdline_contains(p, token))


def fork_test(ctx: ProbeContext) -> ForkTest:
    token = "startd-health-sessions-" + uuid.uuid4().hex
    workdir = tempfile.mkdtemp(prefix="sessions-", dir=ctx.scratch_dir())
    pidfile = os.path.join(workdir, "pids")
    try:
        result = ctx.run(python_argv(__package__, FORK_TEST, token, pidfile, str(SETUP_SECONDS)),
                         timeout=FORK_TEST_TIMEOUT)
        pids: Tuple[int, ...] = ()
        try:
            with open(pidfile) as handle:
                pids = tuple(int(p) for p in handle.read().split())
        except (OSError, ValueError):
            pass
        leftover = kill_test_processes(pids, token)   # after a timeout the supervisor could not do it
        if not result.ok:
            return ForkTest(False, error=result.describe_failure(), pids=pids, leftover=leftover)
        try:
            out = json.loads(last_line(result.stdout))
        except ValueError:
            return ForkTest(False, error=f"unexpected output {last_line(result.stdout)!r}", pids=pids,
                            leftover=leftover)
        missing = {"job", "session", "double", "ready"} - set(out.get("reported", ()))
        if out.get("kill_error") or missing:
            why = out.get("kill_error") or "no report from the " + ", ".join(sorted(missing)) + " test process"
            return ForkTest(False, error=why, pids=pids, leftover=leftover)
        return ForkTest(
            True,
            setsid_ok=not out["setsid_error"],
            setsid_error=out["setsid_error"],
            session_escape=bool(out["session_escape"]),
            double_fork_escape=bool(out["double_fork_escape"]),
            double_fork_reparented=bool(out["double_fork_reparented"]),
            pids=pids,
            leftover=tuple(sorted(set(leftover) | {int(p) for p in out.get("leftover", ())
                                                   if procfs.cmdline_contains(int(p), token)})),
        )
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def pid_namespace_check(ctx: ProbeContext) -> Tuple[bool, str, str]:
    """(works, how it was checked, why not)."""
    unshare = shutil.which("unshare") or next(
        (p for p in ("/usr/bin/unshare", "/bin/unshare") if os.access(p, os.X_OK)), None)
    if unshare is None:
        supported = os.path.lexists(procfs.path(ctx.system_root, PROC_SELF_NS_PID))
        return supported, "kernel support only (no unshare)", "" if supported else "no /proc/self/ns/pid"
    if os.geteuid() == 0:
        argv, how = [unshare, "--pid", "--fork", "true"], "unshare --pid as root"
    else:
        argv, how = [unshare, "--user", "--map-root-user", "--pid", "--fork", "true"], "unshare --user --pid"
    result = ctx.run(argv, timeout=UNSHARE_TIMEOUT)
    return result.ok, how, "" if result.ok else result.describe_failure()


def in_own_session() -> bool:
    try:
        return os.getsid(0) != os.getsid(os.getppid())
    except OSError:   # the parent is gone or not ours to ask: are we a session leader?
        return os.getsid(0) == os.getpid()


def condor_settings(condor) -> Tuple[bool, bool]:
    """(BASE_CGROUP emptied, USE_PROCESS_GROUPS) from HTCondor's configuration, if readable."""
    if condor is None or not getattr(condor, "available", False):
        return False, True
    base = condor.get("BASE_CGROUP")
    use_groups = condor.get("USE_PROCESS_GROUPS")
    try:
        groups = True if use_groups is None else parse_bool(use_groups)
    except ValueError:
        groups = True
    return not (base or "").strip(), groups


def gather(ctx: ProbeContext) -> Gathered:
    fork = fork_test(ctx)
    cgroups = parse_cgroups(procfs.read_text(ctx.system_root, PROC_SELF_CGROUP) or "",
                            procfs.read_text(ctx.system_root, PROC_SELF_MOUNTINFO) or "")
    kill = cgroups.version == "v2" and bool(cgroups.directory) and os.path.exists(
        procfs.path(ctx.system_root, os.path.join(cgroups.directory, "cgroup.kill")))
    base_disabled, use_groups = condor_settings(ctx.condor)
    pidns, how, why = pid_namespace_check(ctx)
    return Gathered(fork, cgroups, kill, base_disabled, use_groups, pidns, how, why, in_own_session())


# ---------------------------------------------------------------- judge

def cgroup_tracking(g: Gathered) -> Tuple[bool, str]:
    """Whether cgroups could catch a process that left the job's group; if not, why."""
    c = g.cgroups
    if c.version == "none":
        return False, "no cgroup filesystem"
    if not c.directory:
        return False, f"our cgroup is not in a mounted cgroup {c.version} hierarchy"
    if not c.writable:
        return False, f"the cgroup {c.version} filesystem is read-only"
    if g.base_cgroup_disabled:
        return False, "HTCondor's BASE_CGROUP is empty"
    return True, ""


def judge(g: Gathered) -> ProbeResult:
    tracked, untracked_why = cgroup_tracking(g)
    facts: Dict[str, Any] = {
        "cgroup_version": g.cgroups.version,
        "cgroup_path": g.cgroups.path,
        "cgroup_kill": g.cgroup_kill,
        "cgroup_tracked": tracked,
        "pid_namespace": g.pid_namespace,
        "in_own_session": g.in_own_session,
    }
    f = g.fork
    if not f.ran:
        reason = f"session test failed: {f.error}"
        if f.leftover:
            reason += f"; test processes {', '.join(map(str, f.leftover))} could not be killed"
        return ProbeResult("sessions", Status.FAILED, reason, facts)
    facts.update(setsid_ok=f.setsid_ok, session_escape=f.session_escape, double_fork_escape=f.double_fork_escape)

    label = "hybrid (v1)" if g.cgroups.version == "hybrid" else g.cgroups.version
    cgroup_text = (f"cgroup {label} tracking" + (" with cgroup.kill" if g.cgroup_kill else "") if tracked
                   else f"no cgroup tracking ({untracked_why})")
    pid_text = "pid namespaces " + ("work" if g.pid_namespace else "unavailable")
    if g.pid_namespace_check.startswith("kernel"):
        pid_text += f" ({g.pid_namespace_check})"
    elif not g.pid_namespace and g.pid_namespace_error:
        pid_text += f" ({g.pid_namespace_error})"
    session_text = "own session" if g.in_own_session else "shares its parent's session"
    # Our own test processes that survived SIGKILL (uninterruptible sleep): a defect worth seeing.
    leftover_text = (f"; test processes {', '.join(map(str, f.leftover))} could not be killed"
                     if f.leftover else "")
    ok_or_leftover = Status.DEGRADED if f.leftover else Status.OK

    if not f.setsid_ok:
        status = Status.FAILED if g.use_process_groups else Status.DEGRADED
        what = "jobs cannot start (USE_PROCESS_GROUPS)" if g.use_process_groups else "USE_PROCESS_GROUPS is off"
        return ProbeResult("sessions", status, f"setsid() fails ({f.setsid_error}): {what}; {cgroup_text}; "
                                               f"{pid_text}; {session_text}{leftover_text}", facts)

    escapes = [what for what, escaped in (("a setsid() grandchild", f.session_escape),
                                          ("a double-forked grandchild", f.double_fork_escape)) if escaped]
    if not escapes:
        return ProbeResult("sessions", ok_or_leftover, f"setsid works; a process-group kill reaches every "
                                                       f"grandchild; {cgroup_text}; {pid_text}; {session_text}"
                                                       f"{leftover_text}", facts)
    escape_text = f"{' and '.join(escapes)} survived a process-group kill"
    if not tracked:
        return ProbeResult("sessions", Status.DEGRADED,
                           f"jobs can escape a process-group kill ({escape_text}) and no cgroup tracking can catch "
                           f"them ({untracked_why}); {pid_text}; {session_text}{leftover_text}", facts)
    return ProbeResult("sessions", ok_or_leftover, f"setsid works; {escape_text}, {cgroup_text} can catch it; "
                                                   f"{pid_text}; {session_text}{leftover_text}", facts)


class SessionsProbe(Probe):
    name = "sessions"
    description = ("Linux sessions vs. job tracking: setsid, escapes from a process-group kill, cgroup version "
                   "and tracking, pid namespaces, our own session")
    default_period = 900.0
    default_timeout = 30.0

    def run(self, ctx: ProbeContext) -> ProbeResult:
        return judge(gather(ctx))
