"""Finding the container runtime (Apptainer/Singularity) and launching an
image with the inside script: shared by the container probe, the GPU
probe's --nv launch and the pre-job hook. Plain inputs; commands run through
the caller's ``run`` (a probe passes its context's, so that budgets hold).

The uid_map read inside the container tells the mode apart, as GlideinWMS
does: the full identity map means no user namespace (setuid starter, or
root); a one-line map of our own uid means an unprivileged user namespace;
root inside mapped to our uid outside means fakeroot. Exit 0 with any other
output counts as a failed launch.
"""

from __future__ import annotations

import os
import re
import shutil
from dataclasses import dataclass, replace
from typing import Callable, List, Mapping, Optional, Sequence, Tuple

from startd_health.system import inside, platforms
from startd_health.system.procs import CommandResult, last_line, run_command

RUNTIME_NAMES = ("apptainer", "singularity")
MODULE_TIMEOUT = 10.0

# (argv, timeout=..., env=...) -> CommandResult: a probe context's run, or run_command.
Run = Callable[..., CommandResult]


@dataclass(frozen=True)
class Runtime:
    path: str
    source: str                            # how it was found, for the reason text
    env: Optional[Mapping[str, str]] = None  # environment after a module load, if any


@dataclass(frozen=True)
class Launch:
    image: str          # the name jobs match on
    path: str
    ok: bool
    seconds: float
    mode: str = ""      # privileged | unprivileged | fakeroot (when ok)
    error: str = ""
    pid_namespace: Optional[bool] = None   # inside in another pid namespace than ours
    left_behind: Tuple[int, ...] = ()      # pids the launch left stuck (unkillable: see system/stuck.py)
    platform: Optional[platforms.Platform] = None   # what the image is inside (when asked and read)


def _run_command(argv: Sequence[str], timeout: Optional[float] = None,
                 env: Optional[Mapping[str, str]] = None) -> CommandResult:
    return run_command(argv, MODULE_TIMEOUT if timeout is None else timeout, env=env)


def runtime_path(configured: str = "", condor_singularity: Optional[str] = None) -> str:
    """The file find_runtime looks at (a module command aside), whether or not
    it is there now: the configured runtime, else HTCondor's SINGULARITY, else
    the first of RUNTIME_NAMES in PATH; a name is resolved in PATH ('' when it
    is not there)."""
    name = configured or condor_singularity
    if name:
        return name if os.path.isabs(name) else (shutil.which(name) or "")
    return next((path for path in map(shutil.which, RUNTIME_NAMES) if path), "")


def find_runtime(configured: str = "", module_command: str = "", condor_singularity: Optional[str] = None,
                 run: Run = _run_command) -> Tuple[Optional[Runtime], str]:
    """(runtime, '') or (None, why there is none).

    configured: STARTD_HEALTH_CONTAINER_RUNTIME (path or name); module_command:
    STARTD_HEALTH_CONTAINER_MODULE; condor_singularity: HTCondor's SINGULARITY
    (None without an HTCondor configuration)."""
    if configured:
        path = runtime_path(configured)
        if path and os.access(path, os.X_OK):
            return Runtime(path, "STARTD_HEALTH_CONTAINER_RUNTIME"), ""
        return None, f"configured runtime {configured} is not an executable"
    if module_command:
        return runtime_from_module(module_command, run)
    if condor_singularity:
        # What the starter will run: test exactly that. A look-alike from PATH
        # would keep a node "healthy" whose configured runtime is gone
        # (measured in benchmarks/fault_experiment.py: 34 jobs landed there).
        path = runtime_path("", condor_singularity)
        if path and os.access(path, os.X_OK) and not os.path.isdir(path):
            return Runtime(path, "HTCondor SINGULARITY"), ""
        return None, f"HTCondor's SINGULARITY ({condor_singularity}) is not an executable"
    path = runtime_path()   # no HTCondor configuration: what a job would find
    if path:
        return Runtime(path, "PATH"), ""
    return None, "no apptainer or singularity in PATH (" + os.environ.get("PATH", "") + ")"


