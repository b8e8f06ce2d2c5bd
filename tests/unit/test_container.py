"""Container probe: the judgement from recorded facts, and the gathering step
against runtime stand-ins (shell scripts) for the failure modes a real
Apptainer cannot be made to show on demand: hang on --version, hang on exec.
Real Apptainer is exercised in tests/e2e."""

import time

import pytest

from startd_health.core.model import Status
from startd_health.probes import all_probes
from startd_health.probes.container import Gathered, gather, judge, parse_images
from startd_health.system.container import Launch, Runtime, classify_uid_map, parse_version

from .helpers import make_context


def test_registered():
    assert all_probes()["container"].name == "container"


def test_parse_version():
    assert parse_version("apptainer version 1.4.5\n") == ("apptainer", "1.4.5")
    assert parse_version("singularity-ce version 4.1.0-jammy") == ("singularity-ce", "4.1.0-jammy")
    assert parse_version("3.8.7") == ("", "3.8.7")


@pytest.mark.parametrize("uid_map,uid,mode", [
    ("         0          0 4294967295\n", 1000, "privileged"),
    ("      1000       1000          1\n", 1000, "unprivileged"),
    ("         0          0          1\n", 0, "unprivileged"),
    ("         0       1000          1\n         1     100000      65536\n", 1000, "fakeroot"),
    ("hello\n", 1000, ""),
    ("", 1000, ""),
])
def test_classify_uid_map(uid_map, uid, mode):
    assert classify_uid_map(uid_map, uid) == mode


def test_parse_images():
    assert parse_images("el9=/cvmfs/x/el9:latest, /opt/test.sif /opt/sandbox/") == (
        "el9=/cvmfs/x/el9:latest", "test=/opt/test.sif", "sandbox=/opt/sandbox/")
    for bad, message in [("el9=", "has no path"), ("/x/a.sif /y/a.sif", "used twice"),
                         ("bad!name=/x", "must be letters")]:
        with pytest.raises(ValueError, match=message):
            parse_images(bad)


RT = Runtime("/usr/bin/apptainer", "PATH")


def test_judge_all_ok():
    g = Gathered(RT, name="apptainer", version="1.4.5",
                 launches=(Launch("el9", "/i/el9.sif", True, 0.2, "unprivileged"),))
    r = judge(g)
    assert r.status is Status.OK and r.reason == "apptainer 1.4.5 (unprivileged): 1/1 images launch"
    assert r.facts["images_ok"] == ("el9",) and r.facts["available"] is True
    assert r.measurements[0].labels == (("image", "el9"),)


def test_judge_partial_failure_fails_unless_partial_is_ok_and_names_the_image():
    g = Gathered(RT, name="apptainer", version="1.4.5",
                 launches=(Launch("el9", "/i/el9.sif", True, 0.2, "unprivileged"),
                           Launch("el8", "/i/el8.sif", False, 0.1, error="apptainer exit 255: FATAL: no such image")))
    r = judge(g)
    assert r.status is Status.FAILED and r.facts["images_failed"] == ("el8",) and r.facts["available"] is True
    assert r.reason.endswith("1/2 images launch; el8: apptainer exit 255: FATAL: no such image")
    assert judge(g, partial_ok=True).status is Status.DEGRADED


def test_judge_total_failure_and_missing_runtime():
    g = Gathered(RT, name="apptainer", version="1.4.5", launches=(Launch("el9", "/x", False, 1.0, error="boom"),))
    assert judge(g).status is Status.FAILED and judge(g).facts["available"] is False
    missing = judge(Gathered(None, runtime_error="no apptainer or singularity in PATH (/usr/bin)"))
    assert missing.status is Status.FAILED and missing.facts == {"available": False}
    broken = judge(Gathered(RT, version_error="apptainer timed out after 10.0s"))
    assert broken.status is Status.FAILED and "--version: apptainer timed out" in broken.reason


def test_no_image_configured_is_ok_but_says_so():
    r = judge(Gathered(RT, name="apptainer", version="1.4.5"))
    assert r.status is Status.OK and "no image configured" in r.reason


def fake_runtime(tmp_path, version_body, exec_body):
    path = tmp_path / "apptainer"
    path.write_text(f"""#!/bin/sh
if [ "$1" = --version ]; then {version_body}; fi
{exec_body}
""")
    path.chmod(0o755)
    return str(path)


def ctx_for(runtime, images=("t=/img",), budget=20.0, launch_timeout=2.0):
    return make_context("container", budget, runtime=runtime, images=images, flags=("--ipc",),
                        launch_timeout=launch_timeout, requirement="REQUIRED")


@pytest.mark.slow
def test_gather_with_runtime_that_hangs_on_version(tmp_path):
    rt = fake_runtime(tmp_path, "trap '' TERM; sleep 300", "exit 0")
    t0 = time.monotonic()
    r = judge(gather(ctx_for(rt, budget=3)))
    assert time.monotonic() - t0 < 3 + 2.5
    assert r.status is Status.FAILED and "timed out" in r.reason


def test_gather_with_image_whose_exec_hangs(tmp_path):
    rt = fake_runtime(tmp_path, "echo 'apptainer version 9.9'; exit 0", "sleep 300")
    t0 = time.monotonic()
    r = judge(gather(ctx_for(rt, images=("a=/a", "b=/b"), launch_timeout=0.5)))
    assert time.monotonic() - t0 < 2 * (0.5 + 1.0) + 1
    assert r.status is Status.FAILED and r.facts["images_failed"] == ("a", "b")
    assert "a: apptainer timed out after" in r.reason


