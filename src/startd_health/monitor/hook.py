"""`startd-health hook prepare-job`: HTCondor's <KEYWORD>_HOOK_PREPARE_JOB.

The starter runs it as the JOB's user (seen on the real startd, HTCondor
23.9.6 and 25.14.1 as root: the submitting user's uid and gid, neither root
nor condor), in the job's scratch directory, with the job ad on stdin,
before the job starts; a non-zero exit holds the job (HoldReasonCode 19,
HoldReasonSubCode = our exit status) with our message, and there is no
timeout but ours. So it must be fast and bounded:

- first, EVERY time, the invariants that cost milliseconds are re-checked
  (recheck()), even when the last periodic result is fresh: a node can
  break between two periodic runs, and at the shipped 300 s period every
  job would land on it meanwhile. The CVMFS repositories the job needs (the
  configured STARTD_HEALTH_CVMFS_REPOSITORIES and the one holding the image
  or the runtime) are mounted (/proc/self/mounts, never a stat of the mount
  point), none is one the cvmfs probe found hung, the runtime the starter
  will run is executable and the image exists and is readable (a SIF's
  header against its size: a truncated copy too), the host paths
  SINGULARITY_EXTRA_ARGUMENTS binds exist, and the job's scratch directory
  ($_CONDOR_SCRATCH_DIR, on EXECUTE) is writable with the space and inodes
  the execute probe requires, all as the job's user.
  The paths are touched only in a child with a budget (RECHECK_TIMEOUT),
  which is abandoned if a hung mount blocks it. A site fault found here
  requeues the job (HookStatusCode 300) and asks the startd-health daemon,
  if one runs, to re-probe at once (monitor/recheck.py), so that the node
  is fenced before the next job arrives. The job's OWN image missing or
  unreadable holds the job, as a launch failing would;
- then the job's container image (SingularityImage, or ContainerImage in the
  container universe) is accepted at once when the last periodic container
  result says it launches and is fresh (younger than the probe's period);
- otherwise it is launched once, now, with the configured flags and the same
  checks inside as the probe, within HOOK_TIMEOUT;
- an image that does not launch is the job's problem when it is not one of
  the site's configured images: the job is held with the reason (exit 1).
  A site image that fails here while the periodic probe said it was fine is
  a node fault: the job is sent back to the queue (HookStatusCode = 300)
  rather than held, since the job itself is fine.

The hook holds a job only when it has seen the job's own image fail. When
it cannot check at all (a job ad it cannot read, an image given as an
expression it cannot evaluate without the HTCondor bindings, a configuration
error, its own internal error) the job starts (exit 0) and HookStatusMessage
says what was not checked: holding would blame the job for the node's
problem, and requeueing (300) would bring the job straight back to this
node every ~25 s; the periodic verdict still guards the node, and the
starter's own container test still runs.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from dataclasses import dataclass
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

from startd_health.monitor.job_ad import Unreadable, read_attributes

EXIT_ACCEPT, EXIT_HOLD = 0, 1
REQUEUE_STATUS = 300
# The child that touches the job's paths: a healthy local or CVMFS path
# answers in milliseconds (a cold autofs mount in about a second); a hung
# mount never does, and the job is better requeued than kept waiting.
RECHECK_TIMEOUT = 5.0
POKE_TIMEOUT = 1.0          # asking the daemon to re-check: a local socket


@dataclass(frozen=True)
class Decision:
    accept: bool
    message: str
    requeue: bool = False   # node fault: back to idle instead of held

    def emit(self) -> int:
        from startd_health.monitor.cron import render_value
        out = [f"HookStatusMessage = {render_value('startd-health: ' + self.message)}"]
        if self.requeue:
            out.append(f"HookStatusCode = {REQUEUE_STATUS}")
        sys.stdout.write("".join(line + "\n" for line in out))
        sys.stdout.flush()
        return EXIT_ACCEPT if self.accept or self.requeue else EXIT_HOLD


IMAGE_ATTRIBUTES = ("SingularityImage", "ContainerImage")   # in the order the starter uses them


def job_image(job_ad: Mapping[str, Any]) -> Tuple[str, str]:
    """(the job's container image or '', why it could not be read or '')."""
    for name in IMAGE_ATTRIBUTES:
        value = job_ad.get(name)
        if isinstance(value, Unreadable):
            return "", f"{name} {value.why}"
        if isinstance(value, str) and value:
            return value, ""
    return "", ""


PLATFORM_IMAGE_ATTRIBUTE = "StartdHealthContainerImage_"   # what 55-startd-health-platforms.conf looks up


def platform_image(job_ad: Mapping[str, Any], cached: Optional[Any], condor: Any) -> str:
    """The image 55-startd-health-platforms.conf's SINGULARITY_IMAGE_EXPR gives
    a job that asks for a platform (REQUIRED_OS) and names no image, picked
    as the snippet picks it (the first of up to four platforms, in the job's
    order, with a healthy image; "any": the default image) from the container
    probe's last result; '' when the snippet is not in use or nothing fits."""
    import re

    expr = condor.get("SINGULARITY_IMAGE_EXPR") if condor is not None else None
    wanted = job_ad.get("REQUIRED_OS")
    if not (isinstance(expr, str) and PLATFORM_IMAGE_ATTRIBUTE in expr) or not isinstance(wanted, str) \
            or cached is None:
        return ""
    from startd_health.core.model import keyed_items
    by_platform = dict(keyed_items(cached.facts.get("image_by_platform", ())))
    for name in [w for w in re.split(r"[, ]+", wanted.lower()) if w][:4]:   # as ClassAd split(s, ", ")
        path = by_platform.get("default" if name == "any" else name)
        if path:
            return path
    return ""


def read_job_ad(text: str) -> Mapping[str, Any]:
    return read_attributes(text, IMAGE_ATTRIBUTES + ("REQUIRED_OS",))


def not_checked(why: str) -> Decision:
    return Decision(True, f"the job's container image was not checked: {why}")


@dataclass(frozen=True)
class Finding:
    """What recheck() found wrong; node_fault: the site's (requeue), else the job's own image (hold)."""
    message: str
    node_fault: bool = True
    probes: Tuple[str, ...] = ("container",)   # what the daemon should re-probe


def runtime_to_check(settings: Mapping[str, Any], condor: Any) -> str:
    """The runtime the launch would use (system/container.find_runtime's order), for _job_paths.py:
    '' when a cheap check cannot know it (a module command is a login shell, not milliseconds);
    names separated by | are looked up in PATH in turn."""
    from startd_health.system.container import RUNTIME_NAMES
    if settings.get("runtime"):
        return str(settings["runtime"])
    if settings.get("module"):
        return ""
    if condor is not None and condor.get("SINGULARITY"):
        return str(condor.get("SINGULARITY"))
    return "|".join(RUNTIME_NAMES)


def is_local_path(image: str) -> bool:
    """A file or directory on this node, not docker://, oras://, library:// (the runtime fetches those)."""
    return bool(image) and "://" not in image


def extra_bind_sources(condor: Any) -> List[str]:
    """The host paths HTCondor's SINGULARITY_EXTRA_ARGUMENTS binds."""
    from startd_health.system.starter_launch import extra_bind_sources as sources
    return sources(str(condor.get("SINGULARITY_EXTRA_ARGUMENTS") or "") if condor is not None else "")


def recheck_paths(repos: Sequence[str], root: str, runtime: str, image: str, binds: Sequence[str] = (),
                  scratch: str = "") -> List[str]:
    """The _job_paths.py arguments: repositories first (an access mounts them under autofs)."""
    args = [f"d:{os.path.join(root, repo)}" for repo in repos]
    if runtime:
        args.append(f"x:{runtime}")
    if is_local_path(image):
        args.append(f"r:{image}")
    args += [f"e:{path}" for path in binds]
    if scratch:
        args.append(f"w:{scratch}")
    return args


def judge_recheck(image: str, site_name: str, repos: Sequence[str], root: str, answers: Sequence[Mapping[str, Any]],
                  pending: Sequence[str], timeout: float, mounts: Optional[Mapping[str, Any]],
                  mounts_error: str, thresholds: Any = None) -> Optional[Finding]:
    """Pure: the child's answers (one per path it got to; pending: the KIND:PATH it did not answer,
    after timeout seconds) and the mount table read after it -> what is wrong, or None.
    thresholds: the execute probe's, for the job's scratch directory (None: not judged)."""
    from startd_health.probes.cvmfs import is_cvmfs   # one definition of what a CVMFS mount looks like
    if pending:   # the child answers in order: it is stuck on the first one it did not answer
        return Finding(f"a path this job needs did not answer within {timeout:g}s: "
                       f"{pending[0].partition(':')[2]} (a hung mount?)", probes=("cvmfs", "container"))
    by_kind: Dict[str, Mapping[str, Any]] = {a.get("kind", ""): a for a in answers if a.get("kind") != "d"}
    for repo, answer in zip(repos, [a for a in answers if a.get("kind") == "d"]):
        point = os.path.join(root, repo)
        if mounts is None:
            return Finding(f"cannot tell whether CVMFS repository {repo} is mounted: {mounts_error}",
                           probes=("cvmfs", "container"))
        mount = mounts.get(answer.get("realpath") or point) or mounts.get(point)
        if mount is None or not is_cvmfs(mount):
            return Finding(f"CVMFS repository {repo} is not mounted ({point} is "
                           + ("not a mount point" if mount is None else f"a {mount.fstype} mount") + ")",
                           probes=("cvmfs", "container"))
        if not answer.get("ok"):   # mounted, but e.g. a crashed client: ENOTCONN
            return Finding(f"CVMFS repository {repo} does not answer: {answer.get('error', '?')}",
                           probes=("cvmfs", "container"))
    runtime = by_kind.get("x")
    if runtime is not None and not runtime.get("ok"):
        return Finding(f"the container runtime {runtime['path']} is not usable by the job's user: "
                       f"{runtime.get('error', '?')}")
    found = by_kind.get("r")
    if found is not None and not found.get("ok"):
        what = f"site image {site_name} ({image})" if site_name else f"the job's image {image}"
        return Finding(f"{what} is not usable by the job's user: {found.get('error', '?')}", node_fault=bool(site_name))
    for answer in answers:
        if answer.get("kind") == "e" and not answer.get("ok"):
            return Finding(f"SINGULARITY_EXTRA_ARGUMENTS binds {answer['path']}, which the job's user cannot "
                           f"reach: {answer.get('error', '?')} (the starter's container test would fail)")
    scratch = by_kind.get("w")
    if scratch is not None and thresholds is not None:
        from startd_health.probes.execute import DirCheck, judge_dir
        from startd_health.core.model import Status
        if not scratch.get("ok"):
            return Finding(f"the job's scratch directory {scratch['path']}: {scratch.get('error', '?')}",
                           probes=("execute",))
        fields = ("free_bytes", "total_bytes", "free_inodes", "total_inodes", "read_only", "write_ok")
        status, why = judge_dir(DirCheck(scratch["path"], ("the job's scratch directory",),
                                         **{k: scratch[k] for k in fields if k in scratch}), thresholds)
        if status is Status.FAILED:
            return Finding(why, probes=("execute",))
        if not scratch.get("write_ok"):
            return Finding(f"the job's scratch directory {scratch['path']} is not writable by the job's user",
                           probes=("execute",))
    return None


def recheck(ctx: Any, settings: Mapping[str, Any], image: str, site_name: str, condor: Any,
            thresholds: Any = None) -> Optional[Finding]:
    """The cheap invariants (see the module docstring); None when they hold or could not be checked.
    Under a starter, the job's scratch directory on EXECUTE ($_CONDOR_SCRATCH_DIR) is judged too,
    with the execute probe's thresholds."""
    from startd_health.system import launch_guard, procfs
    from startd_health.system.programs import python_argv
    from startd_health.system.procs import run_command
    root = settings.get("cvmfs_root") or "/cvmfs"
    runtime = runtime_to_check(settings, condor)
    repos = list(launch_guard.touched_repositories(settings, image if is_local_path(image) else ""))
    if os.path.isabs(runtime):   # e.g. Apptainer from /cvmfs/oasis.opensciencegrid.org/mis
        repos += [r for r in [launch_guard.repository_of(runtime, root)] if r and r not in repos]
    refused = launch_guard.refused(ctx, image, repos)   # a repository the cvmfs probe found hung: not touched
    if refused:
        return Finding(refused, probes=("cvmfs", "container"))
    # The starter names the job's scratch directory to the hook (23.9.6 and 25.14.1 alike);
    # run by hand, there is none to judge.
    scratch = os.environ.get("_CONDOR_SCRATCH_DIR", "") if thresholds is not None else ""
    args = recheck_paths(repos, root, runtime, image, extra_bind_sources(condor), scratch)
    if not args:
        return None
    timeout = max(0.1, min(RECHECK_TIMEOUT, ctx.remaining() / 2))
    result = run_command(python_argv("startd_health.probes", "_job_paths.py", *args), timeout)
    answers = []
    for line in result.stdout.splitlines():
        try:
            answers.append(json.loads(line))
        except ValueError:
            break
    if result.error:          # could not even start it: our problem, not the node's
        logging.getLogger("startd-health").warning("pre-job re-check not run: %s", result.error)
        return None
    pending = args[len(answers):] if result.timed_out else []
    mounts, mounts_error = procfs.read_mounts("/") if repos else ({}, "")
    return judge_recheck(image, site_name, repos, root, answers, pending, timeout, mounts, mounts_error, thresholds)


def poke_daemon(state_dir: Optional[str], probes: Sequence[str]) -> str:
    """Ask the startd-health daemon, if one runs, to re-probe now (it fences the node); what to say."""
    from startd_health.monitor.recheck import request_recheck
    if not state_dir:
        return ""
    reply = request_recheck(state_dir, probes, timeout=POKE_TIMEOUT)
    if reply is not None and reply.startswith("unknown probe"):   # a probe this node does not run: ask for all
        reply = request_recheck(state_dir, (), timeout=POKE_TIMEOUT)
    return "" if reply is None else f"; the startd-health daemon was asked to re-check ({reply.strip()[:80]})"


def decide(image: str, site_images: Mapping[str, str], cached: Optional[Any], period: float, now: float,
           launch_now) -> Decision:
    """site_images: path -> name of the configured images; cached: the last container ProbeResult;
    launch_now(): (Launch of the image tested now, node_fault: True when the node cannot launch
    at all: no runtime, or the image needs a CVMFS repository known to be hung)."""
    if not image:
        return Decision(True, "no container image in the job: nothing to check")
    name = site_images.get(image)
    if name and cached is not None and cached.age(now) < period and name in cached.facts.get("images_ok", ()):
        return Decision(True, f"image {name} launches (periodic test {int(cached.age(now))}s ago)")
    result, node_fault = launch_now()
    if result.ok:
        return Decision(True, f"image {image} launches (tested now in {result.seconds:.2f}s)")
    if node_fault:
        return Decision(False, f"this node cannot launch containers now: {result.error}", requeue=True)
    if name:
        return Decision(False, f"site image {name} ({image}) does not launch on this node now: {result.error}",
                        requeue=True)
    return Decision(False, f"the job's image {image} does not launch on this node: {result.error}")


def prepare_job(config: Any, stdin_text: str) -> Decision:
    from startd_health.core.runner import BudgetedContext
    from startd_health.core.state import StateDir
    from startd_health.probes.container import ContainerProbe
    from startd_health.probes.execute import MIB, Thresholds
    from startd_health.system import inside, launch_guard
    from startd_health.system.container import Launch, find_runtime, launch

    if not stdin_text.strip():
        return not_checked("no job ad on stdin nor in $_CONDOR_JOB_AD")
    job_ad = read_job_ad(stdin_text)
    image, unreadable = job_image(job_ad)
    if unreadable:
        return not_checked(unreadable)
    prefix = "CONTAINER_"
    settings = {k[len(prefix):].lower(): v for k, v in config.items_values() if k.startswith(prefix)}
    settings.update({name.lower(): config[name] for name in ContainerProbe.shared_knobs})
    site_images = {entry.partition("=")[2]: entry.partition("=")[0] for entry in settings.get("images", ())}
    state = StateDir(config["STATE_DIR"])
    cached = state.load("container")
    deadline = time.monotonic() + config["HOOK_TIMEOUT"]
    # The state directory's probe records are readable by job users: the
    # guard reads there which CVMFS repositories the cvmfs probe found hung.
    ctx = BudgetedContext("container", settings, deadline, config.condor, scratch_root=state.probes_dir)

    if not image:
        # A job that asks for a platform gets its image from the starter
        # (the 55 snippet): the same image is checked here.
        image = platform_image(job_ad, cached, config.condor)
    if not image:
        return Decision(True, "no container image in the job: nothing to check")
    thresholds = Thresholds(config["EXECUTE_FULL_MB"] * MIB, config["EXECUTE_LOW_MB"] * MIB,
                            config["EXECUTE_FULL_INODES"], config["EXECUTE_LOW_INODES"])   # as the execute probe
    finding = recheck(ctx, settings, image, site_images.get(image, ""), config.condor, thresholds)
    if finding is not None:
        if not finding.node_fault:
            return Decision(False, finding.message)
        return Decision(False, finding.message + poke_daemon(config["STATE_DIR"], finding.probes), requeue=True)

    def launch_now():
        # Never into a known-hung repository: the launch would hang until the
        # hook's timeout and leave one unkillable process per job.
        refused = launch_guard.refused(ctx, image, launch_guard.touched_repositories(settings, image))
        if refused:
            return Launch(image, image, False, 0.0, error=refused), True
        condor_path = config.condor.get("SINGULARITY") if config.condor is not None else None
        runtime, error = find_runtime(settings["runtime"], settings["module"], condor_path, ctx.run)
        if runtime is None:
            return Launch(image, image, False, 0.0, error=error), True
        script = inside.script(settings["binds"])
        return launch(ctx.run, runtime, image, image, settings["flags"], ctx.remaining(), script), False

    decision = decide(image, site_images, cached, settings["period"], time.time(), launch_now)
    if decision.requeue:
        decision = Decision(False, decision.message + poke_daemon(config["STATE_DIR"], ("container",)), requeue=True)
    return decision


def read_stdin_ad() -> str:
    text = sys.stdin.read() if not sys.stdin.isatty() else ""
    if not text.strip() and os.environ.get("_CONDOR_JOB_AD"):
        with open(os.environ["_CONDOR_JOB_AD"], errors="replace") as handle:
            text = handle.read()
    return text


def main_prepare_job(config: Any) -> int:
    """config: the Config, or a function that builds it (so that a configuration error, too, is
    answered as the hook protocol expects instead of holding the job)."""
    from startd_health.core.config import ConfigError
    try:
        if callable(config):
            config = config()
        decision = prepare_job(config, read_stdin_ad())
    except ConfigError as exc:
        print(f"startd-health: error: {exc}", file=sys.stderr)
        decision = not_checked(f"configuration error: {exc}")
    except Exception as exc:  # our own fault, not the job's: never hold the job for it
        logging.getLogger("startd-health").exception("internal error in the pre-job hook")
        decision = not_checked(f"internal error: {type(exc).__name__}: {exc}")
    return decision.emit()
