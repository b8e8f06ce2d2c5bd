"""Site checks (probes/site.py, system/plugin_protocol.py): the commands a
site already has, each a probe of its own.

The parser is fed RECORDED outputs (Debian bookworm's monitoring-plugins
2.3.3 on this test host, and the examples of the Nagios plugin development
guidelines); everything else runs the real CLI with Debian's real
monitoring-plugins-basic (tests/host-packages.txt), the project's NHC-style
example script, and, for a check stuck in uninterruptible sleep, the
project's hung FUSE mount (tests/cvmfs_sim.py: a real mount whose server
never answers).
"""

import json
import os
import re
import shutil
import subprocess
import time

import pytest

from startd_health import probes as registry
from startd_health.core.config import ConfigError
from startd_health.core.model import Measurement, ProbeResult, Status
from startd_health.core.runner import OVERRUN_GRACE_SECONDS, run_probes
from startd_health.core.state import StateDir
from startd_health.monitor.cron import render
from startd_health.core.verdict import judge as verdict_of
from startd_health.probes import site
from startd_health.system import plugin_protocol as pp
from startd_health.system.procs import CommandResult
from tests import cvmfs_sim as sim

from .helpers import REPO, parse_cron_output, run_cli
from .test_cvmfs import hung  # noqa: F401 (fixture)

PLUGINS = "/usr/lib/nagios/plugins"
# monitoring-plugins-basic is a host package of the unit suite (tests/host-packages.txt):
# the test command installs it on the host and in the py39 root filesystem, whose
# run allows no skip. The pools' root filesystems, which run the unit suite on
# Debian's own Python too, hold only what a pool needs: there these tests skip.
needs_plugins = pytest.mark.skipif(not os.path.exists(f"{PLUGINS}/check_dummy"),
                                   reason="monitoring-plugins-basic is not installed in this root filesystem")
NHC_STYLE = os.path.join(REPO, "packaging", "site-checks", "nhc-style-check.sh")

# RECORDED on the test host (Debian 12, monitoring-plugins 2.3.3).
CHECK_DISK = ("DISK OK - free space: / 75738MiB (72% inode=96%);| "
              "/=29525803008B;243497277849;257024904396;0;270552530944\n")
CHECK_DISK_ALL = ("DISK OK - free space: /dev 12044MiB (100% inode=99%); / 75738MiB (72% inode=96%);| "
                  "/dev=0B;11366144409;11997596876;0;12629049344 /=29525803008B;243497277849;257024904396;0;"
                  "270552530944\n")
CHECK_LOAD = ("LOAD OK - total load average: 0.47, 0.32, 0.58|load1=0.470;5.000;10.000;0; load5=0.320;4.000;"
              "8.000;0; load15=0.580;3.000;6.000;0; \n")
CHECK_PROCS = "PROCS OK: 80 processes | procs=80;500;1000;0;\n"
CHECK_SWAP = ("SWAP CRITICAL - 0% free (0MB out of 0MB) - Swap is either disabled, not present, or of zero size. "
              "|swap=0B;0;0;0;0\n")
# The multi-line example of the Nagios plugin development guidelines (perfdata on line 1, then after
# the first later line with a |, to the end).
GUIDELINES = """DISK OK - free space: / 3326 MB (56%); | /=2643MB;5948;5958;0;5968
/ 15272 MB (77%);
/boot 68 MB (69%);
/home 69357 MB (27%);
/var/log 819 MB (84%); | /boot=68MB;88;93;0;98
/home=69357MB;253404;253409;0;253414
/var/log=818MB;970;975;0;980
"""


@pytest.fixture
def configured():
    """configure(values): the registry learns site checks from knob values
    (NAME -> raw); forgets them again at the end (it is per process)."""
    def configure(values, source="test"):
        registry.configure(lambda name: (values[name], source) if name in values else None)
        return registry.all_probes()

    yield configure
    registry.configure(lambda name: None)


