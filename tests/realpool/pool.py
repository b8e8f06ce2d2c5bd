"""A real HTCondor personal pool (condor_master, collector, negotiator, schedd,
startd) and real Apptainer, inside a Debian root filesystem built by
rootfs.sh. Used by the end-to-end tests; nothing here is mocked.

The pool listens on 127.0.0.1 only and runs with ENABLE_KERNEL_TUNING =
False: a root condor_master would otherwise rewrite this machine's sysctls.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
from typing import Any, Callable, Dict, List, Optional

from tests.waiting import wait_until

from .rootfs import REPO, RootFs, RootFsError

PORTS = {"mix": 29618, "sid": 29619}
PIDFILE = "/tmp/condor/run/master.pid"
INSTALL = "/opt/startd-health"
# What gets copied into the root filesystem to install the project.
PROJECT_FILES = ("pyproject.toml", "README.md", "src", "packaging", "tests", "benchmarks")

POOL_CONF = """\
# Personal pool for startd-health's end-to-end tests (loopback only)
use ROLE: Personal
CONDOR_HOST = 127.0.0.1
COLLECTOR_HOST = $(CONDOR_HOST):{port}
NETWORK_INTERFACE = 127.0.0.1
BIND_ALL_INTERFACES = False
ENABLE_IPV6 = False
# A root condor_master otherwise runs linux_kernel_tuning and rewrites the
# HOST's sysctls (pid_max, ip_local_port_range, ...).
ENABLE_KERNEL_TUNING = False
LOCAL_DIR = /tmp/condor
LOG = $(LOCAL_DIR)/log
SPOOL = $(LOCAL_DIR)/spool
LOCK = $(LOCAL_DIR)/lock
RUN = $(LOCAL_DIR)/run
CRED_STORE_DIR = $(LOCAL_DIR)/cred_dir
# Not under /tmp: Apptainer's scratch mounts would hide it from jobs.
EXECUTE = /var/lib/condor/execute
SCHEDD_INTERVAL = 5
NEGOTIATOR_INTERVAL = 2
NEGOTIATOR_CYCLE_DELAY = 5
STARTER_UPDATE_INTERVAL = 5
SHADOW_QUEUE_UPDATE_INTERVAL = 10
UPDATE_INTERVAL = 5
STARTD_CRON_LOG_NON_ZERO_EXIT = True
"""


def hanging_runtime(flag: str) -> str:
    """A runtime wrapper for HTCondor's SINGULARITY inside the pool: the real
    Apptainer, except that while `flag` exists every call but --version
    waits (a runtime that hangs, SIMULATED); removing the flag releases them."""
    return f"""#!/bin/sh
