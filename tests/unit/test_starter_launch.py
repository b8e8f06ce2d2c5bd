"""The starter's launch as a pure function of HTCondor's knobs
(system/starter_launch.py): the argument vectors 23.9 and 25.14 build for
the same knobs, as read in HTCondor's singularity.cpp and as the real
starters log them (tests/e2e/test_starter_launch.py compares with a real
StarterLog). Pure logic: the knob values are a dict, no HTCondor runs here."""

import os

import pytest

from startd_health.core.model import Status
from startd_health.system import starter_launch as sl

from .helpers import FakeCondor

V23 = (23, 9, 6)
V25 = (25, 14, 1)
EXE = "/var/lib/condor/execute"


def param(**values):
    return lambda name: values.get(name)


def build(version, image="/opt/c/site.sif", slot=sl.SlotFacts(), exists=lambda p: p != "/gone",
          is_dir=lambda p: False, **knobs):
    return sl.starter_launch(param(**knobs), "/usr/bin/singularity", image, EXE, "42", slot, exists, is_dir,
                             version=version)


def test_defaults_23_9_scratch_is_the_slot_dir():
    launch = build(V23)
    d = EXE + "/startd-health.42"
    assert launch.slot_dir == launch.scratch == d
    assert launch.argv("/bin/true") == [
        "/usr/bin/singularity", "-s", "exec", "-S", "/tmp", "-S", "/var/tmp", "-W", d, "--pwd", d, "-B", d,
        "--home", d, "-C", "/opt/c/site.sif", "/bin/true"]


def test_defaults_25_14_nested_scratch_binds_the_slot_dir():
    launch = build(V25, SINGULARITY_BIND_EXPR='"/cvmfs"')
    d = EXE + "/startd-health.42"
    s = d + "/scratch"
    assert (launch.slot_dir, launch.scratch) == (d, s)
    # The order a real 25.14.1 starter logs: -S -S -W --pwd -B <slot> -B /cvmfs --home -C IMAGE
    assert launch.argv() == [
        "/usr/bin/singularity", "-s", "exec", "-S", "/tmp", "-S", "/var/tmp", "-W", s, "--pwd", s, "-B", d,
        "-B", "/cvmfs", "--home", s, "-C", "/opt/c/site.sif"]


def test_nested_scratch_can_be_turned_off_and_did_not_exist_before_24_7():
    assert build(V25, STARTER_NESTED_SCRATCH="false").scratch.endswith("startd-health.42")
    assert build((24, 6, 0)).scratch.endswith("startd-health.42")
    assert build((24, 7, 3)).scratch.endswith("/scratch")


def test_extra_arguments_come_last_before_the_image_raw_or_v2_quoted():
    raw = build(V25, SINGULARITY_EXTRA_ARGUMENTS="--bind /gone:/data --env A=1")
    assert raw.argv()[-6:] == ["-C", "--bind", "/gone:/data", "--env", "A=1", "/opt/c/site.sif"]
    # A ClassAd string literal: evaluated first, then split (V1 raw).
    literal = build(V25, SINGULARITY_EXTRA_ARGUMENTS='"--bind /x"')
    assert literal.argv()[-3:] == ["--bind", "/x", "/opt/c/site.sif"]


def test_v2_quoted_arguments():
    assert sl.split_args("\"--bind '/a b' -e\"") == ["--bind", "/a b", "-e"]
    assert sl.split_args("\"'it''s'\"") == ["it's"]
    assert sl.split_args("--bind /a  -e") == ["--bind", "/a", "-e"]
    with pytest.raises(ValueError):
        sl.split_args("\"'open\"")


@pytest.mark.bindings
def test_bind_expr_plain_string_binds_existing_sources_and_skips_missing_ones():
    pytest.importorskip("classad2")
    launch = build(V25, SINGULARITY_BIND_EXPR='"/cvmfs,/gone:/data /etc/hosts:/h:ro"')
    binds = [launch.options[i + 1] for i, a in enumerate(launch.options) if a == "-B"]
    assert binds[1:] == ["/cvmfs", "/etc/hosts:/h:ro"]
    assert launch.skipped_binds == ("/gone:/data",)
    assert ("SINGULARITY_BIND_EXPR", "-B /cvmfs") in launch.knob_args


