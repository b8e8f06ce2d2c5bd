"""Issue 11, sections 2 and 3: the cron job always prints a complete ad, every
number knob has a range, zero budgets are refused, and an empty value means
the default.

Everything runs the real CLI in a child process with the real htcondor2 and
classad2 bindings and real HTCondor configuration files; "another user" is a
real setpriv to nobody. Only test_every_knob_* call parsers directly (pure logic).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile

import pytest

from startd_health.cli.knobs import all_knobs
from startd_health.core.config import MAX_SECONDS, MIN_BUDGET_SECONDS, CondorParams, load_config

from .helpers import PACKAGE_PARENT, parse_cron_output, pids_alive, run_cli

NOBODY = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]


def condor_env(cli_env, config_path):
    return dict(cli_env, CONDOR_CONFIG=str(config_path))


def assert_failure_ad(proc, *needles):
    """A complete, '-'-terminated ad that every line of parses with classad2,
    unhealthy, whose reason says each needle."""
    ad = parse_cron_output(proc.stdout)
    assert ad["StartdHealthOk"] is False, proc.stdout
    reason = ad["StartdHealthReason"]
    for needle in needles:
        assert needle in reason, reason
    return reason


@pytest.fixture
def world_readable_dir():
    """A directory another user can traverse (pytest's tmp_path is private to root)."""
    path = tempfile.mkdtemp(prefix="startd-health-config-")
    os.chmod(path, 0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def write(path, text, mode=0o644):
    with open(path, "w") as handle:
        handle.write(text)
    os.chmod(path, mode)
    return path


# ---------------------------------------------------------------- HTCondor's configuration cannot be read

MISSING_ENDIF = "if true\nSTARTD_HEALTH_PROBES = sessions\n"   # no endif: HTCondor's parser calls exit(1)


@pytest.mark.parametrize("entry", ["cron", "startd_health"])
def test_cron_publishes_an_unhealthy_ad_when_the_configuration_has_a_syntax_error(tmp_path, cli_env, entry):
    config = write(tmp_path / "condor_config", MISSING_ENDIF)
    proc = run_cli(([] if entry == "cron" else ["cron"]) + ["--force", "--state-dir", str(tmp_path / "state")],
                   condor_env(cli_env, config), entry=entry)
    # Before: importing htcondor2 exit(1)ed the process: rc 1, 0 bytes on stdout.
    assert proc.returncode == 2, (proc.returncode, proc.stdout, proc.stderr)
    assert_failure_ad(proc, "configuration error: HTCondor's configuration cannot be read", "endif",
                      str(config))
    assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr   # one line, HTCondor's own lines folded in


def test_other_commands_say_why_in_one_line(tmp_path, cli_env):
    env = condor_env(cli_env, write(tmp_path / "condor_config", MISSING_ENDIF))
    for args, code in ((["config"], 2), (["check"], 3)):
        proc = run_cli(args, env)
        assert proc.returncode == code, (args, proc.returncode, proc.stderr)
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and "endif" in lines[0] and "cannot be read" in lines[0], proc.stderr
        assert proc.stdout == ""


def python_for_nobody():
    """A Python that uid 65534 can run and that imports startd_health and htcondor2, or None."""
    if os.geteuid() != 0 or not shutil.which("setpriv"):
        return None
    probe = "import startd_health, htcondor2, classad2"
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "PYTHONPATH": PACKAGE_PARENT, "CONDOR_CONFIG": "ONLY_ENV"}
    for python in (sys.executable, "/usr/bin/python3"):
        try:
            if subprocess.run([*NOBODY, python, "-c", probe], env=env, cwd="/", capture_output=True,
                              timeout=60).returncode == 0:
                return python
        except (OSError, subprocess.TimeoutExpired):
            continue
    return None


def run_cron_as_nobody(python, config_path, state_dir):
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "PYTHONPATH": PACKAGE_PARENT,
           "CONDOR_CONFIG": config_path, "HOME": "/"}
    code = "from startd_health.cli import cron_main; cron_main()"
    return subprocess.run([*NOBODY, python, "-c", code, "--state-dir", state_dir], env=env, cwd="/",
                          capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)


@pytest.fixture(scope="module")
def nobody_python():
    python = python_for_nobody()
    if python is None:
        pytest.skip("needs root and setpriv, and a Python that nobody can run with the HTCondor bindings")
    return python


def test_cron_as_condor_with_a_config_d_file_only_root_can_read(world_readable_dir, nobody_python):
    config_d = os.path.join(world_readable_dir, "config.d")
    os.mkdir(config_d)
    os.chmod(config_d, 0o755)
    secret = write(os.path.join(config_d, "10-site.conf"), "STARTD_HEALTH_DEADLINE = 30\n", mode=0o600)
    config = write(os.path.join(world_readable_dir, "condor_config"),
                   f"LOCAL_CONFIG_DIR = {config_d}\nSTARTD_HEALTH_PROBES = sessions\n")
    proc = run_cron_as_nobody(nobody_python, config, os.path.join(world_readable_dir, "state"))
    assert proc.returncode == 2, (proc.returncode, proc.stdout, proc.stderr)
    assert_failure_ad(proc, "cannot be read as user nobody", secret)


