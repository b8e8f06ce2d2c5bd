"""The container probe's launch as HTCondor's starter makes it for a job
(system/starter_launch.py builds the command line): as the account that
stands for job users (system/job_account.py), in a scratch directory of our
own on EXECUTE with the starter's environment, so that what is tested is
what a job will get -- its bind mounts, its permissions, the space the
runtime really uses -- and a full /tmp that jobs never touch is no fault.

Everything that touches a filesystem (stat of the image and bind sources,
creating and removing the scratch directory, free space) runs in a budgeted
child through ctx.run: EXECUTE or an image's filesystem may hang.

The runtime's own scratch: the starter points APPTAINER_TMPDIR and
APPTAINER_CACHEDIR (and TMPDIR) at the job's scratch directory, so a SIF that
the runtime cannot mount with squashfuse (no squashfuse, no usable /dev/fuse)
is extracted there; its free space must hold the unpacked image (estimated
as EXTRACT_FACTOR times the SIF, the usual squashfs compression ratio).
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence, Tuple

from startd_health.system import job_account, procfs
from startd_health.system import starter_launch as starter
from startd_health.system.container import Launch, Runtime, launch_argv

MKDIR_TIMEOUT = 10.0
STAT_TIMEOUT = 10.0
EXTRACT_FACTOR = 3
# Containment flags of STARTD_HEALTH_CONTAINER_FLAGS that HTCondor decides
# itself (-C, or --contain --ipc --cleanenv): not added to the starter's launch.
CONTAINMENT = {"-C", "--containall", "-c", "--contain", "-i", "--ipc", "-p", "--pid", "-e", "--cleanenv"}
SQUASHFUSE = ("squashfuse_ll", "squashfuse")
C_LOCALE = dict(os.environ, LC_ALL="C")   # coreutils' messages without translated quotes


@dataclass
class StarterFacts:
    condor_version: str
    execute: str                          # EXECUTE; for our own launch, the runtime's temporary directory
    apptainer: bool
    account: Optional[job_account.Account]
    account_error: str = ""
    dropped: bool = False                 # we are root: the launch runs as the account
    extra_flags: Tuple[str, ...] = ()     # ours, after the starter's arguments
    slot: starter.SlotFacts = starter.SlotFacts()
    argv: Tuple[str, ...] = ()            # the last launch's command line (for the record)
    slot_dir: str = ""                    # its slot directory (EXECUTE/startd-health.<pid>.<n>, removed since)
    untestable: Tuple[str, ...] = ()
    skipped_binds: Tuple[str, ...] = ()
    knob_args: Tuple[Tuple[str, str], ...] = ()
    sizes: Dict[str, int] = field(default_factory=dict)   # image path -> bytes (files only)
    no_pid_namespaces: bool = False       # -C failed, --contain --ipc --cleanenv worked (HTCondor's auto fallback)
    sif_mode: str = ""                    # squashfuse | extraction | kernel (privileged)
    scratch_free: Optional[int] = None    # bytes free where the runtime extracts (EXECUTE)
    scratch_needed: int = 0
    warnings: List[str] = field(default_factory=list)
    kind: str = "starter"                 # starter | own (no HTCondor: STARTD_HEALTH_CONTAINER_FLAGS, our environment)


def prepare(ctx: Any, runtime: Runtime, apptainer: bool) -> Optional[StarterFacts]:
    """None when the launch is our own (no HTCondor configuration, or STARTD_HEALTH_CONTAINER_STARTER_LAUNCH off)."""
    condor = ctx.condor
    if condor is None or not getattr(condor, "available", True) or not ctx.settings.get("starter_launch", True):
        return None
    execute = (condor.get("EXECUTE") or "").strip()
    if not execute or not _ours_to_use(execute):
        return None
    name, why = job_account.choose_name(ctx.settings.get("job_user", ""), condor.get("SLOT1_USER"),
                                        condor.get("CONDOR_IDS"))
    account, error = job_account.resolve(name, why)
    extra = tuple(flag for flag in ctx.settings.get("flags", ()) if flag not in CONTAINMENT)
    gpus = bool((condor.get("MACHINE_RESOURCE_INVENTORY_GPUs") or condor.get("MACHINE_RESOURCE_GPUs") or "").strip())
    slot = starter.SlotFacts(gpus=gpus,
                             nvidia_driver=os.path.exists(procfs.path(ctx.system_root, "proc/driver/nvidia/version")),
                             rocm=os.path.exists(procfs.path(ctx.system_root, "sys/module/amdgpu")))
    return StarterFacts(condor.get("CONDOR_VERSION") or "", execute, apptainer, account, error,
                        dropped=os.geteuid() == 0 and account is not None, extra_flags=extra, slot=slot)


def _ours_to_use(execute: str) -> bool:
    """Whether we can make a job's scratch directory in EXECUTE as the
    starter would: root, or the startd's own user (HTCondor's account, a
    pilot). Someone else running a check by hand gets our own launch; a
    read-only EXECUTE stays ours (that is the fault to report). EXECUTE is a
    local directory of the startd (statvfs and access do not wait on a
    server), and a missing one is reported by the launch."""
    if os.geteuid() == 0:
        return True
    try:
        read_only = bool(os.statvfs(execute).f_flag & os.ST_RDONLY)
    except OSError:
        return True
    return read_only or os.access(execute, os.W_OK)


def own(ctx: Any, runtime: Runtime, images: Sequence[Tuple[str, str]]) -> StarterFacts:
    """Our own launch (no HTCondor configuration): the runtime's scratch is
    its defaults, APPTAINER_TMPDIR, else TMPDIR, else /tmp, as we run it."""
    env = runtime.env if runtime.env is not None else os.environ
    tmpdir = env.get("APPTAINER_TMPDIR") or env.get("SINGULARITY_TMPDIR") or env.get("TMPDIR") or "/tmp"
    st = StarterFacts("", tmpdir, True, None, kind="own")
    paths = [path for _, path in images if os.path.isabs(path)]
    if paths:
        for path, (found, size) in _stat(ctx, paths).items():
            if stat.S_ISREG(found.mode):
                st.sizes[path] = size
    return st


def _build(ctx: Any, st: StarterFacts, runtime: Runtime, path: str, index: int, existing: Optional[set] = None,
           is_dir: Optional[set] = None, no_pidns: bool = False) -> starter.StarterLaunch:
    param = ctx.condor.get
    if no_pidns:
        param = lambda name: "false" if name == "SINGULARITY_USE_PID_NAMESPACES" else ctx.condor.get(name)  # noqa: E731
    return starter.starter_launch(
        param, runtime.path, path, st.execute, f"{os.getpid()}.{index}", st.slot,
        exists=(lambda p: True) if existing is None else (lambda p: p in existing),
        is_dir=(lambda p: False) if is_dir is None else (lambda p: p in is_dir),
        apptainer=st.apptainer, version=starter.parse_version(st.condor_version))


def _stat(ctx: Any, paths: Sequence[str]) -> Dict[str, Tuple[job_account.PathStat, int]]:
    result = ctx.run(job_account.stat_argv(sorted(set(paths))), timeout=STAT_TIMEOUT)
    return {s.path: (s, size) for s, size in job_account.parse_stat(result.stdout)}


def launch(ctx: Any, st: StarterFacts, runtime: Runtime, image: str, path: str, index: int, script: str,
           cvmfs_repos: Sequence[str]) -> Launch:
    try:
        first = _build(ctx, st, runtime, path, index)
    except ValueError as exc:
        return Launch(image, path, False, 0.0, error=f"SINGULARITY_EXTRA_ARGUMENTS cannot be parsed: {exc}")
    sources = [arg.split(" ", 1)[1].split(":", 1)[0] for knob, arg in first.knob_args
               if knob == "SINGULARITY_BIND_EXPR"]
    paths = job_account.components(path) + job_account.components(st.execute) + sources
    paths += [path + "/" + s for s in sources]   # SINGULARITY_IGNORE_MISSING_BIND_TARGET looks inside a sandbox
    if st.slot.gpus:
        paths.append(starter.OPENCL_VENDORS)
    found = _stat(ctx, paths)
    existing = set(found)
    dirs = {p for p, (s, _) in found.items() if (s.mode & 0o170000) == 0o040000}
    built = _build(ctx, st, runtime, path, index, existing, dirs)
    if path in found and path not in dirs:
        st.sizes[path] = found[path][1]
    st.untestable, st.skipped_binds, st.knob_args = built.untestable, built.skipped_binds, built.knob_args

    # The job account must reach the image and EXECUTE, whatever we (condor) can.
    if st.account is not None and not st.dropped:
        stats = [s for s, _ in found.values()]
        # An image we cannot see ourselves is left to the runtime's own error, as before.
        for target, what in [(t, w) for t, w in ((path, "image"), (st.execute, "EXECUTE")) if t in found]:
            why = job_account.denied(st.account, target, stats, need_dir=what == "EXECUTE")
            if why:
                return Launch(image, path, False, 0.0, error=f"job account {st.account.name} cannot use the {what}: "
                                                             f"{why}")

    made_dirs = [built.slot_dir] + ([built.scratch] if built.scratch != built.slot_dir else [])
    made = ctx.run(["mkdir", "-m", "0700", "--", *made_dirs], timeout=MKDIR_TIMEOUT, env=C_LOCALE)
    if made.ok and st.dropped and st.account is not None:
        made = ctx.run(["chown", f"{st.account.uid}:{st.account.gid}", "--", *made_dirs], timeout=MKDIR_TIMEOUT,
                       env=C_LOCALE)
    try:
        if not made.ok:
            # The first complaint ends in the system's error text ("Read-only file system").
            lines = made.stderr.strip().splitlines()
            detail = lines[0].rsplit(": ", 1)[-1] if lines else made.describe_failure()
            return Launch(image, path, False, made.duration_seconds,
                          error=f"cannot create a job scratch directory in EXECUTE {st.execute}: {detail}")
        result = _run(ctx, st, runtime, image, path, built, script, cvmfs_repos)
        if (not result.ok and built.pid_namespaces is None and not result.left_behind
                and "namespace" in result.error.lower()):
            # SINGULARITY_USE_PID_NAMESPACES = auto: the startd tried -C first and
            # fell back without pid namespaces when that failed; so do we.
            argv = st.argv
            fallback = _build(ctx, st, runtime, path, index, existing, dirs, no_pidns=True)
            retry = _run(ctx, st, runtime, image, path, fallback, script, cvmfs_repos)
            if retry.ok:
                st.no_pid_namespaces = True
                return retry
            st.argv = argv
        return result
    finally:
        ctx.run(["rm", "-rf", "--one-file-system", "--", built.slot_dir], timeout=MKDIR_TIMEOUT)


def _run(ctx: Any, st: StarterFacts, runtime: Runtime, image: str, path: str, built: starter.StarterLaunch,
         script: str, cvmfs_repos: Sequence[str]) -> Launch:
    options = list(built.options) + list(st.extra_flags)
    argv = options + [built.image, "/bin/sh", "-c", script]
    if st.dropped and st.account is not None:
        argv = job_account.drop_argv(st.account) + argv
    st.argv = tuple(options + [built.image])
    st.slot_dir = built.slot_dir
    env = starter.runtime_environment(runtime.env if runtime.env is not None else os.environ, built)
    result = launch_argv(ctx.run, image, path, argv, ctx.settings["launch_timeout"], cvmfs_repos, env=env,
                         cwd=built.scratch, uid=st.account.uid if st.dropped and st.account else None)
    if not result.ok:
        # Name the site's arguments the launch had: the usual culprit when only the starter's launch fails.
        given = ", ".join(f"{knob} {args}" for knob, args in built.knob_args
                          if knob in ("SINGULARITY_EXTRA_ARGUMENTS", "SINGULARITY_TARGET_DIR"))
        if given:
            return Launch(result.image, result.path, False, result.seconds, result.mode,
                          f"launch with {given}: {result.error}", result.pid_namespace, result.left_behind)
    return result


def finish(ctx: Any, st: StarterFacts, runtime: Runtime, modes: Sequence[str] = ()) -> StarterFacts:
    """The runtime's scratch (APPTAINER_TMPDIR/CACHEDIR = the job's scratch on
    EXECUTE): which way a SIF is opened, and whether EXECUTE can hold it unpacked."""
    runtime_dir = os.path.dirname(os.path.realpath(runtime.path))
    candidates = [os.path.join(d, "libexec", "apptainer", "bin", name)
                  for d in {os.path.dirname(runtime_dir), "/usr"} for name in SQUASHFUSE]
    candidates += [os.path.join(d, name) for d in os.environ.get("PATH", "").split(":") if d for name in SQUASHFUSE]
    free = ctx.run(["stat", "-f", "-L", "-c", "%a %S", "--", st.execute], timeout=STAT_TIMEOUT)
    try:
        blocks, size = free.stdout.split()
        st.scratch_free = int(blocks) * int(size)
    except ValueError:
        st.scratch_free = None
    found = _stat(ctx, candidates + ["/dev/fuse"])
    account = st.account
    has_squashfuse = any(p in found and stat.S_ISREG(found[p][0].mode)
                         and (account is None or job_account.allowed(account, found[p][0], os.X_OK))
                         for p in candidates)
    fuse = found.get("/dev/fuse")
    fuse_ok = fuse is not None and (account is None or job_account.allowed(account, fuse[0], os.R_OK | os.W_OK))
    if "privileged" in modes:
        st.sif_mode = "kernel"
    else:
        st.sif_mode = "squashfuse" if has_squashfuse and fuse_ok else "extraction"
    st.scratch_needed = EXTRACT_FACTOR * max(st.sizes.values(), default=0)
    if st.sif_mode == "extraction" and st.scratch_free is not None and st.scratch_free < st.scratch_needed:
        where = ("the job's scratch directory on EXECUTE" if st.kind == "starter"
                 else "the runtime's temporary directory")
        st.warnings.append(f"a SIF is extracted into {where} ({st.execute}: "
                           f"{st.scratch_free // 2**20} MiB free, about {st.scratch_needed // 2**20} MiB needed)")
    return st


def facts(st: StarterFacts) -> Dict[str, Any]:
    if st.kind != "starter":
        mine: Dict[str, Any] = {"launch": st.kind, "sif_mode": st.sif_mode}
        if st.scratch_free is not None:
            mine["scratch_free_bytes"] = st.scratch_free
        return mine
    out: Dict[str, Any] = {
        "launch": "starter",
        # The slot directory written once, as <slot>: the whole line stays readable in the ad.
        # (No fact of the directory itself: its name changes every run, a new series each time in Prometheus.)
        "launch_argv": " ".join(st.argv).replace(st.slot_dir, "<slot>") if st.slot_dir else " ".join(st.argv),
        "job_user": st.account.name if st.account else "",
        "job_user_launch": "as the account" if st.dropped else "as this user; the account's access from permissions",
        "sif_mode": st.sif_mode,
    }
    if st.untestable:
        out["knobs_untestable"] = tuple(u.split(":", 1)[0] for u in st.untestable)
    if st.skipped_binds:
        out["binds_skipped"] = st.skipped_binds
    if st.scratch_free is not None:
        out["scratch_free_bytes"] = st.scratch_free
    if st.no_pid_namespaces:
        out["pid_namespace_fallback"] = True
    return out


def notes(st: StarterFacts) -> List[str]:
    """What the reason adds about the launch: warnings, the job account, knobs no launch can test."""
    parts = list(st.warnings)
    if st.account_error:
        parts.append(st.account_error)
    if st.untestable:
        parts.append("not testable without a job: " + ", ".join(u.split(":", 1)[0] for u in st.untestable))
    return parts
