"""Never launch an image into a trap already known: a launch that hangs on a
hung mount leaves a process in uninterruptible sleep that no signal ends
(system/procs.py abandons it), so each periodic run that tried again would
leave one more (measured before this guard: 11 after 10 cron runs on a node
behind a hung CVMFS repository).

Before launching an image, refused() says why not to, when
- a CVMFS repository the launch would touch (the image itself, when it is
  on CVMFS; the inside check of STARTD_HEALTH_CVMFS_REPOSITORIES; an
  expected bind under a repository) is
  known hung: the cvmfs probe left a child stuck on it (its record in the
  cvmfs probe's scratch directory, stuck.hung_repository), or
- this image's previous launch left processes stuck and they are still
  there (recorded by remember() in the container probe's scratch directory).
The image is then reported as not tested, with that reason; it is launched
again once the stuck processes have gone (the mount recovered).

Without a state directory there is nowhere to remember anything: every
launch is tried (and the reason of StartdHealthStateError says why).
"""

from __future__ import annotations

import os
import time
from typing import Any, List, Mapping, Optional, Sequence, Tuple

from startd_health.system import stuck

LAUNCH_RECORD = "stuck-launch-{image}"


def repository_of(path: str, root: str) -> str:
    """'/cvmfs/a.org/x/y' -> 'a.org' (root /cvmfs); '' when not under root."""
    relative = os.path.relpath(os.path.normpath(path), root)
    return "" if relative == "." or relative.startswith("..") else relative.split(os.sep)[0]


def touched_repositories(settings: Mapping[str, Any], image_path: str = "") -> Tuple[str, ...]:
    """The CVMFS repositories a launch of the image reads: the one holding
    the image, those checked inside it, and those holding an expected bind
    mount (its presence is tested)."""
    root = settings.get("cvmfs_root") or "/cvmfs"
    touched: List[str] = [repository_of(image_path, root)] if image_path else []
    if settings.get("cvmfs", True):
        touched += settings.get("cvmfs_repositories") or ()
    touched += [repository_of(bind, root) for bind in settings.get("binds") or ()]
    return tuple(repo for repo in dict.fromkeys(touched) if repo)


def refused(ctx: Any, image: str, repositories: Sequence[str]) -> str:
    """Why the image must not be launched now; '' when it may."""
    hung_root = ctx.scratch_dir(stuck.CVMFS_OWNER)
    for repo in repositories:
        hung = stuck.hung_repository(hung_root, repo)
        if hung is not None:
            return (f"not launched: CVMFS repository {repo} is hung ({hung.describe()} stuck on it since "
                    f"{stuck.iso(hung.since)}); a launch would hang on it too")
    previous = stuck.still_stuck(ctx.scratch_dir(), LAUNCH_RECORD.format(image=image))
    if previous is not None:
        return (f"not launched: its previous launch is still stuck since {stuck.iso(previous.since)} "
                f"({previous.describe()} unkillable)")
    return ""


def remember(ctx: Any, image: str, left_behind: Sequence[int], started: Optional[float] = None) -> None:
    """Record what a launch of the image left stuck (nothing: nothing to do)."""
    if left_behind:
        stuck.remember(ctx.scratch_dir(), LAUNCH_RECORD.format(image=image), left_behind,
                       time.time() if started is None else started)