case "$1" in --version|version) exec /usr/bin/apptainer "$@";; esac
while [ -e {flag} ]; do sleep 0.2; done
exec /usr/bin/apptainer "$@"
"""


class PoolError(RootFsError):
    pass


class RealPool(RootFs):
    error = PoolError

    def __init__(self, variant: str, instance: str = "") -> None:
        """instance: a separate copy of the root filesystem with its own
        port, so that independent tests (or developers) can run pools side
        by side."""
        super().__init__(variant, instance)
        self.port = PORTS[variant] + (10 + sum(map(ord, instance)) % 1000 if instance else 0)
        self._namespace: Optional[int] = None   # the pool's mount namespace (inode)

    def install_project(self) -> None:
        """Install this checkout into a venv in the root filesystem (Debian's
        python3 and its htcondor2, psutil, numpy, ... from the distribution)."""
        shutil.rmtree(self.path(INSTALL), ignore_errors=True)
        self.copy_project(INSTALL + "/src", PROJECT_FILES)
        self.sh(f"python3 -m venv --system-site-packages {INSTALL}/venv && "
                f"{INSTALL}/venv/bin/pip install --quiet --no-deps --no-index --no-build-isolation {INSTALL}/src && "
                f"chmod -R a+rX {INSTALL}", timeout=300)

    # ------------------------------------------------------------ pool
    def configure(self, *snippets: str, extra: str = "") -> None:
        """Pool config + the project's own packaging snippets + test overrides."""
        confd = self.path("/etc/condor/config.d")
        for name in os.listdir(confd):
            if name.startswith(("00-pool", "5", "99-test")):
                os.unlink(os.path.join(confd, name))
        self.write("/etc/condor/config.d/00-pool.conf", POOL_CONF.format(port=self.port))
        for snippet in snippets:
            shutil.copy(os.path.join(REPO, "packaging", "condor", snippet), confd)
        self.write("/etc/condor/config.d/99-test.conf", extra)

    def master_pid(self) -> Optional[int]:
        # condor_master rewrites its pid file (condor_reconfig included):
        # an empty read is a rewrite under way, not a master gone.
        for _ in range(20):
            try:
                with open(self.path(PIDFILE)) as handle:
                    return int(handle.read().strip())
            except OSError:
                return None
            except ValueError:
                time.sleep(0.05)
        return None

    def running(self) -> bool:
        pid = self.master_pid()
        if pid is None:
            return False
        try:
            os.kill(pid, 0)
            return True
        except ProcessLookupError:
            return False

    def start(self, pre_start: str = "") -> None:
        """pre_start: shell commands run first in the pool's own mount
        namespace (e.g. FUSE mounts the daemons must see)."""
        self.stop()
        shutil.rmtree(self.path("/tmp/condor"), ignore_errors=True)
        self.sh("for d in log spool lock run; do install -d -o condor -g condor -m 0755 /tmp/condor/$d; done; "
                "install -d -m 0700 /tmp/condor/cred_dir")
        self.sh(f"set -e\n{pre_start}\nexec condor_master -pidfile {PIDFILE}")
        pid = self.wait_for(lambda: self.master_pid(), 10, "condor_master pid file")
        self._namespace = os.stat(f"/proc/{pid}/ns/mnt").st_ino

    def stop(self) -> None:
        pid = self.master_pid()
        if pid is not None and self.running():
            os.kill(pid, signal.SIGQUIT)  # fast shutdown of the master and all its daemons
            deadline = time.monotonic() + 20
            while self.running() and time.monotonic() < deadline:
                time.sleep(0.2)
            if self.running():
                os.kill(pid, signal.SIGKILL)
        self._kill_namespace()

    def _kill_namespace(self) -> None:
        """Whatever still lives in the pool's mount namespace (FUSE daemons
        such as the simulated CVMFS, a straggling starter) goes too: the
        tests leave nothing running."""
        if self._namespace is None:
            return
        for entry in os.listdir("/proc"):
            if not entry.isdigit() or int(entry) == os.getpid():
                continue
            try:
                if os.stat(f"/proc/{entry}/ns/mnt").st_ino == self._namespace:
                    os.kill(int(entry), signal.SIGKILL)
            except OSError:
                pass
        self._namespace = None

    def reconfig(self) -> None:
        self.enter("condor_reconfig")

    def wait_for(self, predicate: Callable[[], Any], timeout: float, what: str, interval: float = 0.5) -> Any:
        try:
            return wait_until(predicate, timeout, what, interval, tolerate=(PoolError, subprocess.TimeoutExpired),
                              describe=lambda: f"StartLog tail:\n{self.log_tail('StartLog')}")
        except AssertionError as exc:
            raise PoolError(str(exc)) from None

    def log_tail(self, name: str, lines: int = 40) -> str:
        try:
            with open(self.path(f"/tmp/condor/log/{name}"), errors="replace") as handle:
                return "".join(handle.readlines()[-lines:])
        except OSError as exc:
            return str(exc)

    # ------------------------------------------------------------ queries
    def slots(self, *attrs: str) -> List[Dict[str, Any]]:
        """Slot ads as JSON, from the real collector via condor_status."""
        argv = ["condor_status", "-json"]
        if attrs:
            argv += ["-attributes", ",".join(("Name",) + attrs)]
        out = self.enter(*argv, timeout=30).stdout
        return json.loads(out) if out.strip() else []

    def slot_where(self, *attrs: str, timeout: float = 60, **expect: Any) -> Dict[str, Any]:
        """The first slot ad (with these attributes) whose values equal `expect`, waited for."""
        def check() -> Optional[Dict[str, Any]]:
            for ad in self.slots(*attrs, *expect):
                if all(ad.get(k) == v for k, v in expect.items()):
                    return ad
            return None
        return self.wait_for(check, timeout, f"slot ad with {expect}")

    def slot_ad_text(self) -> str:
        return self.enter("condor_status", "-long", timeout=30).stdout

    def submit(self, description: str, user: str = "tester") -> int:
        self.write(f"/home/{user}/job.sub", description)
        out = self.sh(f"cd /home/{user} && condor_submit -terse job.sub", user=user).stdout
        return int(out.split(".")[0])

    def job_status(self, cluster: int) -> Optional[int]:
        """JobStatus of a job in the queue, or in history once it has left (4 = completed)."""
        out = self.enter("condor_q", "-all", str(cluster), "-af", "JobStatus", timeout=30).stdout.strip()
        if out:
            return int(out.split()[0])
        out = self.enter("condor_history", str(cluster), "-af", "JobStatus", "-limit", "1", timeout=30).stdout.strip()
        return int(out.split()[0]) if out else None

    def analyze(self, cluster: int) -> str:
        return self.enter("condor_q", "-better-analyze", str(cluster), timeout=60, check=False).stdout