@pytest.mark.bindings
def test_bind_expr_of_the_job_ad_is_not_testable_and_unquoted_paths_bind_nothing():
    pytest.importorskip("classad2")
    job = build(V25, SINGULARITY_BIND_EXPR='ifThenElse(TARGET.WantCvmfs, "/cvmfs", "")')
    assert job.untestable and job.untestable[0].startswith("SINGULARITY_BIND_EXPR")
    assert job.options.count("-B") == 1
    # HTCondor's default (the job's SingularityBind) is no site setting: nothing to report.
    assert build(V25).untestable == ()
    # An unquoted path is not a ClassAd expression: the starter binds nothing (no raw fallback here).
    assert build(V25, SINGULARITY_BIND_EXPR="/cvmfs").options.count("-B") == 1


@pytest.mark.bindings
def test_extra_arguments_of_the_job_ad_are_not_testable():
    pytest.importorskip("classad2")
    launch = build(V25, SINGULARITY_EXTRA_ARGUMENTS='strcat("--bind ", TARGET.Data)')
    assert launch.untestable == ("SINGULARITY_EXTRA_ARGUMENTS: an expression of the job ad",)
    assert launch.argv()[-2:] == ["-C", "/opt/c/site.sif"]


def test_target_dir_23_9_and_25_14():
    t23 = build(V23, SINGULARITY_TARGET_DIR="/srv")
    d = EXE + "/startd-health.42"
    assert t23.options[t23.options.index("--pwd") + 1] == "/srv"
    assert t23.options[t23.options.index("-B") + 1] == d + ":/srv"
    t25 = build(V25, SINGULARITY_TARGET_DIR="/srv")
    assert t25.options[t25.options.index("--pwd") + 1] == "/srv/scratch"
    assert t25.options[t25.options.index("-B") + 1] == d + ":/srv"
    assert t25.options[t25.options.index("--home") + 1] == d + "/scratch"   # the host path, as the starter does


def test_mount_under_scratch():
    assert "-S" not in build(V25, MOUNT_UNDER_SCRATCH='""').options
    assert build(V25, MOUNT_UNDER_SCRATCH="/tmp /dev/shm").options[3:7] == ("-S", "/tmp", "-S", "/dev/shm")


def test_pid_namespaces():
    off = build(V25, SINGULARITY_USE_PID_NAMESPACES="False")
    assert off.argv()[-4:] == ["--contain", "--ipc", "--cleanenv", "/opt/c/site.sif"]
    assert off.pid_namespaces is False
    assert build(V25, SINGULARITY_USE_PID_NAMESPACES="true").pid_namespaces is True
    auto = build(V25)
    assert auto.pid_namespaces is None and "-C" in auto.options


def test_gpus_23_9_always_nv_25_14_by_driver_facts():
    gpu = sl.SlotFacts(gpus=True)
    assert "--nv" in build(V23, slot=gpu).options and "--rocm" not in build(V23, slot=gpu).options
    assert "--nv" not in build(V25, slot=gpu).options
    nvidia = build(V25, slot=sl.SlotFacts(gpus=True, nvidia_driver=True)).options
    assert "--nv" in nvidia and "--rocm" not in nvidia
    assert "--rocm" in build(V25, slot=sl.SlotFacts(gpus=True, rocm=True)).options
    assert "--rocm" in build((25, 10, 1), slot=gpu).options          # 25.8-25.13: on by default
    assert "--rocm" not in build((25, 10, 1), slot=gpu, SINGULARITY_ADD_ROCM_FLAG="false").options
    assert "--nv" not in build(V25).options


@pytest.mark.bindings
def test_gpu_slots_bind_opencl_vendors_only_with_a_bind_expr():
    pytest.importorskip("classad2")
    gpu = sl.SlotFacts(gpus=True, nvidia_driver=True)
    with_binds = build(V25, slot=gpu, is_dir=lambda p: p == sl.OPENCL_VENDORS, SINGULARITY_BIND_EXPR='"/cvmfs"')
    assert "/etc/OpenCL/vendors" in with_binds.options
    assert "/etc/OpenCL/vendors" not in build(V25, slot=gpu, is_dir=lambda p: p == sl.OPENCL_VENDORS).options


def test_launcher_25_only_when_asked():
    launch = build(V25, SINGULARITY_USE_LAUNCHER="true", LIBEXEC="/usr/libexec/condor")
    i = launch.options.index("-W")
    assert launch.options[i - 2:i] == ("-B", "/usr/libexec/condor/condor_container_launcher.sh:"
                                             "/condor_container_launcher.sh")
    assert "condor_container_launcher.sh" not in " ".join(build(V23, SINGULARITY_USE_LAUNCHER="true").options)


