"""GPU probe: are the node's NVIDIA GPUs there, does the driver answer, and
does HTCondor see as many as there are?

Gather (files under ``ctx.system_root``, which the tests point at recorded trees;
commands only through ctx.run):

- hardware evidence that needs no driver: NVIDIA display-class functions on
  the PCI bus (/sys/bus/pci/devices/*: vendor 0x10de, class 0x0300xx VGA or
  0x0302xx 3D controller; functions bound to vfio-pci or pci-stub are passed
  through to virtual machines and not counted), the driver's device nodes
  /dev/nvidia[0-9]*, and DRM render nodes /dev/dri/renderD* (any vendor;
  counted, not checked);
- ``nvidia-smi --query-gpu=index,name,uuid,driver_version,memory.total
  --format=csv,noheader,nounits`` (GPU_NVIDIA_SMI, default nvidia-smi from
  PATH), under a timeout: a GPU in trouble can make it hang;
- HTCondor's view, only when there is a GPU: a cron job cannot read the
  startd's machine ad (it gets no ad on stdin, and a network query of the
  startd would need its security configuration), so the probe works out what
  the startd detects the way the startd does at start-up
  (MachAttributes::init_machine_resources): GPU_CONDOR_COUNT when the admin
  states it; else HTCondor's MACHINE_RESOURCE_GPUS (a number or a list of
  ids); else it runs HTCondor's discovery command, MACHINE_RESOURCE_INVENTORY_GPUS
  (set by ``use feature : GPUs``) or ``$(LIBEXEC)/condor_gpu_discovery
  $(STARTD_DETECT_GPUS)`` (HTCondor >= 23.x's default), and counts its
  DetectedGPUs; STARTD_DETECT_GPUS off (false, 0, empty) means HTCondor
  detects none. Without a readable HTCondor configuration the view is
  unknown (-1). Running discovery now tells what the startd would detect at
  its next restart (e.g. after a driver update broke CUDA for it); the
  running startd's DetectedGPUs, computed at its start-up, is not read. The
  job environment's _CONDOR_AssignedGPUs is not used: it describes one job's
  share, and a cron job has none.

Judge (pure): SKIPPED when there is no NVIDIA GPU (no PCI function, no
device node, and no nvidia-smi, or one that only says there is no driver or
no device); FAILED when there is one and nvidia-smi is missing with no
device nodes (driver not loaded), fails, hangs or lists none; DEGRADED when
counts disagree (PCI bus, device nodes, nvidia-smi, HTCondor) or HTCondor's
discovery fails; OK otherwise.

``parse_nvidia_smi_L`` reads ``nvidia-smi -L`` output, for the container
probe's ``--nv`` check inside an image.
"""

from __future__ import annotations

import csv
import glob
import os
import re
import shlex
import shutil
import time
from collections import OrderedDict
from dataclasses import dataclass, replace
from typing import Dict, Optional, Tuple

from startd_health.core.config import Knob, parse_string
from startd_health.core.model import Measurement, Probe, ProbeContext, ProbeResult, Status

QUERY_FIELDS = "index,name,uuid,driver_version,memory.total"
QUERY_ARGS = (f"--query-gpu={QUERY_FIELDS}", "--format=csv,noheader,nounits")
SMI_TIMEOUT = 20.0
DISCOVERY_TIMEOUT = 30.0
DEV_NVIDIA = "dev/nvidia[0-9]*"
DEV_RENDER = "dev/dri/renderD*"
SYS_PCI_DEVICES = "sys/bus/pci/devices"
NVIDIA_VENDOR = "0x10de"
DISPLAY_CLASSES = ("0x0300", "0x0302")          # VGA compatible, 3D controller
PASSTHROUGH_DRIVERS = ("vfio-pci", "pci-stub")
# nvidia-smi's words for "there is no usable GPU/driver here" (exit 9 and 6)
_NO_DRIVER = re.compile(r"couldn't communicate with the NVIDIA driver|No devices were found", re.IGNORECASE)


MAX_GPUS = 1024  # a bound, so that a typo is an error rather than a count no node has


def parse_count(text: str) -> int:
    """A GPU count knob: empty or -1 = not set."""
    text = text.strip()
    if not text:
        return -1
    try:
        value = int(text)
    except ValueError:
        raise ValueError("expected a whole number of GPUs (or -1 for: work it out)") from None
    if not -1 <= value <= MAX_GPUS:
        raise ValueError(f"expected a whole number of GPUs up to {MAX_GPUS} (or -1 for: work it out)")
    return value


