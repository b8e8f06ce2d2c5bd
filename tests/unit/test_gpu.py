"""GPU probe: parsing and judgement on recorded nvidia-smi outputs
(data/nvidia-smi/), the gathering step for real on this GPU-less machine, and
through nvidia-smi and condor_gpu_discovery stand-ins (shell scripts printing
recorded outputs, or hanging) with a fake sysfs/dev tree for the hardware."""

import os
import time

import pytest

from startd_health.core.model import Status
from startd_health.core.runner import run_probes
from startd_health.probes import all_probes
from startd_health.probes.gpu import (QUERY_ARGS, Gathered, Gpu, GpuProbe, gather, judge, no_gpu_message, parse_count,
                        parse_detected_gpus, parse_nvidia_smi_L, parse_query_gpu, parse_resource_count)

from .helpers import FakeCondor, make_context, probe_settings, wait_gone

DATA = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data", "nvidia-smi")
# recorded file -> the exit status nvidia-smi gives with it (see data/nvidia-smi/README.md)
RECORDED = {"a100x2.query.csv": 0, "t4.query.csv": 0, "no-driver.txt": 9, "no-devices.txt": 6, "empty.txt": 0}
A100_UUIDS = ("GPU-5b0cd9d2-8e3a-6a1f-0f9c-3b4c1d2e7a91", "GPU-a3f1e6c7-2d4b-9e8a-71c5-0b6d9f4e2c18")


def recorded(name):
    with open(os.path.join(DATA, name)) as handle:
        return handle.read()


A100X2 = parse_query_gpu(recorded("a100x2.query.csv"))
T4 = parse_query_gpu(recorded("t4.query.csv"))




def context(budget=20.0, condor=None, root="/", **knobs):
    return make_context("gpu", budget, condor, system_root=root, **knobs)


def script(path, body):
    path.write_text("#!/bin/sh\n" + body)
    path.chmod(0o755)
    return str(path)


def fake_smi(tmp_path, name, pidfile=None):
    """An nvidia-smi that checks it was asked the probe's question and prints a recording."""
    expected = " ".join(QUERY_ARGS)
    body = ""
    if pidfile:
        body += f"echo $$ > {pidfile}\n"
    body += (f'[ "$*" = "{expected}" ] || {{ echo "unexpected arguments: $*" >&2; exit 2; }}\n'
             f"cat '{os.path.join(DATA, name)}'\nexit {RECORDED[name]}\n")
    return script(tmp_path / "nvidia-smi", body)


def gpu_tree(tmp_path, pci=2, nodes=2, passthrough=0, render=0):
    """A root with NVIDIA functions on a fake PCI bus and /dev/nvidiaN nodes."""
    root = tmp_path / "root"
    devices = root / "sys" / "bus" / "pci" / "devices"
    devices.mkdir(parents=True)
    (root / "dev" / "dri").mkdir(parents=True)
    (devices / "0000:00:00.0").mkdir()      # a host bridge: not a GPU
    (devices / "0000:00:00.0" / "vendor").write_text("0x8086\n")
    (devices / "0000:00:00.0" / "class").write_text("0x060000\n")
    (devices / "0000:3b:00.1").mkdir()      # an NVIDIA audio function: not a GPU
    (devices / "0000:3b:00.1" / "vendor").write_text("0x10de\n")
    (devices / "0000:3b:00.1" / "class").write_text("0x040300\n")
    drivers = root / "sys" / "bus" / "pci" / "drivers"
    for name in ("nvidia", "vfio-pci"):
        (drivers / name).mkdir(parents=True)
    for i in range(pci + passthrough):
        device = devices / f"0000:{0x3b + i:02x}:00.0"
        device.mkdir()
        (device / "vendor").write_text("0x10de\n")
        (device / "class").write_text("0x030200\n")
        (device / "driver").symlink_to(drivers / ("vfio-pci" if i >= pci else "nvidia"))
    for i in range(nodes):
        (root / "dev" / f"nvidia{i}").write_text("")
    for name in ("nvidiactl", "nvidia-uvm", "nvidia-modeset"):   # not GPUs
        (root / "dev" / name).write_text("")
    for i in range(render):
        (root / "dev" / "dri" / f"renderD{128 + i}").write_text("")
    return str(root)


# ---------------------------------------------------------------- parsing