def test_environment_23_9_and_25_14():
    s23 = build(V23).scratch
    e23 = build(V23).env
    assert e23["TMPDIR"] == e23["APPTAINER_CACHEDIR"] == e23["APPTAINER_TEMPDIR"] == s23
    assert "APPTAINER_TMPDIR" not in e23 and "APPTAINERENV_PS1" not in e23
    e25 = build(V25).env
    s25 = build(V25).scratch
    assert e25["TMPDIR"] == e25["APPTAINER_TMPDIR"] == e25["APPTAINER_CACHEDIR"] == e25["_CONDOR_SCRATCH_DIR"] == s25
    assert "SINGULARITY_CACHEDIR" not in e25 and e25["APPTAINERENV_TMPDIR"] == s25


def test_runtime_environment_drops_what_would_reconfigure_the_launch():
    launch = build(V25)
    env = sl.runtime_environment({"PATH": "/usr/bin", "HOME": "/root", "APPTAINER_BIND": "/x", "TMPDIR": "/tmp"},
                                 launch)
    assert env["PATH"] == "/usr/bin" and "HOME" not in env and "APPTAINER_BIND" not in env
    assert env["TMPDIR"] == launch.scratch


def test_the_starters_pre_job_test():
    assert build(V25).test_argv()[:4] == ["/usr/bin/singularity", "-s", "-q", "test"]


def test_parse_version():
    assert sl.parse_version("25.14.1") == (25, 14, 1) and sl.parse_version("") == ()
    assert sl.parse_version("23.9.6") < sl.TMPDIR_FIXED <= sl.parse_version("23.10.1")


# ---------------------------------------------------------------- the container probe's launch as the starter's
# The runtime is a stand-in (a shell script recording its argv, environment and
# working directory, then running the inside script on the host with /bin/sh):
# real Apptainer under a real starter is tests/e2e/test_starter_launch.py.

def starter_ctx(tmp_path, **condor):
    from startd_health.probes.container import gather, judge  # noqa: F401
    from .helpers import make_context
    log = tmp_path / "log"
    rt = tmp_path / "apptainer"
    rt.write_text(f"""#!/bin/sh
if [ "$1" = --version ]; then echo 'apptainer version 1.4.5'; exit 0; fi
{{ printf '%s\\n' "$@"; echo "--"; echo "TMPDIR=$TMPDIR"; echo "APPTAINER_TMPDIR=$APPTAINER_TMPDIR"; echo "PWD=$PWD"; }} > {log}
while [ "$1" != /bin/sh ]; do [ "$1" = --home ] && export HOME="$2"; shift; done
exec "$@"
""")
    rt.chmod(0o755)
    execute = tmp_path / "execute"
    execute.mkdir()
    image = tmp_path / "site.sif"
    image.write_bytes(b"x" * 1000)
    image.chmod(0o644)
    values = dict(SINGULARITY=str(rt), EXECUTE=str(execute), CONDOR_VERSION="25.14.1")
    values.update(condor)
    user = "root" if os.geteuid() == 0 else str(os.geteuid())   # an account that can run the stand-in
    ctx = make_context("container", images=(f"site={image}",), launch_timeout=10.0, requirement="REQUIRED",
                       job_user=user, condor=FakeCondor(**values))
    return ctx, log, execute, image, rt


def test_the_probe_launches_as_the_starter_does(tmp_path):
    from startd_health.probes.container import gather, judge
    ctx, log, execute, image, rt = starter_ctx(tmp_path, SINGULARITY_EXTRA_ARGUMENTS="--env A=1")
    r = judge(gather(ctx))
    assert r.status is Status.OK, r.reason
    argv, _, env = log.read_text().partition("--\n")
    expected = sl.starter_launch(FakeCondor(EXECUTE=str(execute), SINGULARITY_EXTRA_ARGUMENTS="--env A=1").get,
                                 str(rt), str(image), str(execute), f"{os.getpid()}.0", version=V25)
    assert argv.splitlines()[:len(expected.options)] == list(expected.options[1:]) + [str(image)]
    scratch = expected.scratch
    assert f"TMPDIR={scratch}" in env and f"APPTAINER_TMPDIR={scratch}" in env and f"PWD={scratch}" in env
    assert r.facts["launch"] == "starter" and r.facts["launch_argv"] == " ".join(expected.argv()).replace(expected.slot_dir, "<slot>")
    assert "<slot>/scratch" in r.facts["launch_argv"]
    assert os.listdir(execute) == []        # the scratch directory is removed


def test_a_full_tmp_is_not_what_the_launch_uses_but_a_read_only_execute_is(tmp_path):
    from startd_health.probes.container import gather, judge
    ctx, log, execute, image, rt = starter_ctx(tmp_path)
    execute.chmod(0o555)
    if os.geteuid() == 0:    # root writes anyway: a read-only EXECUTE needs a mount
        execute.chmod(0o755)
        ctx.condor.values["EXECUTE"] = "/proc/sys"
    r = judge(gather(ctx))
    assert r.status is Status.FAILED
    assert "cannot create a job scratch directory in EXECUTE" in r.reason