def test_cron_as_condor_with_an_unreadable_condor_config(world_readable_dir, nobody_python):
    config = write(os.path.join(world_readable_dir, "condor_config"), "STARTD_HEALTH_PROBES = sessions\n", mode=0o600)
    proc = run_cron_as_nobody(nobody_python, config, os.path.join(world_readable_dir, "state"))
    assert proc.returncode == 2, (proc.returncode, proc.stdout, proc.stderr)
    assert_failure_ad(proc, "cannot be read as user nobody", config)


def test_a_readable_configuration_is_read_through_the_bindings_outside_the_process(tmp_path, cli_env):
    config_d = tmp_path / "config.d"
    config_d.mkdir()
    write(config_d / "50-site.conf", "STARTD_HEALTH_DEADLINE = 42\nMY_SPOOL = /srv/spool\n")
    config = write(tmp_path / "condor_config", f"LOCAL_CONFIG_DIR = {config_d}\nSPOOL = $(MY_SPOOL)\n")
    proc = run_cli(["config"], condor_env(cli_env, config))
    assert proc.returncode == 0, proc.stderr
    assert "read through htcondor2" in proc.stdout
    assert "= 42    # HTCondor config STARTD_HEALTH_DEADLINE" in proc.stdout
    assert "= /srv/spool/startd_health    # default (HTCondor $(SPOOL)/startd_health)" in proc.stdout
    # The periodic process itself never loads the bindings that can exit it.
    code = ("import sys; from startd_health.core.config import CondorParams; p = CondorParams(); "
            "print(p.via, p.get('startd_health_deadline'), 'htcondor2' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], env=condor_env(cli_env, config), capture_output=True,
                         text=True, timeout=60)
    assert out.stdout.split() == ["htcondor2", "42", "False"], out.stderr


def test_a_configuration_that_hangs_is_stopped_within_its_budget(tmp_path, cli_env):
    """`include command :` runs a program while the configuration is read; one that hangs
    must neither hang us nor stay behind."""
    marker = "29.71"   # a sleep we can find in /proc
    script = write(tmp_path / "slow-config.sh", f"#!/bin/sh\nsleep {marker}\necho X = 1\n", mode=0o755)
    config = write(tmp_path / "condor_config", f"include command : {script}\n")
    code = ("import time; from startd_health.core.condor_config import read_condor_config; t = time.monotonic(); "
            "r = read_condor_config(timeout=2); print(round(time.monotonic() - t, 1)); print(r.error)")
    out = subprocess.run([sys.executable, "-c", code], env=condor_env(cli_env, config), capture_output=True,
                         text=True, timeout=60)
    seconds, error = out.stdout.splitlines()
    assert 1.9 <= float(seconds) < 5, out.stdout
    assert "took longer than 2s" in error and str(config) in error
    leftovers = []
    for pid in (int(p) for p in os.listdir("/proc") if p.isdigit()):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as handle:
                if f"sleep\0{marker}".encode() in handle.read():
                    leftovers.append(pid)
        except OSError:
            pass
    assert not pids_alive(leftovers)


def test_classad2_quoting_reads_no_configuration(tmp_path, cli_env):
    """The renderer quotes with classad2 in the cron process itself: that must not
    read (and exit on) a broken configuration. (Its parse functions do: never
    used on the cron path.)"""
    env = condor_env(cli_env, write(tmp_path / "condor_config", MISSING_ENDIF))
    code = "import classad2; print(classad2.quote('a \"b\"'), classad2.ExprTree('1 + 1').eval())"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and out.stdout.split() == ['"a', '\\"b\\""', "2"], (out.stdout, out.stderr)


# ---------------------------------------------------------------- number knobs have ranges

def test_the_overflow_of_the_issue_is_a_config_error_with_a_complete_ad(tmp_path, cli_env):
    env = dict(cli_env, _CONDOR_STARTD_HEALTH_DEADLINE="99999999999",
               _CONDOR_STARTD_HEALTH_SESSIONS_TIMEOUT="99999999999")
    for entry, args in (("startd_health", ["cron", "--force"]), ("cron", ["--force"])):
        proc = run_cli([*args, "--state-dir", str(tmp_path / "state")], env, entry=entry)
        # Before: OverflowError in threading, no ad (exit 1).
        assert proc.returncode == 2, (proc.returncode, proc.stderr)
        assert_failure_ad(proc, "STARTD_HEALTH_DEADLINE = '99999999999' (environment "
                                "_CONDOR_STARTD_HEALTH_DEADLINE): out of range: expected 1 s to 7 days")
        assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr


