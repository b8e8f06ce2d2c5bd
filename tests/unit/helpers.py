"""Small helpers shared by the unit tests."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from typing import Any, List, Optional, Sequence

import pytest

import startd_health

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# Where the INSTALLED package lives (an editable install points into src/):
# children that cannot use this venv's interpreter (another user, the system
# Python) get exactly that directory, never the checkout's root.
PACKAGE_PARENT = os.path.dirname(os.path.dirname(os.path.abspath(startd_health.__file__)))


def run_cli(args: Sequence[str], env, timeout: float = 60, entry: str = "startd_health") -> subprocess.CompletedProcess:
    if entry == "cron":
        argv = [sys.executable, "-c", "from startd_health.cli import cron_main; cron_main()", *args]
    else:
        argv = [sys.executable, "-m", "startd_health", *args]
    return subprocess.run(argv, env=env, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)


def parse_cron_output(text: str) -> Any:
    """Parse cron output the strict way: every line on its own, with the real
    ClassAd library (parseAds would silently stop at a malformed line).

    Asserts the protocol: newline-terminated lines, a final '-' line, and each
    line defining exactly one attribute, the one it names.
    """
    # Here, not at the top: where the bindings are missing, only the tests
    # that check an ad with them are skipped.
    import pytest
    classad2 = pytest.importorskip("classad2", reason="checking the ad needs the HTCondor Python bindings")

    assert text.endswith("\n"), "last line not newline-terminated"
    lines = text.splitlines()
    assert lines and lines[-1].startswith("-"), "output does not end with a '-' line"
    ad = classad2.ClassAd()
    for line in lines[:-1]:
        assert not line.startswith("-"), f"'-' line in the middle: {line!r}"
        name, sep, _ = line.partition(" = ")
        assert sep and name.isidentifier(), f"not an attribute line: {line!r}"
        one = classad2.ClassAd("[" + line + "]")
        assert list(one.keys()) == [name], f"line defines {list(one.keys())}, not just {name}: {line!r}"
        assert name not in ad, f"attribute {name} printed twice"
        ad[name] = one.lookup(name)
    return ad


def pids_alive(pids: List[int]) -> List[int]:
    alive = []
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as handle:
                state = handle.read().rsplit(")", 1)[1].split()[0]
            if state != "Z":
                alive.append(pid)
        except OSError:
            pass
    return alive


def wait_gone(pids: List[int], timeout: float = 5.0) -> List[int]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        alive = pids_alive(pids)
        if not alive:
            return []
        time.sleep(0.05)
    return pids_alive(pids)


class FakeCondor:
    """HTCondor's configuration as htcondor2.param would answer: for logic
    tests only (the real bindings and condor_config_val are used end to end)."""

    available = True
    via = "test"

    def __init__(self, **values):
        self.values = values

    def get(self, name):
        return self.values.get(name)


def probe_settings(probe: str, **overrides: Any) -> dict:
    """A probe's settings as the runner hands them on a node with nothing
    configured: every knob's declared default (period, timeout, its own knobs
    without the probe's prefix, the other probes' knobs it reads under their
    full lower-case name), then ``overrides``. An override that is not one of
    the probe's settings is an error: a typo would otherwise test the default."""
    from startd_health.probes import all_probes

    classes = all_probes()
    cls = classes[probe]
    prefix = cls.prefix() + "_"
    settings = {"period": cls.default_period, "timeout": cls.default_timeout}
    settings.update({(k.name[len(prefix):] if k.name.startswith(prefix) else k.name).lower(): k.default
                     for k in cls.knobs})
    defaults = {k.name: k.default for other in classes.values() for k in other.knobs}
    settings.update({name.lower(): defaults[name] for name in cls.shared_knobs})
    unknown = set(overrides) - set(settings)
    assert not unknown, f"not settings of the {probe} probe: {sorted(unknown)}"
    settings.update(overrides)
    return settings


def make_context(probe: str, budget: float = 20.0, condor: Any = None, scratch_root: Optional[str] = None,
                 system_root: str = "/", **overrides: Any) -> Any:
    """The real runner's context (core.runner.BudgetedContext) for ``probe``,
    with the knob defaults (see probe_settings) plus overrides. system_root: where
    /proc, /sys, /dev and /etc are read from (a recorded tree: the one seam
    for simulated kernels); commands still run for real."""
    from startd_health.core.runner import BudgetedContext

    return BudgetedContext(probe, probe_settings(probe, **overrides), time.monotonic() + budget, condor=condor,
                           scratch_root=scratch_root, system_root=system_root)


def run_probe_as_nobody(probe: str, settings: dict, extra: str = "") -> dict:
    """Run a probe's gather/judge as uid 65534 with the system Python, as a
    STARTD_CRON job runs (not root); returns status, reason, facts (+ extra,
    a Python expression over g and r, under the key "extra")."""
    import json
    settings = probe_settings(probe, **settings)
    python = "/usr/bin/python3" if os.path.exists("/usr/bin/python3") else sys.executable
    code = ("import json, os, time\n"
            "from startd_health.core.runner import BudgetedContext\n"
            f"from startd_health.probes.{probe} import gather, judge\n"
            f"g = gather(BudgetedContext({probe!r}, {settings!r}, time.monotonic() + 20))\n"
            "r = judge(g)\n"
            "print(json.dumps({'status': r.status.value, 'reason': r.reason, 'facts': dict(r.facts), "
            f"'uid': os.getuid(), 'extra': {extra or 'None'}}}))\n")
    proc = subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", python, "-c", code],
                          cwd="/", env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "PYTHONPATH": PACKAGE_PARENT},
                          capture_output=True, text=True, timeout=30)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out["uid"] == 65534
    return out


# ---------------------------------------------------------------- real small filesystems (root)

@pytest.fixture
def tmpfs(tmp_path):
    """mount(name, options) -> path of a fresh tmpfs under tmp_path; unmounted afterwards."""
    if os.geteuid() != 0:
        pytest.fail("mounting a tmpfs needs root (deselect with -m 'not root')")
    mounted = []

    def mount(name, options):
        path = tmp_path / name
        path.mkdir()
        subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)], check=True)
        mounted.append(path)
        return path
    yield mount
    for path in reversed(mounted):
        subprocess.run(["umount", "-l", str(path)], check=False)


def fill(path):
    """Write until the filesystem is full."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        while os.write(fd, b"\0" * 4096):
            pass
    except OSError:
        pass
    finally:
        os.close(fd)