def test_registered_with_its_knobs():
    probe = all_probes()["gpu"]
    assert probe is GpuProbe and probe.enabled_by_default
    assert [k.name for k in probe.knobs] == ["GPU_NV_IMAGE", "GPU_NVIDIA_SMI", "GPU_CONDOR_COUNT"]
    assert probe.shared_knobs == ("CONTAINER_IMAGES", "CONTAINER_RUNTIME", "KERNEL_WINDOW")


def test_parse_count():
    assert parse_count("") == -1 and parse_count(" 4 ") == 4 and parse_count("-1") == -1 and parse_count("0") == 0
    for bad in ("two", "-2", "1.5"):
        with pytest.raises(ValueError, match="whole number"):
            parse_count(bad)


def test_parse_query_gpu_on_recorded_outputs():
    assert A100X2 == (
        Gpu(0, "NVIDIA A100-SXM4-40GB", A100_UUIDS[0], "535.183.01", 40960.0),
        Gpu(1, "NVIDIA A100-SXM4-40GB", A100_UUIDS[1], "535.183.01", 40960.0),
    )
    assert T4 == (Gpu(0, "Tesla T4", "GPU-1e6b9c2a-7f3d-4e58-b0a4-9d2c6f81e3b7", "550.90.07", 15360.0),)
    assert parse_query_gpu(recorded("empty.txt")) == ()
    assert parse_query_gpu("0, Tesla T4, GPU-x, 550.90.07, [N/A]\n")[0].memory_mib is None
    for bad in ("no-driver.txt", "no-devices.txt"):
        with pytest.raises(ValueError, match="unexpected nvidia-smi output"):
            parse_query_gpu(recorded(bad))


def test_parse_nvidia_smi_L_for_the_container_probe():
    assert parse_nvidia_smi_L(recorded("a100x2.L.txt")) == tuple(Gpu(g.index, g.name, g.uuid) for g in A100X2)
    assert parse_nvidia_smi_L(recorded("a100x2-mig.L.txt")) == parse_nvidia_smi_L(recorded("a100x2.L.txt"))
    assert parse_nvidia_smi_L(recorded("t4.L.txt")) == (Gpu(0, "Tesla T4", T4[0].uuid),)
    assert parse_nvidia_smi_L(recorded("no-driver.txt")) == ()


def test_no_gpu_messages():
    assert no_gpu_message(recorded("no-driver.txt")) and no_gpu_message(recorded("no-devices.txt"))
    assert not no_gpu_message("Unable to determine the device handle for GPU 0000:3B:00.0: Unknown Error")


def test_parse_htcondor_discovery_and_static_resources():
    assert parse_detected_gpus('DetectedGPUs="GPU-5b0cd9d2, GPU-a3f1e6c7"\nGPU_5b0cd9d2 = [ Id = "GPU-5b0cd9d2" ]\n') == 2
    assert parse_detected_gpus('DetectedGPUs="CUDA0"\n') == 1
    assert parse_detected_gpus("DetectedGPUs=0\n") == 0
    assert parse_detected_gpus("# no GPUs\n") is None
    assert parse_resource_count("2") == 2 and parse_resource_count("CUDA0, CUDA1 CUDA2") == 3


# ---------------------------------------------------------------- judge

def smi_ok(gpus, **kw):
    return Gathered(smi_path="/usr/bin/nvidia-smi", gpus=gpus, **kw)


def test_judge_no_gpu_is_skipped_not_failed():
    r = judge(Gathered(pci_devices=0))
    assert r.status is Status.SKIPPED and r.reason == "no GPU on this node" and r.status.usable
    assert r.facts["count"] == 0 and r.facts["detected_by_condor"] == -1
    other = judge(Gathered(pci_devices=0, render_nodes=1))
    assert other.status is Status.SKIPPED and other.reason.startswith("no NVIDIA GPU on this node (1 DRM render")


def test_judge_two_a100_matching_htcondor():
    r = judge(smi_ok(A100X2, device_nodes=2, pci_devices=2, condor_count=2, condor_source="condor_gpu_discovery"))
    assert r.status is Status.OK
    assert r.reason == "2 x NVIDIA A100-SXM4-40GB, driver 535.183.01; HTCondor detects 2"
    assert r.facts == {"count": 2, "driver_version": "535.183.01", "models": ("NVIDIA A100-SXM4-40GB",) * 2,
                       "uuids": A100_UUIDS, "detected_by_condor": 2, "device_nodes": 2, "pci_devices": 2,
                       "render_nodes": 0}
    assert [(m.name, m.value, m.unit, m.labels) for m in r.measurements] == [
        ("memory", 40960 * 2**20, "bytes", (("gpu", "0"),)), ("memory", 40960 * 2**20, "bytes", (("gpu", "1"),))]


