"""`startd-health hook prepare-job`: HTCondor's <KEYWORD>_HOOK_PREPARE_JOB.

The starter runs it as the JOB's user, in the job's scratch directory, with
the job ad on stdin, before the job starts; a non-zero exit holds the job
(HoldReasonCode 19, HoldReasonSubCode = our exit status) with our message,
and there is no timeout but ours. So it must be fast and bounded:

- the job's container image (SingularityImage, or ContainerImage in the
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

import logging
import os
import sys
import time
from dataclasses import dataclass
from typing import Any, Mapping, Optional, Tuple

from startd_health.monitor.job_ad import Unreadable, read_attributes

EXIT_ACCEPT, EXIT_HOLD = 0, 1
REQUEUE_STATUS = 300


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


def read_job_ad(text: str) -> Mapping[str, Any]:
    return read_attributes(text, IMAGE_ATTRIBUTES)


def not_checked(why: str) -> Decision:
    return Decision(True, f"the job's container image was not checked: {why}")


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
    from startd_health.system import inside, launch_guard
    from startd_health.system.container import Launch, find_runtime, launch

    if not stdin_text.strip():
        return not_checked("no job ad on stdin nor in $_CONDOR_JOB_AD")
    image, unreadable = job_image(read_job_ad(stdin_text))
    if unreadable:
        return not_checked(unreadable)
    prefix = "CONTAINER_"
    settings = {k[len(prefix):].lower(): v for k, v in config.items_values() if k.startswith(prefix)}
    site_images = {entry.partition("=")[2]: entry.partition("=")[0] for entry in settings.get("images", ())}
    state = StateDir(config["STATE_DIR"])
    cached = state.load("container")
    deadline = time.monotonic() + config["HOOK_TIMEOUT"]
    # The state directory's probe records are readable by job users: the
    # guard reads there which CVMFS repositories the cvmfs probe found hung.
    ctx = BudgetedContext("container", settings, deadline, config.condor, scratch_root=state.probes_dir)

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

    return decide(image, site_images, cached, settings["period"], time.time(), launch_now)


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
