"""The pre-job hook's decision and its reading of the job ad, with and without the bindings
(the real hook runs under a real starter in tests/e2e, and without bindings in tests/e2e/test_pilot.py)."""

import os

import pytest


from startd_health.monitor.hook import (EXIT_ACCEPT, EXIT_HOLD, IMAGE_ATTRIBUTES, Decision, decide, job_image,
                                        not_checked, read_job_ad)
from startd_health.monitor.job_ad import Unreadable, _read_literals, _read_with_classad2
from startd_health.core.model import ProbeResult, Status
from startd_health.system.container import Launch

classad2 = pytest.importorskip("classad2", reason="needs the HTCondor Python bindings")
pytestmark = pytest.mark.bindings

SITE = {"/cvmfs/img/el9": "el9"}
NOW = 1_000_000.0


def cached(age, ok=("el9",)):
    return ProbeResult("container", Status.OK, "", {"images_ok": ok}, started_at=NOW - age)


def never():
    raise AssertionError("must not launch")


def test_fresh_periodic_result_accepts_without_launching():
    d = decide("/cvmfs/img/el9", SITE, cached(30), 300, NOW, never)
    assert d.accept and "periodic test 30s ago" in d.message


def test_stale_or_unknown_image_is_launched_now():
    launches = []

    def ok():
        launches.append(1)
        return Launch("x", "x", True, 0.15, "unprivileged"), False
    assert decide("/cvmfs/img/el9", SITE, cached(400), 300, NOW, ok).accept
    assert decide("/home/u/mine.sif", SITE, cached(30), 300, NOW, ok).accept
    assert len(launches) == 2


def test_jobs_own_broken_image_is_held_site_image_is_requeued_missing_runtime_is_requeued():
    bad = lambda: (Launch("x", "x", False, 0.1, error="FATAL: not a SIF"), False)  # noqa: E731
    held = decide("/home/u/broken.sif", SITE, None, 300, NOW, bad)
    assert not held.accept and not held.requeue and "the job's image /home/u/broken.sif" in held.message
    site = decide("/cvmfs/img/el9", SITE, cached(400), 300, NOW, bad)
    assert site.requeue and "site image el9" in site.message
    none = decide("/x.sif", SITE, None, 300, NOW, lambda: (Launch("x", "x", False, 0, error="no apptainer"), True))
    assert none.requeue and "cannot launch containers now: no apptainer" in none.message


def test_no_image_means_nothing_to_check():
    assert decide("", SITE, None, 300, NOW, never).accept


def test_emit_protocol(capsys):
    assert Decision(False, 'bad "image"\nInjected = 1').emit() == EXIT_HOLD
    out = capsys.readouterr().out
    ad = classad2.ClassAd("[" + out.replace("\n", ";") + "]")
    assert list(ad.keys()) == ["HookStatusMessage"]
    assert Decision(False, "node", requeue=True).emit() == EXIT_ACCEPT
    assert "HookStatusCode = 300" in capsys.readouterr().out


def test_job_ad_parsing():
    # A malformed line after the image (the starter never sends one; a
    # hand-run hook may get one) loses nothing read before it.
    ad = read_job_ad('ClusterId = 3\nContainerImage = "/x/y.sif"\nJunk = [ broken\n')
    assert job_image(ad) == ("/x/y.sif", "")
    text = 'ClusterId = 3\nContainerImage = "/x/y.sif"\nJunk = [ broken\n'
    assert job_image(_read_literals(text, IMAGE_ATTRIBUTES)) == ("/x/y.sif", "")   # without the bindings too
    assert job_image(read_job_ad('SingularityImage = "/a.sif"\nContainerImage = "/b.sif"\n')) == ("/a.sif", "")
    assert job_image(read_job_ad("garbage ((")) == ("", "")
    assert job_image(read_job_ad("SingularityImage = undefined\n")) == ("", "")


# Old-format job ads as the starter writes them (classad2's printOld), and odd ones.
LITERALS = ["/cvmfs/img/el9:latest", "", "with space", 'q"uote', "back\\slash", "ends\\", 'ends\\"',
            '\\"both\\"', "tab\there", "é ü 日本", "x = y; z", '"']
ODD = ['SingularityImage = strcat("/a", "b")', 'SingularityImage = "a" + "b"', 'SingularityImage = "open',
       'SingularityImage = "a\\" ', "SingularityImage = 3", "SingularityImage = MY.Other",
       'singularityimage = "lower"', 'SingularityImage = "first"\nSingularityImage = "second"',
       'SingularityImage = "x"\nSingularityImage = undefined', "SingularityImage = UNDEFINED",
       '[ SingularityImage = "new syntax"; ]', 'SingularityImage="/opt/el9.sif"', 'SingularityImage = "x" "y"']