def cli_env_with(cli_env, **knobs):
    env = dict(cli_env)
    env.update({f"_CONDOR_STARTD_HEALTH_{k}": v for k, v in knobs.items()})
    return env


# ---------------------------------------------------------------- the protocol (pure)

def test_recorded_check_disk_perfdata_in_base_units():
    j = pp.judge(pp.NAGIOS, 0, CHECK_DISK)
    assert j.status == pp.OK and j.state == "OK"
    assert j.reason == "DISK OK - free space: / 75738MiB (72% inode=96%);"
    (root,) = j.perfdata
    assert (root.label, root.value, root.unit, root.uom) == ("/", 29525803008.0, "bytes", "B")
    assert (root.warn, root.crit, root.minimum, root.maximum) == (243497277849.0, 257024904396.0, 0.0,
                                                                  270552530944.0)
    assert [p.label for p in pp.judge(pp.NAGIOS, 0, CHECK_DISK_ALL).perfdata] == ["/dev", "/"]


def test_recorded_load_procs_swap():
    load = pp.judge(pp.NAGIOS, 0, CHECK_LOAD)
    assert [(p.label, p.value, p.unit, p.warn, p.crit, p.maximum) for p in load.perfdata] == [
        ("load1", 0.47, "", 5.0, 10.0, None), ("load5", 0.32, "", 4.0, 8.0, None),
        ("load15", 0.58, "", 3.0, 6.0, None)]
    assert pp.judge(pp.NAGIOS, 0, CHECK_PROCS).perfdata[0].value == 80.0
    swap = pp.judge(pp.NAGIOS, 2, CHECK_SWAP)
    assert swap.status == pp.FAILED and swap.reason.startswith("SWAP CRITICAL - 0% free")


def test_multi_line_output_perfdata_from_the_first_line_and_after_the_later_bar():
    short, long_text, perf = pp.split_output(GUIDELINES)
    assert short == "DISK OK - free space: / 3326 MB (56%);"
    assert long_text.splitlines()[0] == "/ 15272 MB (77%);" and long_text.endswith("/var/log 819 MB (84%);")
    j = pp.judge(pp.NAGIOS, 0, GUIDELINES)
    assert [p.label for p in j.perfdata] == ["/", "/boot", "/home", "/var/log"]
    assert j.perfdata[1].value == 68 * 1024 ** 2 and j.perfdata[1].unit == "bytes"


@pytest.mark.parametrize("item, label, value, unit", [
    ("time=0.25s;1;2", "time", 0.25, "seconds"),
    ("rta=12.5ms;100;500;0", "rta", 0.0125, "seconds"),
    ("lat=250us", "lat", 0.00025, "seconds"),
    ("used=45%;80;90;0;100", "used", 0.45, "ratio"),
    ("mem=2KB", "mem", 2048.0, "bytes"),
    ("mem=1.5GB", "mem", 1.5 * 1024 ** 3, "bytes"),
    ("mem=1TB", "mem", 1024.0 ** 4, "bytes"),
    ("pkts=12345c", "pkts", 12345.0, "total"),
    ("'free space /var'=3;;", "free space /var", 3.0, ""),
    ("'it''s'=1", "it's", 1.0, ""),
    ("temp=-4.5e1", "temp", -45.0, ""),
    ("odd=7furlongs", "odd", 7.0, ""),
])
def test_units_become_prometheus_base_units(item, label, value, unit):
    (p,) = pp.parse_perfdata(item)
    assert (p.label, p.unit) == (label, unit) and p.value == pytest.approx(value)


def test_undetermined_and_malformed_perfdata_are_skipped():
    assert pp.parse_perfdata("a=U;1;2 b= =3 c=abc d=1;;") == [pp.Perfdata("d", 1.0, "", "")]
    many = " ".join(f"x{i}=1" for i in range(100))
    assert len(pp.parse_perfdata(many)) == pp.MAX_PERFDATA_ITEMS