def test_gather_exit_zero_with_unexpected_output_is_a_failed_launch(tmp_path):
    rt = fake_runtime(tmp_path, "echo 'apptainer version 9.9'; exit 0", "echo 'WARNING: something'; exit 0")
    r = judge(gather(ctx_for(rt)))
    assert r.status is Status.FAILED and "inside script did not finish: 'WARNING: something'" in r.reason


def test_gather_runs_the_inside_script_with_the_flags(tmp_path):
    log = tmp_path / "argv"
    # The stand-in runs the inside script on the host: a real /bin/sh, a real
    # /proc/self/uid_map (the full map: no user namespace), the same pid namespace.
    rt = fake_runtime(tmp_path, "echo 'apptainer version 9.9'; exit 0",
                      f'echo "$1 $2 $3 $4 $5" > {log}; shift 3; exec "$@"')
    r = judge(gather(ctx_for(rt)))
    assert r.status is Status.OK, r.reason
    assert r.facts["mode"] == "privileged" and r.facts["pid_namespace"] is False
    assert log.read_text().split() == ["exec", "--ipc", "/img", "/bin/sh", "-c"]


def test_configured_runtime_that_is_missing(tmp_path):
    r = judge(gather(ctx_for(str(tmp_path / "nope"))))
    assert r.status is Status.FAILED and "is not an executable" in r.reason


def test_module_command_provides_runtime_and_environment(tmp_path):
    bindir = tmp_path / "modbin"
    bindir.mkdir()
    fake_runtime(bindir, "echo \"apptainer version $FROM_MODULE\"; exit 0", "exit 0")
    r = judge(gather(make_context("container", module=f"export PATH={bindir}:$PATH FROM_MODULE=7.7", flags=())))
    assert r.status is Status.OK and r.facts["version"] == "7.7" and r.facts["path"] == str(bindir / "apptainer")
    r = judge(gather(make_context("container", module="false", flags=())))
    assert r.status is Status.FAILED and "'false' failed" in r.reason


def test_runtime_that_prints_no_version_is_not_a_runtime(tmp_path):
    rt = fake_runtime(tmp_path, "exit 0", "exit 0")
    r = judge(gather(ctx_for(rt)))
    assert r.status is Status.FAILED and r.reason == f"{rt} --version: exit 0 but printed no version"


def test_requirement_levels():
    from startd_health.probes.container import apply_requirement, skipped_by_policy
    broken = judge(Gathered(None, runtime_error="no apptainer"))
    required = apply_requirement(broken, "REQUIRED")
    optional = apply_requirement(broken, "OPTIONAL")
    assert required.status is Status.FAILED and required.facts["requirement"] == "REQUIRED"
    assert optional.status is Status.DEGRADED and optional.status.usable
    assert optional.facts["available"] is False and optional.reason == "no apptainer"
    fine = judge(Gathered(RT, name="apptainer", version="1.4.5"))
    assert apply_requirement(fine, "OPTIONAL").status is Status.OK
    never = skipped_by_policy()
    assert never.status is Status.SKIPPED and never.facts == {"available": False, "requirement": "NEVER"}


def test_requirement_knob_parsing():
    from startd_health.probes.container import parse_requirement
    assert parse_requirement(" required ") == "REQUIRED"
    with pytest.raises(ValueError, match="REQUIRED, OPTIONAL or NEVER"):
        parse_requirement("PREFERRED")


@pytest.mark.bindings   # the expression is evaluated by classad2
def test_condor_default_image_only_when_a_plain_path():
    from startd_health.probes.container import condor_default_image
    assert condor_default_image('"/cvmfs/singularity.opensciencegrid.org/osg/el9:latest"') == \
        "/cvmfs/singularity.opensciencegrid.org/osg/el9:latest"
    assert condor_default_image("TARGET.SingularityImage") == ""
    assert condor_default_image('ifThenElse(TARGET.WantEL8, "/a", "/b")') == ""
    assert condor_default_image('"relative.sif"') == "" and condor_default_image(None) == ""
    assert condor_default_image("((( not an expression") == ""


@pytest.mark.bindings
def test_condor_default_image_is_added_to_the_launches(tmp_path):
    from startd_health.probes.container import images_to_test

    class Params:
        def get(self, name):
            return '"/cvmfs/x/el9:latest"' if name == "SINGULARITY_IMAGE_EXPR" else None
    ctx = ctx_for("/x", images=("el9=/opt/el9.sif",))
    ctx.condor = Params()
    ctx.settings = dict(ctx.settings, condor_image=True)
    images, _ = images_to_test(ctx)
    assert [(i.name, i.path) for i in images] == [("el9", "/opt/el9.sif"), ("condor_default", "/cvmfs/x/el9:latest")]
    ctx.settings = dict(ctx.settings, condor_image=False)
    assert [(i.name, i.path) for i in images_to_test(ctx)[0]] == [("el9", "/opt/el9.sif")]


def test_htcondors_singularity_is_what_gets_tested_never_a_look_alike(tmp_path):
    from .helpers import FakeCondor
    rt = fake_runtime(tmp_path, "echo 'apptainer version 9.9'; exit 0", 'while [ "$1" != /bin/sh ]; do shift; done; exec "$@"')
    ctx = ctx_for("", images=())
    ctx.condor = FakeCondor(SINGULARITY=rt)
    r = judge(gather(ctx))
    assert r.status is Status.OK and r.facts["path"] == rt
    ctx = ctx_for("", images=())
    ctx.condor = FakeCondor(SINGULARITY=str(tmp_path / "gone" / "apptainer"))
    r = judge(gather(ctx))   # even if an apptainer is on PATH, the starter's one is gone
    assert r.status is Status.FAILED and r.reason == f"HTCondor's SINGULARITY ({tmp_path}/gone/apptainer) is not an executable"
