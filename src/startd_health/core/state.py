"""The state directory: the last result of every probe, and the run lock.

Every file is written atomically (temporary file in the same directory, then
rename), so a run killed in the middle of a write leaves the previous result
in place, never half a file. A result file that cannot be parsed is treated
as absent: the probe simply runs again.
"""

from __future__ import annotations

import errno
import fcntl
import json
import logging
import os
import tempfile
import time
from typing import Dict, Optional

from startd_health.core.model import ProbeResult

log = logging.getLogger(__name__)


class StateError(Exception):
    """The state directory cannot be used (message names the path and why)."""


def write_atomic(path: str, data: bytes, mode: int = 0o644) -> None:
    """Replace path with data, so that readers see the old or the new content only."""
    directory = os.path.dirname(path) or "."
    fd, tmp = tempfile.mkstemp(prefix="." + os.path.basename(path) + ".", suffix=".tmp", dir=directory)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fchmod(handle.fileno(), mode)  # mkstemp makes 0600; readers may be other users
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def _describe(exc: OSError) -> str:
    return exc.strerror or errno.errorcode.get(exc.errno or 0, str(exc))


class StateDir:
    def __init__(self, path: str) -> None:
        self.path = path
        self.results_dir = os.path.join(path, "results")
        self.probes_dir = os.path.join(path, "probes")  # each probe's own scratch directory
        self.locks_dir = os.path.join(path, "locks")    # one lock per probe

    def ensure(self) -> None:
        try:
            created = [d for d in (self.path, self.results_dir, self.locks_dir) if not os.path.isdir(d)]
            os.makedirs(self.results_dir, mode=0o755, exist_ok=True)
            os.makedirs(self.locks_dir, mode=0o755, exist_ok=True)
        except OSError as exc:
            raise StateError(f"state directory {self.path}: {_describe(exc)}") from None
        self._remove_stale_temporaries()
        if created and os.geteuid() == 0:
            # root running us by hand must not leave a directory the condor
            # user's cron job cannot write: hand it to the parent's owner.
            parent = os.stat(os.path.dirname(os.path.abspath(self.path)))
            for directory in created:
                try:
                    os.chown(directory, parent.st_uid, parent.st_gid)
                except OSError:
                    pass

    def _remove_stale_temporaries(self, older_than: float = 600.0) -> None:
        """A run killed between writing a temporary file and renaming it leaves
        the temporary behind (the result itself is intact); clear old ones."""
        cutoff = time.time() - older_than
        try:
            for name in os.listdir(self.results_dir):
                path = os.path.join(self.results_dir, name)
                if name.startswith(".") and name.endswith(".tmp") and os.stat(path).st_mtime < cutoff:
                    os.unlink(path)
        except OSError:
            pass

    def _result_path(self, probe: str) -> str:
        return os.path.join(self.results_dir, probe + ".json")

    def save(self, result: ProbeResult, settings_digest: str = "") -> None:
        """settings_digest: what the probe was configured with, so that a
        result is never re-used after the configuration changed."""
        data = json.dumps(dict(result.to_json(), settings_digest=settings_digest), sort_keys=True).encode()
        try:
            write_atomic(self._result_path(result.probe), data)
        except OSError as exc:
            raise StateError(f"cannot save {result.probe} result in {self.results_dir}: {_describe(exc)}") from None

    def load(self, probe: str, settings_digest: Optional[str] = None) -> Optional[ProbeResult]:
        """The last result; None if absent, unreadable, or (when a digest is
        given) gathered with other settings."""
        path = self._result_path(probe)
        try:
            with open(path, "rb") as handle:
                data = json.loads(handle.read())
            if settings_digest is not None and data.get("settings_digest") != settings_digest:
                return None
            return ProbeResult.from_json(data)
        except FileNotFoundError:
            return None
        except (OSError, ValueError, KeyError, TypeError) as exc:
            log.warning("ignoring unreadable state file %s: %s", path, exc)
            return None

    def load_all(self) -> Dict[str, ProbeResult]:
        results: Dict[str, ProbeResult] = {}
        try:
            names = sorted(os.listdir(self.results_dir))
        except OSError:
            return results
        for name in names:
            if name.endswith(".json") and not name.startswith("."):
                result = self.load(name[:-5])
                if result is not None:
                    results[result.probe] = result
        return results

    def lock(self, probe: str) -> "ProbeLock":
        return ProbeLock(os.path.join(self.locks_dir, probe + ".lock"))


class ProbeLock:
    """Held while a probe runs, so that overlapping runs (cron jobs the startd
    started again, the exporter) never run the same probe twice at once.

    flock is released by the kernel when the holder dies, so a killed run
    never leaves a stale lock; the descriptor is close-on-exec, so children
    (even abandoned ones) never inherit it.
    """

    def __init__(self, path: str) -> None:
        self.path = path
        self._fd: Optional[int] = None

    def try_acquire(self) -> bool:
        if self._fd is None:
            self._fd = self._open()
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            return False

    def acquire(self, wait_seconds: float) -> bool:
        deadline = time.monotonic() + wait_seconds
        while not self.try_acquire():
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.05)
        return True

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> "ProbeLock":
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()

    def _open(self) -> int:
        try:
            return os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except PermissionError:
            # Created by another user (e.g. root ran us by hand): a read-only
            # descriptor can still be flocked.
            try:
                return os.open(self.path, os.O_RDONLY | os.O_CLOEXEC)
            except OSError as exc:
                raise StateError(f"lock file {self.path}: {_describe(exc)}") from None
        except OSError as exc:
            raise StateError(f"lock file {self.path}: {_describe(exc)}") from None