@dataclass(frozen=True)
class Gpu:
    index: int
    name: str
    uuid: str
    driver_version: str = ""
    memory_mib: Optional[float] = None


# ---------------------------------------------------------------- parsing (pure)

def parse_query_gpu(text: str) -> Tuple[Gpu, ...]:
    """`nvidia-smi --query-gpu=index,name,uuid,driver_version,memory.total
    --format=csv,noheader,nounits` output; ValueError on a line that is not one GPU."""
    gpus = []
    for row in csv.reader((line for line in text.splitlines() if line.strip()), skipinitialspace=True):
        fields = [f.strip() for f in row]
        if len(fields) != 5 or not fields[0].isdigit():
            raise ValueError(f"unexpected nvidia-smi output: {', '.join(row)!r}")
        try:
            memory: Optional[float] = float(fields[4])
        except ValueError:   # [N/A], [Not Supported]
            memory = None
        gpus.append(Gpu(int(fields[0]), fields[1], fields[2], fields[3], memory))
    return tuple(gpus)


_L_LINE = re.compile(r"^GPU\s+(\d+):\s+(.*?)\s+\(UUID:\s*([^)\s]+)\)\s*$")


def parse_nvidia_smi_L(text: str) -> Tuple[Gpu, ...]:  # noqa: N802 - named after the flag
    """`nvidia-smi -L` output: one Gpu per `GPU n: name (UUID: GPU-...)` line.
    MIG devices (indented `MIG ...` lines) and anything else are ignored."""
    gpus = []
    for line in text.splitlines():
        match = _L_LINE.match(line)
        if match:
            gpus.append(Gpu(int(match.group(1)), match.group(2), match.group(3)))
    return tuple(gpus)


def parse_detected_gpus(text: str) -> Optional[int]:
    """The number of GPUs in HTCondor discovery output (`DetectedGPUs="GPU-a, GPU-b"`
    or `DetectedGPUs=0`); None when there is no DetectedGPUs line."""
    for line in text.splitlines():
        name, sep, value = line.partition("=")
        if not sep or name.strip().lower() != "detectedgpus":
            continue
        value = value.strip()
        if value.startswith('"') and value.endswith('"') and len(value) >= 2:
            return len([v for v in re.split(r"[,\s]+", value[1:-1]) if v])
        try:
            return int(float(value))
        except ValueError:
            return None
    return None


def parse_resource_count(value: str) -> int:
    """MACHINE_RESOURCE_GPUS: a number, or a list of device ids."""
    try:
        return int(float(value))
    except ValueError:
        return len([v for v in re.split(r"[,\s]+", value.strip()) if v])


def no_gpu_message(text: str) -> bool:
    """nvidia-smi says there is no driver to talk to, or no device."""
    return bool(_NO_DRIVER.search(text))


# ---------------------------------------------------------------- gather

@dataclass(frozen=True)
class Gathered:
    device_nodes: int = 0             # /dev/nvidia[0-9]*
    render_nodes: int = 0             # /dev/dri/renderD*
    pci_devices: int = -1             # NVIDIA GPUs on the PCI bus; -1 unknown (no sysfs)
    smi_path: str = ""                # the nvidia-smi run ("" none found)
    smi_error: str = ""               # why it failed (configured path, exit, timeout, output)
    smi_says_no_gpu: bool = False     # ... because it found no driver or no device
    gpus: Tuple[Gpu, ...] = ()
    condor_count: int = -1            # GPUs HTCondor detects; -1 unknown
    condor_source: str = ""           # where condor_count came from
    condor_error: str = ""            # HTCondor's discovery failed (why)
    nv_image: str = ""                # image launched with --nv ("" not tried)
    nv_count: int = -1                # GPUs `nvidia-smi -L` lists inside it
    nv_error: str = ""                # why the --nv launch failed


def count_pci_gpus(path: str) -> int:
    try:
        entries = os.listdir(path)
    except OSError:
        return -1
    count = 0
    for entry in entries:
        device = os.path.join(path, entry)
        try:
            with open(os.path.join(device, "vendor")) as handle:
                vendor = handle.read().strip().lower()
            with open(os.path.join(device, "class")) as handle:
                klass = handle.read().strip().lower()
        except OSError:
            continue
        if vendor != NVIDIA_VENDOR or not klass.startswith(DISPLAY_CLASSES):
            continue
        driver = os.path.basename(os.path.realpath(os.path.join(device, "driver")))
        if os.path.exists(os.path.join(device, "driver")) and driver in PASSTHROUGH_DRIVERS:
            continue
        count += 1
    return count


