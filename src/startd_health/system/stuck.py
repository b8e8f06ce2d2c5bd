"""Processes left stuck in uninterruptible sleep, remembered across runs.

A process blocked on a hung FUSE or autofs mount (state D) survives SIGKILL;
procs.run_command abandons it and names it in CommandResult.left_behind.
Whoever started it records it here (one small JSON file per trap, in the
probe's scratch directory), and asks before starting another one into the
same trap: otherwise every periodic run would leave one more stuck process.

A record names each process by pid AND kernel start time, so that a pid the
kernel reused for an unrelated process does not count as still stuck. It is
removed once none of its processes lives any more (the mount recovered or
was aborted): the trap may then be tried again.
"""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import dataclass
from typing import Iterable, Optional, Tuple

from startd_health.core.state import write_atomic
from startd_health.system.procfs import start_ticks as process_start_ticks

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Stuck:
    pids: Tuple[int, ...]    # the ones still alive
    since: float             # epoch seconds when the stuck process(es) were started

    @property
    def pid(self) -> int:
        return self.pids[0]

    def describe(self) -> str:
        return ("pid " if len(self.pids) == 1 else "pids ") + ", ".join(map(str, self.pids))


def record_path(directory: str, name: str) -> str:
    return os.path.join(directory, name + ".json")


def remember(directory: Optional[str], name: str, pids: Iterable[int], since: float) -> None:
    """Record the still-living ones of pids as stuck in trap `name` (nothing
    to record: no place for it, or they have gone after all)."""
    alive = [(pid, ticks) for pid, ticks in ((pid, process_start_ticks(pid)) for pid in pids) if ticks is not None]
    if directory is None or not alive:
        return
    data = json.dumps({"pids": [{"pid": pid, "start_ticks": ticks} for pid, ticks in alive], "since": since})
    try:
        write_atomic(record_path(directory, name), data.encode())
    except OSError as exc:
        log.warning("cannot remember stuck process(es) %s of %s: %s", [p for p, _ in alive], name, exc)


def still_stuck(directory: Optional[str], name: str) -> Optional[Stuck]:
    """The processes recorded for this trap that are still there; None (and
    the record removed) once they have all gone."""
    if directory is None:
        return None
    path = record_path(directory, name)
    try:
        with open(path, "rb") as handle:
            data = json.loads(handle.read())
        entries = data["pids"] if "pids" in data else [data]   # a single-process record, as cvmfs wrote it before
        recorded = [(int(e["pid"]), int(e["start_ticks"])) for e in entries]
        since = float(data["since"])
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError) as exc:
        log.warning("ignoring unreadable %s: %s", path, exc)
        recorded, since = [], 0.0
    alive = tuple(pid for pid, ticks in recorded if process_start_ticks(pid) == ticks)
    if alive:
        return Stuck(alive, since)
    try:
        os.unlink(path)   # gone: the trap may be tried again
    except OSError:
        pass
    return None


# ---------------------------------------------------------------- CVMFS repositories
# The cvmfs probe records the children it leaves stuck on a repository here;
# whoever else would touch that repository (a container launch, the pre-job
# hook) reads the record and stays away. One name for both sides.

CVMFS_OWNER = "cvmfs"                  # the probe whose scratch directory holds the records
HUNG_REPOSITORY = "hung-{repo}"


def remember_hung_repository(directory: Optional[str], repo: str, pids: Iterable[int], since: float) -> None:
    remember(directory, HUNG_REPOSITORY.format(repo=repo), pids, since)


def hung_repository(directory: Optional[str], repo: str) -> Optional[Stuck]:
    """The child(ren) an earlier run left on this repository, if still there."""
    return still_stuck(directory, HUNG_REPOSITORY.format(repo=repo))


def iso(epoch: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(epoch))
