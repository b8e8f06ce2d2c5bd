"""Container runtime probe: is there an Apptainer/Singularity that can start
the site's images, in which mode, and how fast?

Gather (touches the system, only through ctx.run): find the runtime, read its
version, launch each configured image with the configured flags running
`cat /proc/self/uid_map`. Judge (pure): turn those facts into a result.

Each launch runs the inside script of probes/_inside.py (POSIX sh only:
images are arbitrary): uid map, pid namespace, writable /tmp and home,
expected bind mounts. An image passes only when it launches, the script runs
to its end, and every inside check passes.

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
from dataclasses import dataclass
from typing import Mapping, Optional, Sequence, Tuple

from startd_health.core.config import (Knob, format_args, parse_args, parse_bool, parse_list, parse_positive_seconds,
                                       parse_string)
from startd_health.core.model import Measurement, Probe, ProbeResult, Status
from startd_health.system.procs import CommandResult, last_line

from . import _inside as inside
from . import cvmfs

RUNTIME_NAMES = ("apptainer", "singularity")
DEFAULT_FLAGS = "--ipc --pid --contain"   # the OSG/GlideinWMS set
VERSION_TIMEOUT = 10.0
_IMAGE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


def parse_images(text: str) -> Tuple[str, ...]:
    """`name=path` or `path` entries -> normalised `name=path` entries.

    The name is what jobs match on (e.g. el9); without one it is the file
    name less a .sif/.img suffix.
    """
    entries = []
    seen = set()
    for item in parse_list(text):
        name, sep, path = item.partition("=")
        if not sep:
            path = item
            base = os.path.basename(path.rstrip("/")) or path
            name = re.sub(r"\.(sif|img|simg)$", "", base)
            name = re.sub(r"[^A-Za-z0-9_.-]+", "_", name).lstrip("._-") or "image"
        if not path:
            raise ValueError(f"image entry {item!r} has no path")
        if not _IMAGE_NAME.match(name):
            raise ValueError(f"image name {name!r} must be letters, digits, '_', '.' or '-'")
        if name in seen:
            raise ValueError(f"image name {name!r} is used twice (name them: name=path)")
        seen.add(name)
        entries.append(f"{name}={path}")
    return tuple(entries)


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


@dataclass(frozen=True)
class Gathered:
    runtime: Optional[Runtime]
    runtime_error: str = ""
    name: str = ""           # apptainer | singularity | singularity-ce ...
    version: str = ""
    version_error: str = ""
    launches: Tuple[Launch, ...] = ()


# ---------------------------------------------------------------- gather

def find_runtime(ctx) -> Tuple[Optional[Runtime], str]:
    configured = ctx.settings["runtime"]
    if configured:
        path = configured if os.path.isabs(configured) else shutil.which(configured)
        if path and os.access(path, os.X_OK):
            return Runtime(path, "STARTD_HEALTH_CONTAINER_RUNTIME"), ""
        return None, f"configured runtime {configured} is not an executable"
    module_command = ctx.settings["module"]
    if module_command:
        return runtime_from_module(ctx, module_command)
    condor_path = ctx.condor.get("SINGULARITY") if ctx.condor is not None else None
    if condor_path:
        # What the starter will run: test exactly that. A look-alike from PATH
        # would keep a node "healthy" whose configured runtime is gone
        # (measured in benchmarks/fault_experiment.py: 34 jobs landed there).
        path = condor_path if os.path.isabs(condor_path) else shutil.which(condor_path)
        if path and os.access(path, os.X_OK) and not os.path.isdir(path):
            return Runtime(path, "HTCondor SINGULARITY"), ""
        return None, f"HTCondor's SINGULARITY ({condor_path}) is not an executable"
    for name in RUNTIME_NAMES:   # no HTCondor configuration: what a job would find
        path = shutil.which(name)
        if path:
            return Runtime(path, "PATH"), ""
    return None, "no apptainer or singularity in PATH (" + os.environ.get("PATH", "") + ")"


def runtime_from_module(ctx, module_command: str) -> Tuple[Optional[Runtime], str]:
    """Run e.g. `module load apptainer` in a login shell; take the runtime and environment it leaves."""
    shell = "/bin/bash" if os.path.exists("/bin/bash") else "/bin/sh"
    script = (module_command + " >&2 || exit 97\n"
              "p=$(command -v apptainer || command -v singularity) || exit 98\n"
              "printf '%s\\n' \"$p\"; env -0\n")
    result = ctx.run([shell, "-lc", script], timeout=VERSION_TIMEOUT)
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
    inside, outside, count = rows[0]
    if inside == 0 and outside == 0 and count == 4294967295:
        return "privileged"            # no user namespace: setuid starter, or running as root
    if inside == uid and outside == uid:
        return "unprivileged"          # user namespace mapping our own uid
    if inside == 0 and outside == uid:
        return "fakeroot"
    return "unprivileged"


def own_pid_namespace() -> str:
    try:
        return os.readlink("/proc/self/ns/pid")
    except OSError:
        return ""


def launch(ctx, runtime: Runtime, image: str, path: str, flags: Sequence[str], timeout: float,
           inside_script: str, cvmfs_repos: Sequence[str] = ()) -> Launch:
    result: CommandResult = ctx.run([runtime.path, "exec", *flags, path, "/bin/sh", "-c", inside_script],
                                    timeout=timeout, env=runtime.env)
    if not result.ok:
        return Launch(image, path, False, result.duration_seconds, error=result.describe_failure())
    return judge_launch(image, path, result.duration_seconds, inside.parse(result.stdout), os.getuid(),
                        own_pid_namespace(), last_line(result.stdout), cvmfs_repos)


def judge_launch(image: str, path: str, seconds: float, report: inside.InsideReport, uid: int, our_pidns: str,
                 last: str = "", cvmfs_repos: Sequence[str] = ()) -> Launch:
    if not report.finished:
        return Launch(image, path, False, seconds, error=f"exit 0 but the inside script did not finish: {last!r}")
    mode = classify_uid_map(report.uid_map, uid)
    if not mode:
        return Launch(image, path, False, seconds, error=f"unexpected uid_map inside: {report.uid_map!r}")
    pidns = bool(report.pidns and our_pidns and report.pidns != our_pidns) if report.pidns else None
    failures = list(report.failures)
    if cvmfs_repos:
        seen = cvmfs.parse_inside("\n".join(report.other), cvmfs_repos)
        failures += [f"cvmfs {repo}: {seen[repo].reason}" for repo in cvmfs_repos if not seen[repo].ok]
    if failures:
        return Launch(image, path, False, seconds, mode=mode, pid_namespace=pidns,
                      error="inside: " + "; ".join(failures))
    return Launch(image, path, True, seconds, mode=mode, pid_namespace=pidns)


CONDOR_IMAGE_NAME = "condor_default"


def condor_default_image(expr: Optional[str]) -> str:
    """The path HTCondor's SINGULARITY_IMAGE_EXPR names, when it is a plain
    string (not an expression of the job ad, which only a job can resolve)."""
    if not expr or not expr.strip():
        return ""
    try:
        import classad2
        value = classad2.ExprTree(expr).eval()
    except Exception:  # not a valid expression: not ours to judge here
        return ""
    return value if isinstance(value, str) and value.startswith("/") else ""


def images_to_test(ctx) -> Tuple[Tuple[str, str], ...]:
    images = [tuple(entry.split("=", 1)) for entry in ctx.settings["images"]]
    if ctx.settings.get("condor_image", True) and ctx.condor is not None:
        path = condor_default_image(ctx.condor.get("SINGULARITY_IMAGE_EXPR"))
        if path and path not in {p for _, p in images}:
            images.append((CONDOR_IMAGE_NAME, path))
    return tuple(images)  # type: ignore[return-value]


def gather(ctx) -> Gathered:
    runtime, error = find_runtime(ctx)
    if runtime is None:
        return Gathered(None, runtime_error=error)
    version = ctx.run([runtime.path, "--version"], timeout=VERSION_TIMEOUT, env=runtime.env)
    if not version.ok:
        return Gathered(runtime, version_error=version.describe_failure())
    if not version.stdout.strip():
        return Gathered(runtime, version_error="exit 0 but printed no version")
    name, number = parse_version(version.stdout)
    launches = []
    repos = tuple(ctx.settings.get("cvmfs_repositories") or ()) if ctx.settings.get("cvmfs", True) else ()
    sections = [cvmfs.inside_script(ctx.settings["cvmfs_root"], repos)] if repos else []
    script = inside.script(ctx.settings["binds"], sections)
    for image, path in images_to_test(ctx):
        launches.append(launch(ctx, runtime, image, path, ctx.settings["flags"], ctx.settings["launch_timeout"],
                               script, repos))
    return Gathered(runtime, name=name or os.path.basename(runtime.path), version=number, launches=tuple(launches))


# ---------------------------------------------------------------- judge

REQUIREMENT_LEVELS = ("REQUIRED", "OPTIONAL", "NEVER")


def parse_requirement(text: str) -> str:
    level = text.strip().upper()
    if level not in REQUIREMENT_LEVELS:
        raise ValueError("expected REQUIRED, OPTIONAL or NEVER")
    return level


def apply_requirement(result: ProbeResult, level: str) -> ProbeResult:
    """The site's policy (GlideinWMS' requirement levels) on top of the findings.

    REQUIRED: any container problem fails the node. OPTIONAL: it only
    degrades it; the node stays usable for jobs that do not need a container
    and advertises what works (available, images_ok). NEVER: see skipped()."""
    facts = dict(result.facts, requirement=level)
    status = result.status
    if level == "OPTIONAL" and status is Status.FAILED:
        status = Status.DEGRADED
    return ProbeResult(result.probe, status, result.reason, facts, result.measurements)


def skipped_by_policy() -> ProbeResult:
    return ProbeResult("container", Status.SKIPPED, "containers not used here (STARTD_HEALTH_CONTAINER_REQUIREMENT "
                       "= NEVER)", {"available": False, "requirement": "NEVER"})


def judge(g: Gathered, partial_ok: bool = False) -> ProbeResult:
    """partial_ok: some images launching is only DEGRADED (jobs match on the
    images_ok list); otherwise any configured image that fails fails the probe."""
    if g.runtime is None:
        return ProbeResult("container", Status.FAILED, g.runtime_error, {"available": False})
    facts = {"path": g.runtime.path}
    if g.version_error:
        return ProbeResult("container", Status.FAILED, f"{g.runtime.path} --version: {g.version_error}",
                           dict(facts, available=False))
    ok = tuple(l.image for l in g.launches if l.ok)
    bad = tuple(l.image for l in g.launches if not l.ok)
    modes = sorted({l.mode for l in g.launches if l.ok})
    facts.update(runtime=g.name, version=g.version, images_ok=ok, images_failed=bad,
                 mode=",".join(modes), available=bool(ok) or not g.launches,
                 image_errors=tuple(f"{l.image}: {l.error}" for l in g.launches if not l.ok))
    pidns = [l.pid_namespace for l in g.launches if l.ok and l.pid_namespace is not None]
    if pidns:
        facts["pid_namespace"] = all(pidns)
    measurements = tuple(Measurement("launch", l.seconds, "seconds", {"image": l.image}) for l in g.launches if l.ok)
    what = f"{g.name} {g.version}" + (f" ({facts['mode']})" if modes else "")
    if not g.launches:
        return ProbeResult("container", Status.OK, f"{what}; no image configured to launch", facts, measurements)
    errors = "; ".join(f"{l.image}: {l.error}" for l in g.launches if not l.ok)
    summary = f"{what}: {len(ok)}/{len(g.launches)} images launch"
    if not bad:
        return ProbeResult("container", Status.OK, summary, facts, measurements)
    status = Status.DEGRADED if ok and partial_ok else Status.FAILED
    return ProbeResult("container", status, f"{summary}; {errors}", facts, measurements)


class ContainerProbe(Probe):
    name = "container"
    shared_knobs = ("CVMFS_REPOSITORIES", "CVMFS_ROOT")
    description = "Apptainer/Singularity: found, version, launch of each configured image, mode, launch time"
    default_period = 300.0
    default_timeout = 120.0
    knobs = (
        Knob("CONTAINER_REQUIREMENT", parse_requirement, "OPTIONAL", "REQUIRED: a container problem makes the node "
             "refuse all jobs; OPTIONAL: it only degrades the node, which advertises that containers do not "
             "work (StartdHealthContainerAvailable = false); NEVER: containers are not used, nothing is tested",
             "LEVEL"),
        Knob("CONTAINER_RUNTIME", parse_string, "", "runtime to test (path or name); default: HTCondor's "
             "SINGULARITY if it is an executable, else apptainer or singularity from PATH", "PATH"),
        Knob("CONTAINER_MODULE", parse_string, "", "shell command that makes the runtime available, run in a "
             "login shell (e.g. 'module load apptainer')", "COMMAND"),
        Knob("CONTAINER_IMAGES", parse_images, (), "images to launch, as [name=]path entries separated by "
             "commas or spaces; the names are what jobs match on", "LIST"),
        Knob("CONTAINER_FLAGS", parse_args, parse_args(DEFAULT_FLAGS), "flags given to `exec` for each "
             "launch test", "FLAGS", format_args),
        Knob("CONTAINER_LAUNCH_TIMEOUT", parse_positive_seconds, 30.0, "budget for one image launch", "SECONDS"),
        Knob("CONTAINER_BINDS", parse_list, (), "paths that must be present inside every image (bind mounts "
             "such as /cvmfs; give the matching --bind in CONTAINER_FLAGS if HTCondor adds it for jobs)", "LIST"),
        Knob("CONTAINER_CONDOR_IMAGE", parse_bool, True, "also launch the image HTCondor's SINGULARITY_IMAGE_EXPR "
             "names when it is a plain path (published as condor_default)", "BOOL"),
        Knob("CONTAINER_CVMFS", parse_bool, True, "also check the CVMFS repositories "
             "(STARTD_HEALTH_CVMFS_REPOSITORIES) inside every image; bind /cvmfs in CONTAINER_FLAGS as jobs get it",
             "BOOL"),
        Knob("CONTAINER_PARTIAL_OK", parse_bool, False, "when some but not all images launch, report "
             "degraded (node stays usable; jobs must match on StartdHealthContainerImagesOk) instead of failed",
             "BOOL"),
    )

    def run(self, ctx) -> ProbeResult:
        level = ctx.settings["requirement"]
        if level == "NEVER":
            return skipped_by_policy()
        return apply_requirement(judge(gather(ctx), ctx.settings["partial_ok"]), level)