@pytest.mark.parametrize("protocol, code, status, reason", [
    (pp.NAGIOS, 0, pp.OK, "text"),
    (pp.NAGIOS, 1, pp.DEGRADED, "text"),
    (pp.NAGIOS, 2, pp.FAILED, "text"),
    (pp.NAGIOS, 3, pp.DEGRADED, "unknown: text"),
    (pp.NAGIOS, 4, pp.FAILED, "exit 4 (not a nagios status): text"),
    (pp.NAGIOS, 127, pp.FAILED, "exit 127 (not a nagios status): text"),
    (pp.NPD, 0, pp.OK, "text"),
    (pp.NPD, 1, pp.FAILED, "text"),
    (pp.NPD, 2, pp.DEGRADED, "unknown: text"),
    (pp.NPD, 3, pp.FAILED, "exit 3 (not a npd status): text"),
])
def test_exit_status_per_protocol(protocol, code, status, reason):
    j = pp.judge(protocol, code, "text\nmore\n")
    assert (j.status, j.reason) == (status, reason)


def test_npd_output_is_the_message_without_perfdata():
    j = pp.judge(pp.NPD, 1, "Kernel deadlock | x=1\n")
    assert j.reason == "Kernel deadlock | x=1" and j.perfdata == () and j.state == "NonOK"


def test_reason_is_one_bounded_line_and_stderr_stands_in_for_no_output():
    j = pp.judge(pp.NAGIOS, 2, "x" * 5000 + "\n" + "y" * (pp.MAX_OUTPUT_CHARS * 2))
    assert len(j.reason) == pp.MAX_REASON_CHARS and j.reason.endswith("...")
    assert pp.judge(pp.NAGIOS, 2, "", "warning: ignore\nmount /scratch failed\n").reason == "mount /scratch failed"
    assert pp.judge(pp.NAGIOS, 2, "").reason == "CRITICAL (no output)"
    assert pp.judge(pp.NAGIOS, 3, "").reason == "unknown: no output"


def test_outcomes_the_probe_decides():
    def result(**kw):
        base = dict(argv=["/x/check_foo"], returncode=None, stdout="", stderr="", duration_seconds=2.04)
        base.update(kw)
        return CommandResult(**base)
    assert site.judge("site_a", "nagios", result(error="No such file or directory")).reason == \
        "check_foo: cannot run: No such file or directory"
    timed = site.judge("site_a", "nagios", result(timed_out=True, abandoned=True, left_behind=(42,)))
    assert timed.status is Status.FAILED and timed.reason == (
        "check_foo timed out after 2.0s (abandoned); 1 process(es) unkillable, left behind (pid 42)")
    assert site.judge("site_a", "nagios", result(returncode=-9)).reason == "check_foo killed by signal 9"
    ok = site.judge("site_a", "nagios", result(returncode=0, stdout=CHECK_PROCS))
    assert ok.status is Status.OK and ok.facts == {"state": "OK"}
    assert ok.measurements == (Measurement("exit_code", 0.0, "", family="site_check"),
                               Measurement("perfdata", 80.0, "", {"label": "procs"}, family="site_check"))


# ---------------------------------------------------------------- configuration

@pytest.mark.parametrize("text, words", [
    ("/usr/lib/nagios/plugins/check_disk -w 10% -c 5% -p /",
     ("/usr/lib/nagios/plugins/check_disk", "-w", "10%", "-c", "5%", "-p", "/")),
    ("check_dummy 2 'disk gone'", ("check_dummy", "2", "disk gone")),
    ("check_dummy 2 'it''s gone'", ("check_dummy", "2", "it's gone")),
    ("a  'b'c  ''  \"d e\" $HOME \\x", ("a", "bc", "", "\"d", "e\"", "$HOME", "\\x")),
])
def test_command_lines_split_as_htcondor_splits_args(text, words):
    assert site.split_args(text) == words
    assert site.split_args(site.format_args(words)) == words


