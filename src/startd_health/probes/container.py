"""Container runtime probe: is there an Apptainer/Singularity that can start
the site's images, in which mode, and how fast?

Gather (touches the system, only through ctx.run): find the runtime, read its
version, launch each configured image with the configured flags running
`cat /proc/self/uid_map`. Judge (pure): turn those facts into a result.

Each launch runs the inside script of system/inside.py (POSIX sh only:
images are arbitrary): uid map, pid namespace, writable /tmp and home,
expected bind mounts, CVMFS repositories. An image passes only when it
launches, the script runs to its end, and every inside check passes. Finding
the runtime and judging a launch (the mode from the uid map) live in
system/container.py, shared with the GPU probe and the pre-job hook.
"""

from __future__ import annotations

import os
import re
import time
from dataclasses import dataclass
from typing import Optional, Tuple

from startd_health.core.config import (Knob, format_args, parse_args, parse_bool, parse_list, parse_positive_seconds,
                                       parse_string)
from startd_health.core.model import Measurement, Probe, ProbeContext, ProbeResult, Status
from startd_health.system import container as runtimes
from startd_health.system import inside
from startd_health.system.container import Launch, Runtime
from startd_health.system import starter_scratch

from startd_health.system import launch_guard

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
class Gathered:
    runtime: Optional[Runtime]
    runtime_error: str = ""
    name: str = ""           # apptainer | singularity | singularity-ce ...
    version: str = ""
    version_error: str = ""
    launches: Tuple[Launch, ...] = ()
    starter: Optional[starter_scratch.StarterFacts] = None   # the launch's facts (the starter's, or our own)


# ---------------------------------------------------------------- gather

def find_runtime(ctx: ProbeContext) -> Tuple[Optional[Runtime], str]:
    condor_path = ctx.condor.get("SINGULARITY") if ctx.condor is not None else None
    return runtimes.find_runtime(ctx.settings["runtime"], ctx.settings["module"], condor_path, ctx.run)


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


def images_to_test(ctx: ProbeContext) -> Tuple[Tuple[str, str], ...]:
    images = [tuple(entry.split("=", 1)) for entry in ctx.settings["images"]]
    if ctx.settings.get("condor_image", True) and ctx.condor is not None:
        path = condor_default_image(ctx.condor.get("SINGULARITY_IMAGE_EXPR"))
        if path and path not in {p for _, p in images}:
            images.append((CONDOR_IMAGE_NAME, path))
    return tuple(images)  # type: ignore[return-value]


def gather(ctx: ProbeContext) -> Gathered:
    found, error = find_runtime(ctx)
    if found is None:
        return Gathered(None, runtime_error=error)
    version = ctx.run([found.path, "--version"], timeout=VERSION_TIMEOUT, env=found.env)
    if not version.ok:
        return Gathered(found, version_error=version.describe_failure())
    if not version.stdout.strip():
        return Gathered(found, version_error="exit 0 but printed no version")
    name, number = runtimes.parse_version(version.stdout)
    launches = []
    repos = tuple(ctx.settings.get("cvmfs_repositories") or ()) if ctx.settings.get("cvmfs", True) else ()
    script = inside.script(ctx.settings["binds"], ctx.settings.get("cvmfs_root") or "/cvmfs", repos)
    # As the starter launches for a job (its knobs, a job account, a scratch
    # directory on EXECUTE) when HTCondor is configured: system/starter_scratch.py.
    starter = starter_scratch.prepare(ctx, found, name == "apptainer" or "apptainer" in version.stdout)
    for index, (image, path) in enumerate(images_to_test(ctx)):
        # Not into a known trap: each try would leave one more stuck process.
        refused = launch_guard.refused(ctx, image, launch_guard.touched_repositories(ctx.settings, path))
        if refused:
            launches.append(Launch(image, path, False, 0.0, error=refused))
            continue
        started = time.time()
        if starter is not None:
            launches.append(starter_scratch.launch(ctx, starter, found, image, path, index, script, repos))
        else:
            launches.append(runtimes.launch(ctx.run, found, image, path, ctx.settings["flags"],
                                            ctx.settings["launch_timeout"], script, repos))
        launch_guard.remember(ctx, image, launches[-1].left_behind, started)
    if starter is None:   # our own launch: the runtime's scratch is its defaults
        starter = starter_scratch.own(ctx, found, images_to_test(ctx))
    starter = starter_scratch.finish(ctx, starter, found, [l.mode for l in launches if l.ok])
    return Gathered(found, name=name or os.path.basename(found.path), version=number, launches=tuple(launches),
                    starter=starter)


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
    notes = ""
    if g.starter is not None:
        facts.update(starter_scratch.facts(g.starter))
        notes = starter_scratch.notes(g.starter)
    what = f"{g.name} {g.version}" + (f" ({facts['mode']})" if modes else "")
    if not g.launches:
        return ProbeResult("container", Status.OK, f"{what}; no image configured to launch{notes}", facts,
                           measurements)
    errors = "; ".join(f"{l.image}: {l.error}" for l in g.launches if not l.ok)
    summary = f"{what}: {len(ok)}/{len(g.launches)} images launch"
    if not bad:
        status = Status.DEGRADED if g.starter is not None and g.starter.warnings else Status.OK
        return ProbeResult("container", status, summary + notes, facts, measurements)
    status = Status.DEGRADED if ok and partial_ok else Status.FAILED
    return ProbeResult("container", status, f"{summary}; {errors}{notes}", facts, measurements)