def test_judge_count_mismatch_with_htcondor_is_degraded():
    r = judge(smi_ok(T4, device_nodes=1, pci_devices=1, condor_count=2, condor_source="MACHINE_RESOURCE_GPUS"))
    assert r.status is Status.DEGRADED
    assert r.reason == "1 x Tesla T4, driver 550.90.07; HTCondor detects 2 (MACHINE_RESOURCE_GPUS), not 1"
    unknown = judge(smi_ok(T4, device_nodes=1, pci_devices=1))
    assert unknown.status is Status.OK and unknown.reason == "1 x Tesla T4, driver 550.90.07"
    broken = judge(smi_ok(T4, device_nodes=1, pci_devices=1, condor_source="condor_gpu_discovery",
                          condor_error="condor_gpu_discovery timed out after 30.0s"))
    assert broken.status is Status.DEGRADED and "HTCondor's GPU discovery (condor_gpu_discovery) failed" in broken.reason


def test_judge_gpu_lost_by_the_driver_is_degraded():
    r = judge(smi_ok(T4, device_nodes=2, pci_devices=2))
    assert r.status is Status.DEGRADED
    assert r.reason.endswith("nvidia-smi lists 1 GPU(s) but 2 NVIDIA GPUs on the PCI bus and 2 /dev/nvidia* device nodes")


def test_judge_driver_failure_with_gpus_present_fails():
    error = "nvidia-smi exit 9: NVIDIA-SMI has failed because it couldn't communicate with the NVIDIA driver. ..."
    r = judge(Gathered(pci_devices=2, smi_path="/usr/bin/nvidia-smi", smi_error=error, smi_says_no_gpu=True))
    assert r.status is Status.FAILED and r.reason == error and r.facts["count"] == 0
    # /sys unreadable: a GPU cannot be ruled out, so the driver failure counts
    unknown = judge(Gathered(pci_devices=-1, smi_path="/usr/bin/nvidia-smi", smi_error=error, smi_says_no_gpu=True))
    assert unknown.status is Status.FAILED


def test_judge_driver_userland_without_any_gpu_is_skipped():
    """A uniform node image ships nvidia-smi everywhere: on CPU nodes it fails
    for want of a driver; that must not take them out of service."""
    error = "nvidia-smi exit 9: NVIDIA-SMI has failed because it couldn't communicate with the NVIDIA driver."
    r = judge(Gathered(pci_devices=0, smi_path="/usr/bin/nvidia-smi", smi_error=error, smi_says_no_gpu=True))
    assert r.status is Status.SKIPPED and r.reason.startswith("no GPU on this node (nvidia-smi exit 9")
    hung = judge(Gathered(pci_devices=0, smi_path="/usr/bin/nvidia-smi", smi_error="nvidia-smi timed out after 20.0s"))
    assert hung.status is Status.FAILED


def test_judge_empty_listing():
    assert judge(smi_ok((), pci_devices=0)).status is Status.SKIPPED
    r = judge(smi_ok((), device_nodes=2, pci_devices=2))
    assert r.status is Status.FAILED
    assert r.reason == "nvidia-smi lists no GPU but 2 /dev/nvidia* device node(s) and 2 NVIDIA GPU(s) on the PCI bus"


def test_judge_without_nvidia_smi():
    r = judge(Gathered(pci_devices=2))
    assert r.status is Status.FAILED and r.reason.startswith("2 NVIDIA GPU(s) on the PCI bus but no driver")
    nodes = judge(Gathered(device_nodes=2, pci_devices=2, condor_count=2, condor_source="x"))
    assert nodes.status is Status.OK and nodes.facts["count"] == 2
    assert nodes.reason == "2 NVIDIA device node(s), no nvidia-smi (driver not checked); HTCondor detects 2"
    missing = judge(Gathered(smi_error="configured nvidia-smi /opt/nv/nvidia-smi is not an executable"))
    assert missing.status is Status.FAILED and missing.reason.startswith("configured nvidia-smi")


# ---------------------------------------------------------------- gather, for real