def test_unbalanced_quote_is_an_error():
    with pytest.raises(ValueError, match="unbalanced single quote"):
        site.split_args("check_dummy 2 'oops")


def test_no_checks_configured_no_site_probes(configured, cli_env):
    assert not [n for n in configured({}) if n.startswith("site_")]
    proc = run_cli(["--no-condor-config", "--probes", "sessions"], cli_env, entry="cron")
    assert proc.returncode == 0 and "Site" not in proc.stdout


def test_each_check_is_a_probe_with_its_own_knobs(configured, tmp_path):
    checks = tmp_path / "checks.d"
    checks.mkdir()
    for name, mode in (("check_nfs.sh", 0o755), ("README", 0o644), ("old.sh.rpmsave", 0o755), (".hidden", 0o755)):
        (checks / name).write_text("#!/bin/sh\necho OK\n")
        (checks / name).chmod(mode)
    found = configured({"SITE_CHECKS": "disk, Load", "SITE_CHECK_DISK": "check_disk -p /",
                        "SITE_CHECK_LOAD": "check_load", "SITE_CHECKS_DIR": str(checks)})
    names = [n for n in found if n.startswith("site_")]
    assert names == ["site_check_nfs", "site_disk", "site_load"]
    cls = found["site_disk"]
    assert cls.dynamic and cls.periodic and cls.prefix() == "SITE_CHECK_DISK"
    assert [k.name for k in cls.knobs] == ["SITE_CHECK_DISK", "SITE_CHECK_DISK_ARGS", "SITE_CHECK_DISK_PROTOCOL"]
    assert found["site_check_nfs"].knobs[0].default == (str(checks / "check_nfs.sh"),)


@pytest.mark.parametrize("values, message", [
    ({"SITE_CHECKS": "disk"}, "STARTD_HEALTH_SITE_CHECKS names disk, but STARTD_HEALTH_SITE_CHECK_DISK (its "
                              "command line) is not set"),
    ({"SITE_CHECKS": "9lives"}, "STARTD_HEALTH_SITE_CHECKS = '9lives' (test): '9lives' is not a check name"),
    ({"SITE_CHECKS_DIR": "relative/dir"}, "STARTD_HEALTH_SITE_CHECKS_DIR = 'relative/dir' (test): expected an "
                                          "absolute path"),
    ({"SITE_CHECKS_DIR": "/nonexistent/checks.d"}, "STARTD_HEALTH_SITE_CHECKS_DIR = /nonexistent/checks.d: "
                                                   "cannot be read: No such file or directory"),
    ({"SITE_CHECKS": "cvmfs", "SITE_CHECK_CVMFS": "x"}, None),   # site_cvmfs: no clash with the cvmfs probe
])
def test_bad_site_check_lists_are_kept_as_one_line_errors(configured, values, message):
    configured(values)
    if message is None:
        assert registry.configuration_error() == ""
    else:
        assert registry.configuration_error().startswith(message)
        assert not [n for n in registry.all_probes() if n.startswith("site_")]


@needs_plugins
def test_dynamic_knobs_through_environment_flags_and_config_command(cli_env, tmp_path):
    env = cli_env_with(cli_env, SITE_CHECKS="disk", SITE_CHECK_DISK=f"{PLUGINS}/check_disk -w 10% -c 5% -p /")
    proc = run_cli(["config", "--no-condor-config", "-v", "SITE_CHECK_DISK", "startd_health_site_check_disk_timeout",
                    "--site-check-disk-timeout", "12"], env)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert re.match(r"STARTD_HEALTH_SITE_CHECK_DISK +=.* /usr/lib/nagios/plugins/check_disk -w 10% -c 5% -p / +"
                    r"# environment _CONDOR_STARTD_HEALTH_SITE_CHECK_DISK", lines[0])
    assert re.match(r"STARTD_HEALTH_SITE_CHECK_DISK_TIMEOUT += 12 +# command line --site-check-disk-timeout", lines[1])
    # The list itself from a flag.
    proc = run_cli(["config", "--no-condor-config", "SITE_CHECK_LOAD", "--site-checks", "load",
                    "--site-check-load", "check_load -r"], cli_env)
    assert proc.stdout == "check_load -r\n", proc.stderr