def find_nvidia_smi(configured: str) -> Tuple[str, str]:
    """(path, error)."""
    if configured:
        path = configured if os.path.isabs(configured) else shutil.which(configured)
        if path and os.path.isfile(path) and os.access(path, os.X_OK):
            return path, ""
        return "", f"configured nvidia-smi {configured} is not an executable"
    # A STARTD_CRON job gets a short PATH: look in the usual places too.
    search = os.pathsep.join([os.environ.get("PATH", ""), "/usr/bin", "/usr/local/bin", "/usr/sbin"])
    return shutil.which("nvidia-smi", path=search) or "", ""


def condor_view(ctx: ProbeContext) -> Tuple[int, str, str]:
    """(GPUs HTCondor detects or -1, where that came from, why discovery failed)."""
    stated = ctx.settings.get("condor_count", -1)
    if stated is not None and stated >= 0:
        return stated, "STARTD_HEALTH_GPU_CONDOR_COUNT", ""
    condor = ctx.condor
    if condor is None or not getattr(condor, "available", False):
        return -1, "", ""
    static = condor.get("MACHINE_RESOURCE_GPUS")
    if static is not None and static.strip():
        return parse_resource_count(static), "MACHINE_RESOURCE_GPUS", ""
    inventory = condor.get("MACHINE_RESOURCE_INVENTORY_GPUS")
    if inventory is not None and inventory.strip():
        source = "MACHINE_RESOURCE_INVENTORY_GPUS"
        try:
            argv = shlex.split(inventory)
        except ValueError as exc:
            return -1, source, f"cannot split {inventory!r}: {exc}"
    else:
        detect = condor.get("STARTD_DETECT_GPUS")
        if detect is None or detect.strip().lower() in ("", "false", "0", "true", "1"):
            return 0, "STARTD_DETECT_GPUS (off)", ""
        source = "condor_gpu_discovery"
        try:
            argv = [os.path.join(condor.get("LIBEXEC") or "/usr/libexec/condor", "condor_gpu_discovery"),
                    *shlex.split(detect)]
        except ValueError as exc:
            return -1, source, f"cannot split STARTD_DETECT_GPUS {detect!r}: {exc}"
    result = ctx.run(argv, timeout=DISCOVERY_TIMEOUT)
    if not result.ok:
        return -1, source, result.describe_failure()
    count = parse_detected_gpus(result.stdout)
    if count is None:
        return -1, source, "no DetectedGPUs in its output"
    return count, source, ""


def gather(ctx: ProbeContext) -> Gathered:
    root = ctx.system_root
    device_nodes = len(glob.glob(os.path.join(root, DEV_NVIDIA)))
    render_nodes = len(glob.glob(os.path.join(root, DEV_RENDER)))
    pci = count_pci_gpus(os.path.join(root, SYS_PCI_DEVICES))
    hardware = dict(device_nodes=device_nodes, render_nodes=render_nodes, pci_devices=pci)
    smi, error = find_nvidia_smi(ctx.settings.get("nvidia_smi", ""))
    if error:
        return Gathered(**hardware, smi_error=error)
    if not smi and device_nodes == 0 and pci <= 0:
        return Gathered(**hardware)   # no GPU: nothing to run
    gpus: Tuple[Gpu, ...] = ()
    smi_error, says_no_gpu = "", False
    if smi:
        result = ctx.run([smi, *QUERY_ARGS], timeout=SMI_TIMEOUT)
        if result.ok:
            try:
                gpus = parse_query_gpu(result.stdout)
            except ValueError as exc:
                smi_error = str(exc)
        else:
            smi_error = result.describe_failure()
            says_no_gpu = not result.timed_out and no_gpu_message(result.stdout + "\n" + result.stderr)
    if not (gpus or device_nodes or pci > 0):
        return Gathered(**hardware, smi_path=smi, smi_error=smi_error, smi_says_no_gpu=says_no_gpu)
    count, source, condor_error = condor_view(ctx)
    return Gathered(**hardware, smi_path=smi, smi_error=smi_error, smi_says_no_gpu=says_no_gpu, gpus=gpus,
                    condor_count=count, condor_source=source, condor_error=condor_error, **nv_launch(ctx))


NV_TIMEOUT = 30.0