def resolved_runtime(config) -> Tuple[str, str]:
    """For `startd-health config`: the runtime an empty CONTAINER_RUNTIME
    stands for here, found as the probe finds it (a module command is not
    run just to show it)."""
    module_command = config["CONTAINER_MODULE"]
    if module_command:
        return "", f"what {module_command!r} (STARTD_HEALTH_CONTAINER_MODULE) puts in PATH"
    condor_path = config.condor.get("SINGULARITY") if config.condor is not None else None
    runtime, error = runtimes.find_runtime("", "", condor_path)
    return (runtime.path, f"found via {runtime.source}") if runtime else ("", f"none: {error}")


class ContainerProbe(Probe):
    name = "container"
    shared_knobs = ("CVMFS_REPOSITORIES", "CVMFS_ROOT")
    description = "Apptainer/Singularity: found, version, launch of each configured image, mode, launch time"
    default_period = 300.0
    default_timeout = 120.0
    knobs = (
        Knob("CONTAINER_REQUIREMENT", parse_requirement, "OPTIONAL", "`REQUIRED`: a container problem makes the "
             "node refuse all jobs; `OPTIONAL`: it only degrades the node, which advertises "
             "`StartdHealthContainerAvailable = false`; `NEVER`: containers are not used, nothing is tested",
             "LEVEL"),
        Knob("CONTAINER_RUNTIME", parse_string, "", "runtime to test (path or name)", "PATH",
             default_text="HTCondor's `SINGULARITY` when HTCondor is configured (no PATH fallback then: "
             "the probe tests what the starter runs), else `apptainer`/`singularity` from PATH",
             resolve=resolved_runtime),
        Knob("CONTAINER_MODULE", parse_string, "", "shell command that makes the runtime available, run in a "
             "login shell (e.g. `module load apptainer`)", "COMMAND"),
        Knob("CONTAINER_IMAGES", parse_images, (), "images to launch, as `[name=]path` entries separated by "
             "commas or spaces; the names are what jobs match on", "LIST"),
        Knob("CONTAINER_FLAGS", parse_args, parse_args(DEFAULT_FLAGS), "flags given to `exec` for each "
             "launch test (the default is the OSG set)", "FLAGS", format_args),
        Knob("CONTAINER_LAUNCH_TIMEOUT", parse_positive_seconds, 30.0, "budget for one image launch", "SECONDS"),
        Knob("CONTAINER_BINDS", parse_list, (), "paths that must be present inside every image (bind mounts "
             "such as `/cvmfs`; give the matching `--bind` in CONTAINER_FLAGS if HTCondor adds it for jobs)",
             "LIST"),
        Knob("CONTAINER_CONDOR_IMAGE", parse_bool, True, "also launch the image HTCondor's "
             "`SINGULARITY_IMAGE_EXPR` names when it is a plain path (published as image `condor_default`): "
             "the probe tests what HTCondor will use", "BOOL"),
        Knob("CONTAINER_CVMFS", parse_bool, True, "also check the CVMFS repositories "
             "(`STARTD_HEALTH_CVMFS_REPOSITORIES`) inside every image; put the `--bind /cvmfs` your jobs get "
             "into `STARTD_HEALTH_CONTAINER_FLAGS`",
             "BOOL"),
        Knob("CONTAINER_STARTER_LAUNCH", parse_bool, True, "with HTCondor configured, launch as the starter "
             "launches a job: its arguments (`SINGULARITY_*`, `MOUNT_UNDER_SCRATCH`; containment flags of "
             "CONTAINER_FLAGS are then HTCondor's business, other flags are appended), as the job account, in a "
             "scratch directory on EXECUTE with the starter's environment", "BOOL"),
        Knob("CONTAINER_JOB_USER", parse_string, "", "the unprivileged account that stands for job users: "
             "run as root the launch drops to it; run as condor (a STARTD_CRON job) its access to each image and "
             "to EXECUTE is judged from the permission bits", "USER",
             default_text="HTCondor's `SLOT1_USER` when set, else `nobody`"),
        Knob("CONTAINER_PARTIAL_OK", parse_bool, False, "when some but not all images launch, report "
             "degraded (node stays usable; jobs must match on `StartdHealthContainerImagesOk`) instead of failed",
             "BOOL"),
    )

    def run(self, ctx: ProbeContext) -> ProbeResult:
        level = ctx.settings["requirement"]
        if level == "NEVER":
            return skipped_by_policy()
        return apply_requirement(judge(gather(ctx), ctx.settings["partial_ok"]), level)