@pytest.mark.bindings
@needs_plugins
def test_dynamic_knobs_through_htcondor_configuration(cli_env, tmp_path):
    pytest.importorskip("htcondor2", reason="reading a CONDOR_CONFIG file needs the HTCondor bindings")
    config = tmp_path / "condor_config"
    config.write_text("STARTD_HEALTH_SITE_CHECKS = disk\n"
                      f"CHECKS = {PLUGINS}\n"
                      "STARTD_HEALTH_SITE_CHECK_DISK = $(CHECKS)/check_disk -p /\n"
                      "STARTD_HEALTH_SITE_CHECK_DISK_PERIOD = 10m\n")
    env = dict(cli_env, CONDOR_CONFIG=str(config))
    proc = run_cli(["config", "-v", "SITE_CHECK_DISK", "SITE_CHECK_DISK_PERIOD"], env)
    assert proc.returncode == 0, proc.stderr
    assert f"= {PLUGINS}/check_disk -p /    # HTCondor config STARTD_HEALTH_SITE_CHECK_DISK" in proc.stdout
    assert "STARTD_HEALTH_SITE_CHECK_DISK_PERIOD = 600    # HTCondor config" in proc.stdout


@pytest.mark.parametrize("entry, knobs, expect", [
    ("cron", {"SITE_CHECK_DISK_PROTOCOL": "icinga"},
     "STARTD_HEALTH_SITE_CHECK_DISK_PROTOCOL = 'icinga' (environment _CONDOR_STARTD_HEALTH_SITE_CHECK_DISK_PROTOCOL)"
     ": expected one of nagios, npd"),
    ("cron", {"SITE_CHECK_DISK_TIMEOUT": "0"}, "STARTD_HEALTH_SITE_CHECK_DISK_TIMEOUT = '0'"),
    ("startd_health", {"SITE_CHECKS": "disk nope"}, "STARTD_HEALTH_SITE_CHECK_NOPE (its command line) is not set"),
])
@needs_plugins
def test_bad_values_give_the_one_line_error_and_cron_a_complete_unhealthy_ad(cli_env, entry, knobs, expect):
    env = cli_env_with(cli_env, **dict({"SITE_CHECKS": "disk", "SITE_CHECK_DISK": f"{PLUGINS}/check_disk"}, **knobs))
    args = ["cron", "--no-condor-config"] if entry == "startd_health" else ["--no-condor-config"]
    proc = run_cli(args, env, entry=entry)
    assert proc.returncode == 2
    assert expect in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
    ad = parse_cron_output(proc.stdout)
    assert ad["StartdHealthOk"] is False and expect in ad["StartdHealthReason"]


# ---------------------------------------------------------------- real plugins, real CLI

def plugins_env(cli_env, tmp_path, **checks):
    """The CLI's environment with these checks (NAME=command line) and a state directory."""
    knobs = {"SITE_CHECKS": " ".join(checks), "STATE_DIR": str(tmp_path / "state")}
    knobs.update({f"SITE_CHECK_{name.upper()}": command for name, command in checks.items()})
    return cli_env_with(cli_env, **knobs)