def test_gather_on_this_machine_reports_skipped():
    t0 = time.monotonic()
    result = GpuProbe().run(context())
    assert result.status is Status.SKIPPED and result.reason == "no GPU on this node", result
    assert result.facts["count"] == 0 and result.facts["device_nodes"] == 0
    assert time.monotonic() - t0 < 1.0


def test_gather_through_a_recorded_nvidia_smi_and_htcondor_discovery(tmp_path):
    root = gpu_tree(tmp_path, pci=2, nodes=2, passthrough=1, render=1)
    discovery = script(tmp_path / "discover",
                       'echo \'DetectedGPUs="GPU-5b0cd9d2, GPU-a3f1e6c7"\'\n'
                       "echo 'GPU_5b0cd9d2 = [ Id = \"GPU-5b0cd9d2\"; DeviceName = \"NVIDIA A100-SXM4-40GB\" ]'\n")
    condor = FakeCondor(MACHINE_RESOURCE_INVENTORY_GPUS=discovery + " -properties")
    g = gather(context(nvidia_smi=fake_smi(tmp_path, "a100x2.query.csv"), condor=condor, root=root))
    assert (g.pci_devices, g.device_nodes, g.render_nodes) == (2, 2, 1)   # vfio-pci one passed through: not ours
    assert g.gpus == A100X2 and g.condor_count == 2 and g.condor_source == "MACHINE_RESOURCE_INVENTORY_GPUS"
    assert judge(g).status is Status.OK


def test_gather_default_discovery_and_a_mismatch(tmp_path):
    root = gpu_tree(tmp_path, pci=1, nodes=1)
    libexec = tmp_path / "libexec"
    libexec.mkdir()
    args = tmp_path / "args"
    script(libexec / "condor_gpu_discovery", f'echo "$*" > {args}\necho \'DetectedGPUs="CUDA0, CUDA1"\'\n')
    condor = FakeCondor(LIBEXEC=str(libexec), STARTD_DETECT_GPUS="-properties -extra")
    result = judge(gather(context(nvidia_smi=fake_smi(tmp_path, "t4.query.csv"), condor=condor, root=root)))
    assert args.read_text() == "-properties -extra\n"
    assert result.status is Status.DEGRADED and result.facts["detected_by_condor"] == 2
    assert result.reason.endswith("HTCondor detects 2 (condor_gpu_discovery), not 1")


def test_gather_htcondor_views_without_running_discovery(tmp_path):
    root = gpu_tree(tmp_path, pci=1, nodes=1)
    smi = fake_smi(tmp_path, "t4.query.csv")
    static = gather(context(nvidia_smi=smi, condor=FakeCondor(MACHINE_RESOURCE_GPUS="CUDA0"), root=root))
    assert (static.condor_count, static.condor_source) == (1, "MACHINE_RESOURCE_GPUS")
    off = gather(context(nvidia_smi=smi, condor=FakeCondor(STARTD_DETECT_GPUS="false"), root=root))
    assert off.condor_count == 0 and judge(off).status is Status.DEGRADED
    stated = gather(context(nvidia_smi=smi, condor_count=1, condor=FakeCondor(MACHINE_RESOURCE_GPUS="4"), root=root))
    assert (stated.condor_count, stated.condor_source) == (1, "STARTD_HEALTH_GPU_CONDOR_COUNT")
    no_config = gather(context(nvidia_smi=smi, root=root))
    assert no_config.condor_count == -1 and judge(no_config).status is Status.OK


def test_gather_driver_failure(tmp_path):
    smi = fake_smi(tmp_path, "no-driver.txt")
    with_gpus = judge(gather(context(nvidia_smi=smi, root=gpu_tree(tmp_path, pci=2, nodes=0))))
    assert with_gpus.status is Status.FAILED
    assert with_gpus.reason == ("nvidia-smi exit 9: NVIDIA-SMI has failed because it couldn't communicate with "
                                "the NVIDIA driver. Make sure that the latest NVIDIA driver is installed and running.")
    # the same nvidia-smi on this machine, which has no NVIDIA GPU on its PCI bus
    here = judge(gather(context(nvidia_smi=smi)))
    assert here.status is Status.SKIPPED and here.reason.startswith("no GPU on this node (nvidia-smi exit 9")