def test_without_the_bindings_literals_read_as_classad2_reads_them():
    """The reader a pilot uses (no classad2) against the real library: every string the starter
    can write reads back the same; anything else is the same value or Unreadable, never another."""
    for text in LITERALS:
        old = classad2.ClassAd({"SingularityImage": text}).printOld()
        assert _read_literals(old, ["SingularityImage"]) == {"SingularityImage": text}, old
        assert _read_with_classad2(classad2, old, ["SingularityImage"]) == {"SingularityImage": text}, old
    for text in ODD:
        ours = _read_literals(text, ["SingularityImage"]).get("SingularityImage")
        real = _read_with_classad2(classad2, text, ["SingularityImage"]).get("SingularityImage")
        assert ours == real or isinstance(ours, Unreadable), (text, ours, real)
        if isinstance(real, Unreadable):
            assert isinstance(ours, Unreadable), (text, ours)


def test_an_image_the_hook_cannot_read_starts_the_job_unchecked():
    """Never held (the job may be fine), never requeued (it would come straight back here)."""
    for text in ('SingularityImage = strcat("/a", "b")\n', 'ContainerImage = "unterminated\n'):
        image, why = job_image(_read_literals(text, IMAGE_ATTRIBUTES))
        assert not image and why
        decision = not_checked(why)
        assert decision.accept and not decision.requeue and "was not checked" in decision.message


def test_the_hook_never_launches_into_a_repository_the_cvmfs_probe_found_hung(tmp_path, cli_env):
    """The real hook command. Simulated: the cvmfs probe's record of a child
    stuck on the repository (this test's own pid stands for the stuck process,
    so the record counts as live) and the runtime, a script that notes each call."""
    import subprocess
    import sys

    from startd_health.system import stuck

    calls = tmp_path / "calls"
    runtime = tmp_path / "apptainer"
    runtime.write_text(f"#!/bin/sh\necho \"$@\" >> {calls}\nexit 0\n")
    runtime.chmod(0o755)
    records = tmp_path / "state" / "probes" / "cvmfs"
    records.mkdir(parents=True)
    stuck.remember_hung_repository(str(records), "hung.example.org", [os.getpid()], 1_800_000_000.0)
    proc = subprocess.run([sys.executable, "-m", "startd_health", "hook", "prepare-job", "--no-condor-config",
                           "--state-dir", str(tmp_path / "state"), "--container-runtime", str(runtime)],
                          input='SingularityImage = "/cvmfs/hung.example.org/el9.sif"\n', env=cli_env,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == EXIT_ACCEPT, proc.stderr
    assert "HookStatusCode = 300" in proc.stdout                       # requeued: a node fault
    assert "CVMFS repository hung.example.org is hung" in proc.stdout
    assert not calls.exists()                                          # nothing launched into the trap


def test_wrong_hook_arguments_do_not_hold_the_job(cli_env):
    """A site's typo in HOOK_PREPARE_JOB_ARGS (the real CLI): the job starts unchecked, it is not held."""
    import subprocess
    import sys
    proc = subprocess.run([sys.executable, "-m", "startd_health", "hook", "prepare-job", "--no-such-option"],
                          input='SingularityImage = "/x.sif"\n', env=cli_env, capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == EXIT_ACCEPT, proc.stderr
    assert "was not checked" in proc.stdout and "HookStatusCode" not in proc.stdout
    assert "--no-such-option" in proc.stderr                          # argparse's line, for the StartLog


def test_the_real_hook_holds_a_job_whose_own_image_does_not_launch(tmp_path, cli_env):
    """Through the real CLI: the hold (exit 1) is the hook's decision and reaches HTCondor as such.
    Simulated: the runtime, a script that fails every launch as Apptainer does on a truncated SIF."""
    import subprocess
    import sys
    runtime = tmp_path / "apptainer"
    runtime.write_text("#!/bin/sh\necho 'FATAL:   container creation failed: image driver mount failure' >&2\n"
                       "exit 255\n")
    runtime.chmod(0o755)
    image = tmp_path / "broken.sif"
    image.write_bytes(b"not a SIF")   # there and readable: the cheap re-checks pass, the launch fails
    proc = subprocess.run([sys.executable, "-m", "startd_health", "hook", "prepare-job", "--no-condor-config",
                           "--state-dir", str(tmp_path / "state"), "--container-runtime", str(runtime)],
                          input=f'SingularityImage = "{image}"\n', env=cli_env,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == EXIT_HOLD, (proc.stdout, proc.stderr)
    assert f"the job's image {image} does not launch on this node" in proc.stdout
    assert "HookStatusCode" not in proc.stdout