def nv_launch(ctx: ProbeContext) -> dict:
    """HTCondor adds --nv for GPU jobs but never tests it: launch the site's
    image with --nv and count the GPUs nvidia-smi sees inside."""
    images = ctx.settings.get("container_images") or ()
    image = ctx.settings.get("nv_image") or (images[0].partition("=")[2] if images else "")
    if not image:
        return {}
    from startd_health.system.container import exec_argv, find_runtime

    condor_path = ctx.condor.get("SINGULARITY") if ctx.condor is not None else None
    runtime, error = find_runtime(ctx.settings.get("container_runtime", ""), "", condor_path, ctx.run)
    if runtime is None:
        return {"nv_image": image, "nv_error": error}
    result = ctx.run(exec_argv(runtime, ["--nv"], image, "nvidia-smi", "-L"), timeout=NV_TIMEOUT)
    if not result.ok:
        return {"nv_image": image, "nv_error": result.describe_failure()}
    return {"nv_image": image, "nv_count": len(parse_nvidia_smi_L(result.stdout))}


# ---------------------------------------------------------------- judge

def _models_text(gpus: Tuple[Gpu, ...]) -> str:
    counts: Dict[str, int] = OrderedDict()
    for gpu in gpus:
        counts[gpu.name] = counts.get(gpu.name, 0) + 1
    return ", ".join(f"{n} x {name}" for name, n in counts.items())


def judge(g: Gathered) -> ProbeResult:
    gpus = tuple(sorted(g.gpus, key=lambda gpu: gpu.index))
    drivers = tuple(OrderedDict.fromkeys(gpu.driver_version for gpu in gpus if gpu.driver_version))
    count = len(gpus) if g.smi_path else g.device_nodes   # without nvidia-smi: the driver's device nodes
    facts = {
        "count": count,
        "driver_version": ",".join(drivers),
        "models": tuple(gpu.name for gpu in gpus),
        "uuids": tuple(gpu.uuid for gpu in gpus),
        "detected_by_condor": g.condor_count,
        "device_nodes": g.device_nodes,
        "pci_devices": g.pci_devices,
        "render_nodes": g.render_nodes,
    }
    measurements = tuple(Measurement("memory", gpu.memory_mib * 1024 * 1024, "bytes", {"gpu": str(gpu.index)})
                         for gpu in gpus if gpu.memory_mib is not None)
    hardware = g.device_nodes > 0 or g.pci_devices > 0
    no_gpu = "no GPU on this node"
    if g.render_nodes and not hardware:
        no_gpu = f"no NVIDIA GPU on this node ({g.render_nodes} DRM render node(s) of another vendor, not checked)"
    if not g.smi_path and g.smi_error:   # configured nvidia-smi missing
        return ProbeResult("gpu", Status.FAILED, g.smi_error, facts)
    if not g.smi_path:
        if not hardware:
            return ProbeResult("gpu", Status.SKIPPED, no_gpu, dict(facts, count=0))
        if g.device_nodes == 0:
            return ProbeResult("gpu", Status.FAILED,
                               f"{g.pci_devices} NVIDIA GPU(s) on the PCI bus but no driver: no /dev/nvidia* "
                               f"device nodes and no nvidia-smi", facts)
    elif g.smi_error:
        if g.smi_says_no_gpu and not hardware and g.pci_devices == 0:
            return ProbeResult("gpu", Status.SKIPPED, f"{no_gpu} ({g.smi_error})", dict(facts, count=0))
        return ProbeResult("gpu", Status.FAILED, g.smi_error, facts)
    elif not gpus:
        if not hardware:
            return ProbeResult("gpu", Status.SKIPPED, f"{no_gpu} (nvidia-smi lists none)", facts)
        return ProbeResult("gpu", Status.FAILED, f"nvidia-smi lists no GPU but {_hardware_text(g)}", facts)

    problems = []
    if g.smi_path:
        what = f"{_models_text(gpus)}, driver {facts['driver_version']}"
        if g.pci_devices > count:
            problems.append(f"{g.pci_devices} NVIDIA GPUs on the PCI bus")
        if g.device_nodes and g.device_nodes != count:
            problems.append(f"{g.device_nodes} /dev/nvidia* device nodes")
        if problems:
            problems = [f"nvidia-smi lists {count} GPU(s) but " + " and ".join(problems)]
    else:
        what = f"{count} NVIDIA device node(s), no nvidia-smi (driver not checked)"
        if g.pci_devices > count:
            problems.append(f"{g.pci_devices} NVIDIA GPUs on the PCI bus")
    if g.nv_image:
        facts.update(nv_image=g.nv_image, nv_count=g.nv_count)
        if g.nv_error:   # GPU jobs in containers would fail here
            return ProbeResult("gpu", Status.FAILED, f"{what}; exec --nv {g.nv_image} failed: {g.nv_error}",
                               facts, measurements)
        if g.nv_count != count:
            problems.append(f"exec --nv {g.nv_image} sees {g.nv_count}")
        else:
            what += f"; all {count} visible with --nv"
    if g.condor_error:
        problems.append(f"HTCondor's GPU discovery ({g.condor_source}) failed: {g.condor_error}")
    elif g.condor_count >= 0 and g.condor_count != count:
        problems.append(f"HTCondor detects {g.condor_count} ({g.condor_source}), not {count}")
    elif g.condor_count >= 0:
        what += f"; HTCondor detects {g.condor_count}"
    if problems:
        return ProbeResult("gpu", Status.DEGRADED, f"{what}; " + "; ".join(problems), facts, measurements)
    return ProbeResult("gpu", Status.OK, what, facts, measurements)