def runtime_from_module(module_command: str, run: Run = _run_command) -> Tuple[Optional[Runtime], str]:
    """Run e.g. `module load apptainer` in a login shell; take the runtime and environment it leaves."""
    shell = "/bin/bash" if os.path.exists("/bin/bash") else "/bin/sh"
    script = (module_command + " >&2 || exit 97\n"
              "p=$(command -v apptainer || command -v singularity) || exit 98\n"
              "printf '%s\\n' \"$p\"; env -0\n")
    result = run([shell, "-lc", script], timeout=MODULE_TIMEOUT)
    if result.returncode == 98:
        return None, f"no apptainer or singularity after {module_command!r}"
    if not result.ok:
        return None, f"{module_command!r} failed: {result.describe_failure()}"
    path, _, env_text = result.stdout.partition("\n")
    env = dict(item.split("=", 1) for item in env_text.split("\0") if "=" in item)
    return Runtime(path.strip(), f"module command {module_command!r}", env), ""


def parse_version(text: str) -> Tuple[str, str]:
    """'apptainer version 1.4.5-1' -> ('apptainer', '1.4.5-1')."""
    line = last_line(text)
    match = re.match(r"^\s*([A-Za-z][\w.-]*)\s+version\s+(\S+)", line)
    if match:
        return match.group(1), match.group(2)
    return "", line


def classify_uid_map(text: str, uid: int) -> str:
    """Mode from /proc/self/uid_map as seen inside the container; '' if not a uid_map."""
    rows = []
    for line in text.strip().splitlines():
        fields = line.split()
        if len(fields) != 3 or not all(f.isdigit() for f in fields):
            return ""
        rows.append(tuple(int(f) for f in fields))
    if not rows:
        return ""
    inside_id, outside, count = rows[0]
    if inside_id == 0 and outside == 0 and count == 4294967295:
        return "privileged"            # no user namespace: setuid starter, or running as root
    if inside_id == uid and outside == uid:
        return "unprivileged"          # user namespace mapping our own uid
    if inside_id == 0 and outside == uid:
        return "fakeroot"
    return "unprivileged"


def own_pid_namespace() -> str:
    try:
        return os.readlink("/proc/self/ns/pid")
    except OSError:
        return ""


def exec_argv(runtime: Runtime, flags: Sequence[str], image_path: str, *command: str) -> List[str]:
    """`<runtime> exec <flags> <image> <command...>`."""
    return [runtime.path, "exec", *flags, image_path, *command]


def launch(run: Run, runtime: Runtime, image: str, path: str, flags: Sequence[str], timeout: float,
           inside_script: str, cvmfs_repos: Sequence[str] = ()) -> Launch:
    """Launch one image running the inside script (system/inside.py) and judge what it printed."""
    return launch_argv(run, image, path, exec_argv(runtime, flags, path, "/bin/sh", "-c", inside_script), timeout,
                       cvmfs_repos, env=runtime.env)


def launch_argv(run: Run, image: str, path: str, argv: Sequence[str], timeout: float, cvmfs_repos: Sequence[str] = (),
                env: Optional[Mapping[str, str]] = None, cwd: Optional[str] = None, uid: Optional[int] = None) -> Launch:
    """Run a complete launch command line (ending in the inside script) and judge
    what it printed. uid: the account it runs as (ours unless dropped to another)."""
    kwargs = {"cwd": cwd} if cwd else {}
    result = run(list(argv), timeout=timeout, env=env, **kwargs)
    if not result.ok:
        return Launch(image, path, False, result.duration_seconds, error=result.describe_failure(),
                      left_behind=result.left_behind)
    report = inside.parse(result.stdout, cvmfs_repos)
    return replace(judge_launch(image, path, result.duration_seconds, report, os.getuid() if uid is None else uid,
                                own_pid_namespace(), last_line(result.stdout)),
                   left_behind=result.left_behind, platform=platform_of(report))


def platform_of(report: inside.InsideReport) -> Optional[platforms.Platform]:
    """The platform the inside script's platform section found (None: the section did not run)."""
    if not (report.os_release or report.arch or report.libc):
        return None
    return platforms.identify(report.os_release, report.arch, report.libc)


def judge_launch(image: str, path: str, seconds: float, report: inside.InsideReport, uid: int, our_pidns: str,
                 last: str = "") -> Launch:
    if not report.finished:
        return Launch(image, path, False, seconds, error=f"exit 0 but the inside script did not finish: {last!r}")
    mode = classify_uid_map(report.uid_map, uid)
    if not mode:
        return Launch(image, path, False, seconds, error=f"unexpected uid_map inside: {report.uid_map!r}")
    pidns = bool(report.pidns and our_pidns and report.pidns != our_pidns) if report.pidns else None
    failures = report.failures
    if failures:
        return Launch(image, path, False, seconds, mode=mode, pid_namespace=pidns,
                      error="inside: " + "; ".join(failures))
    return Launch(image, path, True, seconds, mode=mode, pid_namespace=pidns)