@needs_plugins
def test_check_dummy_critical_fails_the_node_with_its_reason(cli_env, tmp_path):
    env = plugins_env(cli_env, tmp_path, dummy=f"{PLUGINS}/check_dummy 2 'scratch disk gone'")
    proc = run_cli(["--no-condor-config", "--probes", "sessions site_dummy"], env, entry="cron")
    ad = parse_cron_output(proc.stdout)
    assert ad["StartdHealthOk"] is False and ad["StartdHealthFailedProbes"] == ["site_dummy"]
    assert ad["StartdHealthReason"] == "site_dummy: CRITICAL: scratch disk gone"
    assert ad["StartdHealthSiteDummyStatus"] == "failed" and ad["StartdHealthSiteDummyState"] == "CRITICAL"
    assert ad["StartdHealthSiteDummyExitCode"] == 2
    check = run_cli(["check", "--no-condor-config", "--json", "--probes", "site_dummy"], env)
    assert check.returncode == 2 and json.loads(check.stdout)["failed"] == ["site_dummy"]
    # WARNING degrades, UNKNOWN degrades saying so; the node still takes jobs.
    env["_CONDOR_STARTD_HEALTH_SITE_CHECK_DUMMY"] = f"{PLUGINS}/check_dummy 3 'no idea'"
    ad = parse_cron_output(run_cli(["--no-condor-config", "--force", "--probes", "site_dummy"], env,
                                   entry="cron").stdout)
    assert ad["StartdHealthOk"] is True and ad["StartdHealthDegradedProbes"] == ["site_dummy"]
    assert ad["StartdHealthSiteDummyReason"] == "unknown: UNKNOWN: no idea"


@needs_plugins
def test_npd_protocol_per_check(cli_env, tmp_path):
    env = plugins_env(cli_env, tmp_path, npd=f"{PLUGINS}/check_dummy 1 'problem'")
    env["_CONDOR_STARTD_HEALTH_SITE_CHECK_NPD_PROTOCOL"] = "npd"
    ad = parse_cron_output(run_cli(["--no-condor-config", "--probes", "site_npd"], env, entry="cron").stdout)
    assert ad["StartdHealthSiteNpdStatus"] == "failed" and ad["StartdHealthSiteNpdState"] == "NonOK"


def test_a_missing_or_not_executable_check_fails_saying_so(cli_env, tmp_path):
    text = tmp_path / "not-executable.sh"
    text.write_text("#!/bin/sh\nexit 0\n")
    env = plugins_env(cli_env, tmp_path, gone="/nonexistent/check_gone", noexec=str(text))
    ad = parse_cron_output(run_cli(["--no-condor-config", "--probes", "site_gone site_noexec"], env,
                                   entry="cron").stdout)
    assert ad["StartdHealthSiteGoneReason"] == "check_gone: cannot run: No such file or directory"
    assert ad["StartdHealthSiteNoexecReason"] == "not-executable.sh: cannot run: Permission denied"
    assert ad["StartdHealthOk"] is False


@needs_plugins
def test_check_disk_perfdata_are_metrics_that_pass_promtool(cli_env, tmp_path):
    textfiles = tmp_path / "textfile"
    textfiles.mkdir()
    env = plugins_env(cli_env, tmp_path, disk=f"{PLUGINS}/check_disk -w 10% -c 5% -p /",
                      load=f"{PLUGINS}/check_load -w 50,40,30 -c 100,80,60")
    env["_CONDOR_STARTD_HEALTH_TEXTFILE_DIR"] = str(textfiles)
    proc = run_cli(["--no-condor-config", "--probes", "site_disk site_load"], env, entry="cron")
    ad = parse_cron_output(proc.stdout)
    assert 0 <= ad["StartdHealthSiteLoadPerfdata_load1"] < 1000
    body = (textfiles / "startd_health.prom").read_text()
    # check_disk finds mount points in /etc/mtab: a bare root filesystem without
    # one (the Python 3.9 run's minbase bullseye) gets "DISK CRITICAL: / not found".
    if os.path.exists("/etc/mtab"):
        assert ad["StartdHealthSiteDiskOk"] is True and ad["StartdHealthSiteDiskPerfdataBytes__"] > 0
        assert re.search(r'^startd_health_site_check_perfdata_bytes\{label="/",probe="site_disk"\} [0-9.e+]+$',
                         body, re.MULTILINE), body
    else:
        assert ad["StartdHealthSiteDiskReason"] == "DISK CRITICAL: / not found"
    assert re.search(r'^startd_health_site_check_perfdata\{label="load15",probe="site_load"\} ', body, re.MULTILINE)
    assert 'startd_health_site_check_exit_code{probe="site_load"} 0.0' in body
    assert 'startd_health_probe_success{probe="site_load"} 1.0' in body
    if shutil.which("promtool"):   # Prometheus' own linter, when installed (./dev test installs it)
        lint = subprocess.run(["promtool", "check", "metrics"], input=body, capture_output=True, text=True, timeout=30)
        assert lint.returncode == 0, lint.stdout + lint.stderr