def _hardware_text(g: Gathered) -> str:
    parts = []
    if g.device_nodes:
        parts.append(f"{g.device_nodes} /dev/nvidia* device node(s)")
    if g.pci_devices > 0:
        parts.append(f"{g.pci_devices} NVIDIA GPU(s) on the PCI bus")
    return " and ".join(parts)


def resolved_nv_image(config) -> Tuple[str, str]:
    """For `startd-health config`: the image an empty GPU_NV_IMAGE stands for (as nv_launch picks it)."""
    images = config["CONTAINER_IMAGES"]
    if not images:
        return "", "none: STARTD_HEALTH_CONTAINER_IMAGES is empty, --nv is not tested"
    return images[0].partition("=")[2], "the first of STARTD_HEALTH_CONTAINER_IMAGES"


def resolved_nvidia_smi(config) -> Tuple[str, str]:
    """For `startd-health config`: the nvidia-smi an empty GPU_NVIDIA_SMI stands for."""
    path = find_nvidia_smi("")[0]
    return (path, "found in PATH") if path else ("", "none: no nvidia-smi in PATH, /usr/bin, /usr/local/bin")


class GpuProbe(Probe):
    name = "gpu"
    description = ("NVIDIA GPUs: device nodes, PCI bus, nvidia-smi (driver, models, UUIDs), count compared with "
                   "what HTCondor detects; skipped on nodes without a GPU")
    default_period = 300.0
    default_timeout = 60.0
    shared_knobs = ("CONTAINER_IMAGES", "CONTAINER_RUNTIME", "KERNEL_WINDOW")
    knobs = (
        Knob("GPU_NV_IMAGE", parse_string, "", "on a node with GPUs, launch this image with `--nv` and count the "
             "GPUs `nvidia-smi -L` sees inside (HTCondor adds `--nv` for GPU jobs but never tests it); none: not "
             "tested", "PATH", default_text="the first of `STARTD_HEALTH_CONTAINER_IMAGES`",
             resolve=resolved_nv_image),
        Knob("GPU_NVIDIA_SMI", parse_string, "", "nvidia-smi to run (path or name)", "PATH",
             default_text="`nvidia-smi` from PATH (or /usr/bin, /usr/local/bin)",
             resolve=resolved_nvidia_smi),
        Knob("GPU_CONDOR_COUNT", parse_count, -1, "GPUs HTCondor should detect here; -1: HTCondor's "
             "`MACHINE_RESOURCE_GPUS`, else the count from its discovery command "
             "(`MACHINE_RESOURCE_INVENTORY_GPUS`, else `condor_gpu_discovery $(STARTD_DETECT_GPUS)`), run only "
             "when a GPU is present", "N", default_text="-1 (work it out)"),
    )

    def run(self, ctx: ProbeContext) -> ProbeResult:
        return with_kernel_xids(judge(gather(ctx)), ctx)


def with_kernel_xids(result: ProbeResult, ctx: ProbeContext) -> ProbeResult:
    """A GPU the kernel log says failed (a fatal Xid, within the kernel probe's
    window, recorded by the kernel probe: system/kernel_events.py) fails this
    probe too, naming it: a GPU fallen off the bus may be gone from nvidia-smi
    and the PCI bus, which would otherwise read as "no GPU" (skipped)."""
    from startd_health.system import kernel_events, kmsg
    from startd_health.system.stuck import iso
    failures = kernel_events.gpu_failures(ctx.scratch_dir(kernel_events.PROBE), kmsg.boot_id(ctx.system_root),
                                          time.time(), ctx.settings["kernel_window"])
    if not failures:
        return result
    said = "; ".join(f"GPU {e.pci}: " + (f"Xid {e.code}" if e.code >= 0 else "failed")
                     + f" in the kernel log at {iso(e.at)}"
                     for e in failures)
    return replace(result, status=Status.FAILED, reason=said + (f"; {result.reason}" if result.reason else ""))