def test_the_job_accounts_access_from_permission_bits():
    from startd_health.system import job_account as ja
    nobody = ja.Account("nobody", 65534, 65534, (65534,))
    stats = [ja.PathStat("/", 0, 0, 0o40755), ja.PathStat("/opt", 0, 0, 0o40755),
             ja.PathStat("/opt/site.sif", 0, 998, 0o100640)]
    assert "cannot be read" in ja.denied(nobody, "/opt/site.sif", stats)
    assert ja.denied(ja.Account("x", 1000, 1000, (998,)), "/opt/site.sif", stats) == ""
    closed = [stats[0], ja.PathStat("/opt", 0, 0, 0o40700), stats[2]]
    assert "/opt (mode 700, owner 0:0) cannot be entered" in ja.denied(nobody, "/opt/site.sif", closed)
    assert ja.choose_name("", "slot1") == ("slot1", "HTCondor's SLOT1_USER")
    assert ja.choose_name("", None)[0] == "nobody"


@pytest.mark.root   # a small tmpfs as EXECUTE
def test_extraction_mode_warns_when_execute_cannot_hold_the_unpacked_image(tmp_path):
    """No squashfuse here (the test host has none): for an unprivileged
    runtime a SIF is unpacked into the job's scratch directory on EXECUTE,
    which is too small for it."""
    import shutil
    import subprocess
    if any(shutil.which(n) or os.path.exists(f"/usr/libexec/apptainer/bin/{n}") for n in ("squashfuse", "squashfuse_ll")):
        pytest.skip("squashfuse is installed here (a pool's root filesystem): a SIF would be mounted, not unpacked")
    from startd_health.probes.container import Gathered, judge
    from startd_health.system import starter_scratch
    from startd_health.system.container import Launch, Runtime
    ctx, log, execute, image, rt = starter_ctx(tmp_path)
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(execute)], check=True)
    try:
        runtime = Runtime(str(rt), "HTCondor SINGULARITY")
        st = starter_scratch.prepare(ctx, runtime, True)
        st.sizes[str(image)] = 2**20
        st = starter_scratch.finish(ctx, st, runtime, ["unprivileged"])
    finally:
        subprocess.run(["umount", "-l", str(execute)], check=False)
    assert st.sif_mode == "extraction" and st.scratch_free <= 2 * 2**20
    r = judge(Gathered(runtime, name="apptainer", version="1.4.5", starter=st,
                       launches=(Launch("site", str(image), True, 0.1, "unprivileged"),)))
    assert r.status is Status.DEGRADED, r.reason
    assert "a SIF is extracted into the job's scratch directory on EXECUTE" in r.reason
    assert r.facts["sif_mode"] == "extraction"


def test_without_htcondor_the_launch_is_our_own_and_its_scratch_is_the_runtimes_default(tmp_path):
    from startd_health.probes.container import gather, judge
    from .helpers import make_context
    ctx, log, execute, image, rt = starter_ctx(tmp_path)
    ctx = make_context("container", runtime=str(rt), images=(f"site={image}",), flags=("--ipc",), launch_timeout=10.0)
    r = judge(gather(ctx))
    assert r.status is Status.OK, r.reason
    # The stand-in runs the script on the host: as root, the full uid map of a privileged runtime.
    assert r.facts["sif_mode"] == ("kernel" if os.geteuid() == 0 else "extraction")
    assert r.facts["launch"] == "own" and r.facts["scratch_free_bytes"] > 0
    assert log.read_text().splitlines()[:2] == ["exec", "--ipc"]


@pytest.mark.bindings
def test_skipped_binds_and_untestable_knobs_are_published(tmp_path):
    from startd_health.probes.container import gather, judge
    ctx, log, execute, image, rt = starter_ctx(tmp_path, SINGULARITY_BIND_EXPR=f'"/gone-here,{tmp_path}"',
                                               SINGULARITY_EXTRA_ARGUMENTS='strcat("-B ", TARGET.Data)')
    r = judge(gather(ctx))
    assert r.status is Status.OK, r.reason
    assert r.facts["binds_skipped"] == ("/gone-here",) and f"-B {tmp_path} " in r.facts["launch_argv"]
    assert r.facts["knobs_untestable"] == ("SINGULARITY_EXTRA_ARGUMENTS",)
    assert "not testable without a job: SINGULARITY_EXTRA_ARGUMENTS" in r.reason