@needs_plugins
def test_check_procs_and_check_load_within_the_budget(cli_env, tmp_path):
    env = plugins_env(cli_env, tmp_path, procs=f"{PLUGINS}/check_procs -w 100000 -c 200000",
                      dstate=f"{PLUGINS}/check_procs -s D -w 50 -c 100",
                      load=f"{PLUGINS}/check_load -r -w 50,40,30 -c 100,80,60")
    env.update({f"_CONDOR_STARTD_HEALTH_SITE_CHECK_{n}_TIMEOUT": "5" for n in ("PROCS", "DSTATE", "LOAD")})
    t0 = time.monotonic()
    proc = run_cli(["check", "--no-condor-config", "--json", "--probes", "site_procs site_dstate site_load"], env)
    elapsed = time.monotonic() - t0
    doc = json.loads(proc.stdout)
    by = {p["probe"]: p for p in doc["probes"]}
    assert proc.returncode == 0, doc
    assert by["site_procs"]["reason"].startswith("PROCS OK: ")
    assert by["site_dstate"]["reason"].startswith("PROCS OK: ") and "STATE = D" in by["site_dstate"]["reason"]
    assert "OK - " in by["site_load"]["reason"] and "load average: " in by["site_load"]["reason"]  # 2.3.1: no LOAD
    assert all(p["duration_seconds"] < 5 for p in by.values()) and elapsed < 15


def test_nhc_style_example_script(cli_env, tmp_path):
    flag = tmp_path / "drain-me"
    env = plugins_env(cli_env, tmp_path, node=f"{NHC_STYLE} -m / -w {tmp_path} -F {flag}")
    good = parse_cron_output(run_cli(["--no-condor-config", "--probes", "site_node"], env, entry="cron").stdout)
    assert good["StartdHealthSiteNodeReason"] == "OK: 3 checks passed"
    assert good["StartdHealthSiteNodePerfdata_checks"] == 3
    flag.write_text("disk replacement, ticket 4711\n")
    bad = parse_cron_output(run_cli(["--no-condor-config", "--force", "--probes", "site_node"], env,
                                    entry="cron").stdout)
    assert bad["StartdHealthOk"] is False
    assert bad["StartdHealthSiteNodeReason"] == f"CRITICAL: {flag} exists: disk replacement, ticket 4711"
    usage = subprocess.run([NHC_STYLE], capture_output=True, text=True, timeout=10)
    assert usage.returncode == 3 and usage.stdout.startswith("UNKNOWN: no check given")


def test_checks_directory(cli_env, tmp_path):
    checks = tmp_path / "checks.d"
    checks.mkdir()
    script = checks / "scratch.sh"
    output = tmp_path / "scratch.out"   # what the script prints (a file: the line holds ; and |)
    output.write_text("WARNING: scratch 91% full | used=91%;90;95;0;100\n")
    script.write_text(f"#!/bin/sh\ncat {output}\nexit 1\n")
    script.chmod(0o755)
    env = cli_env_with(cli_env, SITE_CHECKS_DIR=str(checks), STATE_DIR=str(tmp_path / "state"),
                       SITE_CHECK_SCRATCH_ARGS="ignored-by-the-script")
    ad = parse_cron_output(run_cli(["--no-condor-config", "--probes", "site_scratch"], env, entry="cron").stdout)
    assert ad["StartdHealthSiteScratchStatus"] == "degraded" and ad["StartdHealthOk"] is True
    assert ad["StartdHealthSiteScratchPerfdataRatio_used"] == 0.91