def test_every_number_knob_is_bounded():
    """Pure logic over every declared knob: a new number knob without a range fails here."""
    numbers = [k for k in all_knobs() if isinstance(k.default, (int, float)) and not isinstance(k.default, bool)]
    assert len(numbers) >= 15
    for knob in numbers:
        with pytest.raises(ValueError, match="range|up to"):
            knob.parse("99999999999")
        knob.parse(knob.format(knob.default))   # every default is inside its range
    for knob in all_knobs():
        if knob.name.endswith(("_TIMEOUT", "_SECONDS", "_PERIOD", "DEADLINE", "_INTERVAL", "_STALE_AFTER")):
            for small in ("0", "0.5"):
                with pytest.raises(ValueError, match="out of range"):
                    knob.parse(small)
            assert knob.parse(f"{MAX_SECONDS:g}") == MAX_SECONDS
    assert MIN_BUDGET_SECONDS == 1


def test_a_zero_launch_budget_names_the_knob(tmp_path, cli_env):
    """Before: accepted; then every image failed with "no time left in the probe's budget"
    and, with REQUIRED, the node refused every job."""
    config = write(tmp_path / "condor_config", "STARTD_HEALTH_CONTAINER_LAUNCH_TIMEOUT = 0\n"
                                               "STARTD_HEALTH_CONTAINER_REQUIREMENT = REQUIRED\n")
    proc = run_cli(["cron", "--state-dir", str(tmp_path / "state")], condor_env(cli_env, config))
    assert proc.returncode == 2, proc.stderr
    assert_failure_ad(proc, "STARTD_HEALTH_CONTAINER_LAUNCH_TIMEOUT = '0' (HTCondor config "
                            "STARTD_HEALTH_CONTAINER_LAUNCH_TIMEOUT): out of range")


# ---------------------------------------------------------------- empty is the default

DEFAULT_PROBES = "container, cvmfs, execute, gpu, sessions, userns"


@pytest.mark.parametrize("where", ["config file", "environment", "flag"])
def test_an_empty_probe_list_runs_the_default_probes(tmp_path, cli_env, where):
    env, args = dict(cli_env), ["--state-dir", str(tmp_path / "state")]
    if where == "config file":
        env["CONDOR_CONFIG"] = write(tmp_path / "condor_config", "STARTD_HEALTH_PROBES =\n")
    elif where == "environment":
        env["_CONDOR_STARTD_HEALTH_PROBES"] = ""
    else:
        args += ["--probes", " "]
    config = run_cli(["config", *args], env)
    assert "STARTD_HEALTH_PROBES" in config.stdout and f"= {DEFAULT_PROBES}    # default" in config.stdout, \
        config.stdout + config.stderr
    # Before: no probe ran and the node was published healthy.
    ad = parse_cron_output(run_cli(["cron", *args], env).stdout)
    for probe in ("Container", "Cvmfs", "Gpu", "Sessions", "Userns"):
        assert f"StartdHealth{probe}Status" in ad, ad


def test_a_probe_list_with_nothing_periodic_is_a_config_error(tmp_path, cli_env):
    args = ["--probes", "benchmarks", "--state-dir", str(tmp_path / "state")]
    cron = run_cli(["cron", *args], cli_env)
    assert cron.returncode == 2
    assert_failure_ad(cron, "STARTD_HEALTH_PROBES = benchmarks (command line --probes): selects no periodic probe")
    check = run_cli(["check", *args], cli_env)
    assert check.returncode == 3 and len(check.stderr.strip().splitlines()) == 1, check.stderr
    assert "selects no periodic probe" in check.stderr and check.stdout == ""


def test_an_empty_state_dir_is_the_default_not_the_current_directory(tmp_path, cli_env):
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    env = dict(cli_env, _CONDOR_STARTD_HEALTH_STATE_DIR="")
    # standalone (no HTCondor configuration, whose $(SPOOL) would be the default)
    proc = subprocess.run([sys.executable, "-m", "startd_health", "--no-condor-config", "cron", "--probes", "cvmfs"],
                          env=env, cwd=str(cwd),
                          capture_output=True, text=True, timeout=60)
    assert parse_cron_output(proc.stdout)["StartdHealthOk"] is True, proc.stderr
    assert os.listdir(cwd) == []          # before: locks/ probes/ results/ appeared here
    assert os.path.isdir(os.path.join(env["XDG_STATE_HOME"], "startd-health"))


def test_every_knob_empty_is_its_default():
    """Pure logic: an empty flag for every knob resolves exactly as no flag at all."""
    knobs = all_knobs()
    condor = CondorParams(False)
    unset = load_config(knobs, {}, condor, environ={})
    empty = load_config(knobs, {k.name: "  " for k in knobs}, condor, environ={})
    for knob in knobs:
        assert empty[knob.name] == unset[knob.name], knob.name
        assert empty.source(knob.name).startswith(unset.source(knob.name)), knob.name
