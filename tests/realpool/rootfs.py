"""A Debian root filesystem built (once, cached) by rootfs.sh, and commands run
inside it (rootfs.sh enter: its own mount namespace, pivot_root, a private
/dev). The HTCondor pools (pool.py) and the Python 3.9 unit run
(tests/e2e/test_python39.py) live in one each."""

from __future__ import annotations

import os
import shutil
import subprocess
from typing import Any, Iterable, Optional

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
ROOTFS_SH = os.path.join(HERE, "rootfs.sh")
# Never copied into a root filesystem: what a fresh clone does not have.
NOT_PROJECT = shutil.ignore_patterns(".git", ".venv*", ".cache", "__pycache__", ".pytest_cache", "*.egg-info",
                                     "build", "dist")


class RootFsError(AssertionError):
    pass


class RootFs:
    error = RootFsError   # what a failing build or command raises

    def __init__(self, variant: str, instance: str = "") -> None:
        """variant: rootfs.sh's VARIANT; instance: a separate copy of it."""
        self.variant = variant
        self.env = dict(os.environ, VARIANT=variant, INSTANCE=instance)
        self.rootfs = ""

    def build(self, timeout: float = 1800) -> None:
        """Build (or reuse the cached) root filesystem; raises with the reason if it cannot."""
        if os.geteuid() != 0:
            raise self.error("the end-to-end tests need root (unshare, mount, mknod, mmdebstrap)")
        proc = subprocess.run([ROOTFS_SH, "build"], env=self.env, capture_output=True, text=True, timeout=timeout)
        if proc.returncode != 0:
            raise self.error(f"cannot build the {self.variant} root filesystem:\n{proc.stderr[-4000:]}")
        self.rootfs = subprocess.run([ROOTFS_SH, "path"], env=self.env, capture_output=True, text=True,
                                     check=True).stdout.strip()

    def path(self, inside: str) -> str:
        return os.path.join(self.rootfs, inside.lstrip("/"))

    def enter(self, *argv: str, user: Optional[str] = None, timeout: float = 120, check: bool = True,
              input: Optional[str] = None) -> subprocess.CompletedProcess:
        cmd = list(argv)
        if user:
            cmd = ["runuser", "-u", user, "--", *cmd]
        proc = subprocess.run([ROOTFS_SH, "enter", *cmd], env=self.env, capture_output=True, text=True,
                              timeout=timeout, input=input)
        if check and proc.returncode != 0:
            raise self.error(f"{' '.join(cmd)} exited {proc.returncode}:\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}")
        return proc

    def sh(self, script: str, user: Optional[str] = None, **kw: Any) -> subprocess.CompletedProcess:
        return self.enter("/bin/sh", "-c", script, user=user, **kw)

    def write(self, inside: str, text: str, mode: int = 0o644) -> None:
        path = self.path(inside)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "w") as handle:
            handle.write(text)
        os.chmod(path, mode)

    def copy_project(self, inside: str, names: Optional[Iterable[str]] = None) -> None:
        """A fresh copy of this checkout at ``inside`` (``names``: only those
        top-level entries), readable by every user (tests drop to nobody)."""
        dest = self.path(inside)
        shutil.rmtree(dest, ignore_errors=True)
        if names is None:
            shutil.copytree(REPO, dest, ignore=NOT_PROJECT, symlinks=True)
        else:
            os.makedirs(dest)
            for name in names:
                origin = os.path.join(REPO, name)
                if os.path.isdir(origin):
                    shutil.copytree(origin, os.path.join(dest, name), ignore=NOT_PROJECT)
                else:
                    shutil.copy2(origin, dest)
        for directory, dirs, files in os.walk(dest):
            for name in dirs + files:
                path = os.path.join(directory, name)
                if not os.path.islink(path):
                    mode = os.stat(path).st_mode
                    os.chmod(path, mode | 0o444 | (0o111 if mode & 0o100 or name in dirs else 0))
        os.chmod(dest, 0o755)