# ---------------------------------------------------------------- a check stuck on a dead mount

@pytest.mark.root
def test_a_check_blocked_on_a_hung_fuse_mount_is_abandoned_within_its_budget_and_not_piled_up(
        hung, configured, tmp_path):  # noqa: F811 (fixture)
    target = tmp_path / "dead.example.org"
    mount = hung(target)
    # `ls` of a FUSE mount whose server never answers: interruptible at first,
    # uninterruptible (D) once signalled, so SIGKILL does not end it.
    classes = configured({"SITE_CHECKS": "dead", "SITE_CHECK_DEAD": f"ls {target}",
                          "SITE_CHECK_DEAD_TIMEOUT": "4"})
    probe = classes["site_dead"]()
    settings = {"site_dead": {"period": 300.0, "timeout": 4.0, "site_check_dead": ("ls", str(target)), "args": (),
                              "protocol": "nagios"}}
    state = StateDir(str(tmp_path / "state"))
    before = set(sim.children_of(os.getpid()))
    t0 = time.monotonic()
    first = run_probes([probe], settings, 30.0, state=state, force=True).results[0]
    elapsed = time.monotonic() - t0
    assert elapsed < 4.0 + OVERRUN_GRACE_SECONDS, elapsed
    assert first.status is Status.FAILED and re.match(
        r"ls timed out after [0-9.]+s \(abandoned\); 1 process\(es\) unkillable, left behind \(pid \d+\)",
        first.reason), first.reason
    assert mount.requests
    stuck_children = {pid: s for pid, s in sim.children_of(os.getpid()).items() if pid not in before}
    assert list(stuck_children.values()) == ["D"]
    for _ in range(2):   # later runs do not start another one into the same trap
        again = run_probes([probe], settings, 30.0, state=state, force=True).results[0]
        assert again.status is Status.FAILED and "stuck in it; not started again" in again.reason
        assert again.duration_seconds < 0.5
    assert len([p for p in sim.children_of(os.getpid()) if p not in before]) == 1
    mount.cleanup()   # the mount is aborted: the stuck process goes, and the check may run again
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and [p for p in sim.children_of(os.getpid()) if p not in before]:
        time.sleep(0.05)
    after = run_probes([probe], settings, 30.0, state=state, force=True).results[0]
    assert "not started again" not in after.reason


# ---------------------------------------------------------------- publishing

def test_the_ad_keeps_every_site_checks_verdict_when_perfdata_crowd_it():
    results = [ProbeResult(f"site_c{i:02d}", Status.OK if i else Status.FAILED, "x" * 200, {"state": "OK"},
                           tuple(Measurement("perfdata", float(j), "bytes", {"label": f"/mnt/volume{j:03d}"},
                                             family="site_check") for j in range(32)))
               for i in range(10)]
    from startd_health.core.model import RunReport
    text = render(RunReport(results), verdict_of(results), time.time())
    assert len(text.encode()) <= 8 * 1024
    ad = parse_cron_output(text)
    for i in range(10):
        assert f"StartdHealthSiteC{i:02d}Ok" in ad and f"StartdHealthSiteC{i:02d}Status" in ad
    assert ad["StartdHealthOk"] is False and ad["StartdHealthTruncated"] is True


def test_measurement_family_survives_the_state_file():
    m = Measurement("perfdata", 1.0, "bytes", {"label": "/"}, family="site_check")
    assert Measurement.from_json(json.loads(json.dumps(m.to_json()))) == m
    plain = Measurement("launch", 1.0, "seconds")
    assert "family" not in plain.to_json() and Measurement.from_json(plain.to_json()) == plain