def test_gather_empty_and_no_devices(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    empty = judge(gather(context(nvidia_smi=fake_smi(tmp_path / "a", "empty.txt"),
                                 root=gpu_tree(tmp_path, pci=1, nodes=1))))
    assert empty.status is Status.FAILED and empty.reason.startswith("nvidia-smi lists no GPU but")
    none = judge(gather(context(nvidia_smi=fake_smi(tmp_path / "b", "no-devices.txt"))))
    assert none.status is Status.SKIPPED


def test_configured_nvidia_smi_missing_fails(tmp_path):
    result = judge(gather(context(nvidia_smi=str(tmp_path / "nope"))))
    assert result.status is Status.FAILED and result.reason == f"configured nvidia-smi {tmp_path / 'nope'} is not an executable"


def test_hanging_nvidia_smi_fails_within_the_budget_and_is_killed(tmp_path):
    pidfile = tmp_path / "pid"
    hang = script(tmp_path / "nvidia-smi", f"echo $$ > {pidfile}\nexec sleep 60\n")
    t0 = time.monotonic()
    result = judge(gather(context(budget=1.0, nvidia_smi=hang)))
    elapsed = time.monotonic() - t0
    assert result.status is Status.FAILED and result.reason.startswith("nvidia-smi timed out after"), result
    assert elapsed < 1.0 + 1.5, elapsed   # the budget, then TERM
    assert wait_gone([int(pidfile.read_text())]) == []


def test_hanging_nvidia_smi_under_the_runner(tmp_path):
    pidfile = tmp_path / "pid"
    hang = script(tmp_path / "nvidia-smi", f"echo $$ > {pidfile}\ntrap '' TERM\nsleep 60\n")
    t0 = time.monotonic()
    report = run_probes([GpuProbe()], {"gpu": probe_settings("gpu", nvidia_smi=hang, timeout=1.0)}, deadline_seconds=30)
    elapsed = time.monotonic() - t0
    (result,) = report.results
    assert result.status is Status.FAILED and "timed out" in result.reason, result
    assert elapsed < 1.0 + 1.0 + 1.0 + 1.0, elapsed   # budget, TERM grace, KILL, slack
    assert wait_gone([int(pidfile.read_text())]) == []


def nv_runtime(tmp_path, listing=None, fail=""):
    """A runtime stand-in: `exec --nv IMAGE nvidia-smi -L` prints a recorded listing (no GPU here: simulated)."""
    body = 'if [ "$1" = --version ]; then echo "apptainer version 1.4.5"; exit 0; fi\n'
    body += '[ "$2" = --nv ] || { echo "no --nv: $*" >&2; exit 2; }\n'
    body += f'echo "{fail}" >&2; exit 255\n' if fail else f"cat '{os.path.join(DATA, listing)}'\n"
    return script(tmp_path / "apptainer", body)


def nv_context(tmp_path, runtime, images=("el9=/img/el9.sif",)):
    return context(nvidia_smi=fake_smi(tmp_path, "a100x2.query.csv"), condor_count=2, container_images=images,
                   container_runtime=runtime, nv_image="", root=gpu_tree(tmp_path))


def test_nv_launch_sees_every_gpu(tmp_path):
    r = judge(gather(nv_context(tmp_path, nv_runtime(tmp_path, "a100x2.L.txt"))))
    assert r.status is Status.OK and r.facts["nv_count"] == 2 and r.facts["nv_image"] == "/img/el9.sif"
    assert "all 2 visible with --nv" in r.reason


def test_nv_launch_seeing_fewer_gpus_is_degraded(tmp_path):
    r = judge(gather(nv_context(tmp_path, nv_runtime(tmp_path, "t4.L.txt"))))
    assert r.status is Status.DEGRADED and "exec --nv /img/el9.sif sees 1" in r.reason


def test_failed_nv_launch_fails_the_gpu_probe(tmp_path):
    runtime = nv_runtime(tmp_path, fail="FATAL: could not find libnvidia-ml.so")
    r = judge(gather(nv_context(tmp_path, runtime)))
    assert r.status is Status.FAILED and "exec --nv /img/el9.sif failed" in r.reason
    assert "libnvidia-ml.so" in r.reason


def test_no_image_means_no_nv_launch(tmp_path):
    r = judge(gather(nv_context(tmp_path, nv_runtime(tmp_path, fail="must not run"), images=())))
    assert r.status is Status.OK and "nv_image" not in r.facts
