"""The inside-the-image script, run by a real /bin/sh (busybox sh runs it in
the end-to-end tests, inside real images)."""

import os
import subprocess

from startd_health.system import inside
from startd_health.system.container import judge_launch


def run(script, env=None):
    return subprocess.run(["/bin/sh", "-c", script], capture_output=True, text=True, timeout=10,
                          env=env or dict(os.environ)).stdout


def test_core_checks_pass_on_this_host(tmp_path):
    out = run(inside.script(binds=[str(tmp_path)]), env=dict(os.environ, HOME=str(tmp_path)))
    report = inside.parse("INFO: runtime chatter\n" + out)
    assert report.finished and report.failures == []
    assert [name for name, _, _ in report.checks] == ["tmp_writable", "home_writable", f"bind:{tmp_path}"]
    assert report.pidns == os.readlink("/proc/self/ns/pid")
    assert judge_launch("x", "/x", 0.1, report, os.getuid(), report.pidns).ok


def test_failures_are_named(tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    out = run(inside.script(binds=["/no/such/dir", "/weird path/$(reboot)"]),
              env=dict(os.environ, HOME="/nonexistent-home"))
    report = inside.parse(out)
    assert report.finished
    assert report.failures == ["home_writable: no home directory (HOME=/nonexistent-home)",
                               "bind:/no/such/dir: not mounted inside", "bind:/weird_path/__reboot_: not mounted inside"]
    launch = judge_launch("el9", "/x", 0.1, report, os.getuid(), "pid:[1]")
    assert not launch.ok and launch.error.startswith("inside: home_writable: no home directory")


def test_a_script_cut_short_is_not_a_pass():
    out = run(inside.script())
    cut = "\n".join(out.splitlines()[:-1])
    launch = judge_launch("el9", "/x", 0.1, inside.parse(cut), os.getuid(), "pid:[1]", "check tmp_writable ok")
    assert not launch.ok and "did not finish" in launch.error


def test_standalone_script_gates_and_execs_the_jobs_command(tmp_path):
    script = tmp_path / "checks.sh"
    script.write_text(inside.standalone())
    ok = subprocess.run(["/bin/sh", str(script), "echo", "the job ran"], capture_output=True, text=True, timeout=10)
    assert ok.returncode == 0 and ok.stdout == "the job ran\n" and "checks passed" in ok.stderr
    script.write_text(inside.standalone(binds=["/no/such/bind"]))
    bad = subprocess.run(["/bin/sh", str(script), "echo", "the job ran"], capture_output=True, text=True, timeout=10)
    assert bad.returncode == 1 and bad.stdout == ""
    assert bad.stderr == "startd-health: bind:/no/such/bind: not mounted inside\n"
