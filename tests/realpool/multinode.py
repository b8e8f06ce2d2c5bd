"""Several execute nodes in ONE real HTCondor personal pool, each able to
carry one injected fault. Used by benchmarks/fault_experiment.py.

Each node is a real condor_startd of its own (DAEMON_LIST entries
STARTD_NODE<i> with ``-local-name NODE<i>``) started through a small wrapper
(``/opt/faults/bin/node-startd``) that gives it a PRIVATE MOUNT NAMESPACE
before it execs condor_startd (same pid, so the master supervises it as
usual). In that namespace the node has its own view of the paths a site
keeps identical on every node:

- ``/etc/condor/config.d/10-node.conf``: the node's own configuration
  (STARTD_NAME, EXECUTE, logs, NUM_CPUS, GPUs, state directory...). The
  startd, its starters, its STARTD_CRON jobs and job hooks all read it,
  exactly as on a separate machine; the master and schedd see an empty file.
- ``/opt/site``: the node's site directory: ``images/site.sif`` (the image
  jobs use), ``bin/apptainer`` (HTCondor's SINGULARITY: a wrapper around the
  real Apptainer that fault flags can break), ``nvidia/bin/nvidia-smi`` (GPU nodes:
  a simulated one) and ``fault/`` (the flags).
- ``/cvmfs/oasis.opensciencegrid.org``: a SIMULATED CVMFS repository (a
  squashfs image with the user.* attributes of a CVMFS mount, served through
  real FUSE by squashfuse with the source name cvmfs2), mounted in the
  node's namespace only, so that one node can lose it.
- GPU nodes: ``/sys/bus/pci/devices`` shows one SIMULATED NVIDIA function per GPU.

Faults (inject/repair from the host, at any time while the pool runs):

========================  ===========================================================
image_missing             the node's site.sif is renamed away (real)
image_corrupt             site.sif replaced by its first 64 KiB (real truncated SIF)
cvmfs_missing             the repository is unmounted in the node's namespace (real
                          FUSE unmount of the simulated repository)
cvmfs_hung                the repository is replaced by a REAL FUSE mount whose server
                          reads every request and never answers (tests/cvmfs_sim.py
                          HungMount), as a cvmfs2 stuck on the network: whoever touches
                          it blocks in the kernel, unkillable once signalled, until the
                          repair aborts the connection. The server is a helper process
                          in the node's namespace, on a lifeline: if the experiment
                          dies, its stdin closes and the mount is aborted
runtime_hang              the node's runtime answers --version but every other call
                          blocks until the fault is repaired (as on a hung file
                          system); the runtime is a wrapper, the hang is real
runtime_absent            HTCondor's SINGULARITY (the node's wrapper) is renamed away
userns_refused            the runtime runs under a seccomp filter that makes the
                          kernel refuse CLONE_NEWUSER with EPERM (what Docker's default
                          profile does to a node running in a container): a REAL refusal
                          for the runtime; other processes on the node are unaffected
gpu_nv_broken             SIMULATED (no GPU here): the node's nvidia-smi still lists its
                          GPU, but every ``--nv`` launch fails as when the container
                          side of the driver (libnvidia-container) is broken
execute_readonly          the node's EXECUTE (a tmpfs of its own) gets a read-only bind
                          mount stacked on it, as after a filesystem was remounted
                          read-only on errors (real)
execute_full              the node's EXECUTE (a tmpfs of its own) filled to the last
                          byte (real ENOSPC)
execute_nearly_full       EXECUTE filled up to 1.5 MiB left, and Apptainer for that node
                          without squashfuse (its apptainer.conf ``binary path`` hides
                          squashfuse*): a SIF is then extracted into the job's scratch
                          directory, where it does not fit (real)
extra_args_bind_missing   the node's SINGULARITY_EXTRA_ARGUMENTS bind a host directory
                          (``-B /opt/site/data:/site-data``) that is renamed away (real)
image_unreadable_by_jobs  the node's site image becomes root:condor 0640: readable by
                          the condor user, not by job users (real)
tmp_full                  HARMLESS: the node's /tmp (a tmpfs of its own, with
                          /tmp/condor bound back into it) filled to the last byte;
                          jobs do not use it (the starter gives them scratch on
                          EXECUTE), so the node must keep accepting jobs
========================  ===========================================================

Everything is undone by stop(): the pool is stopped, every FUSE mount
unmounted (each squashfuse server is found by its mount namespace and
ended by pid), and every process a node left behind killed (each carries
the node's name in its environment, FAULT_EXPERIMENT_NODE, whatever
namespace it entered: see leftover_processes).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass
from typing import Dict, Iterable, List, Optional, Sequence

from startd_health.system.procs import descendants, process_table

from .pool import RealPool

HERE_TESTS = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))   # tests/

REPO = "oasis.opensciencegrid.org"
SITE = "/opt/site"                      # same path on every node, its own content per node
IMAGE = SITE + "/images/site.sif"
RUNTIME = SITE + "/bin/apptainer"       # HTCondor's SINGULARITY on every node
NVIDIA_BIN = SITE + "/nvidia/bin"         # GPU nodes: the (simulated) driver's tools
NVIDIA_SMI = NVIDIA_BIN + "/nvidia-smi"
FAULT_DIR = SITE + "/fault"
NODES_DIR = "/srv/faults"               # per-node sources of the bind mounts, in the pool's namespace
PRISTINE_IMAGE = NODES_DIR + "/site.sif"
REPO_SQFS = NODES_DIR + "/repo.sqfs"
BIN = "/opt/faults/bin"
NODE_CONF = "/etc/condor/config.d/10-node.conf"
CORRUPT_BYTES = 64 * 1024

FAULTS = ("image_missing", "image_corrupt", "cvmfs_missing", "cvmfs_hung", "runtime_hang", "runtime_absent",
          "userns_refused", "gpu_nv_broken", "execute_readonly", "execute_full", "execute_nearly_full",
          "extra_args_bind_missing", "image_unreadable_by_jobs", "tmp_full")
# Faults that must NOT close the node: jobs keep running there.
HARMLESS = ("tmp_full",)
# Faults on the node's own EXECUTE, which is then a tmpfs of its own (in its namespace).
EXECUTE_FAULTS = ("execute_readonly", "execute_full", "execute_nearly_full")
EXECUTE_TMPFS_MB = 128
TMP_TMPFS_MB = 32
NEARLY_FULL_BYTES = 1536 * 1024
SITE_DATA = SITE + "/data"                # what extra_args_bind_missing binds
EXTRA_ARGUMENTS = f"-B {SITE_DATA}:/site-data"

FAULT_HOW = {
    "image_missing": "real: the node's site.sif renamed away",
    "image_corrupt": f"real: site.sif replaced by its first {CORRUPT_BYTES // 1024} KiB (truncated SIF)",
    "cvmfs_missing": "real FUSE unmount of the (simulated) repository in the node's namespace",
    "cvmfs_hung": "real FUSE mount whose server never answers (tests/cvmfs_sim.py HungMount), in the node's namespace",
    "runtime_hang": "runtime wrapper: --version answers, every other call blocks until repaired",
    "runtime_absent": "real: HTCondor's SINGULARITY (the node's runtime wrapper) renamed away",
    "userns_refused": "real kernel refusal (seccomp: CLONE_NEWUSER -> EPERM) for the runtime only",
    "gpu_nv_broken": "SIMULATED (no GPU): nvidia-smi on the node still works, every --nv launch exits 255",
    "execute_readonly": "real: a read-only bind mount stacked on the node's EXECUTE",
    "execute_full": "real: the node's EXECUTE (its own tmpfs) filled to the last byte",
    "execute_nearly_full": "real: EXECUTE filled to 1.5 MiB left, and the node's Apptainer without squashfuse "
                           "(apptainer.conf binary path): SIF images are extracted into the job's scratch",
    "extra_args_bind_missing": f"real: SINGULARITY_EXTRA_ARGUMENTS = {EXTRA_ARGUMENTS}, {SITE_DATA} renamed away",
    "image_unreadable_by_jobs": "real: the site image made root:condor 0640 (condor reads it, job users cannot)",
    "tmp_full": "real: the node's /tmp (its own tmpfs) filled to the last byte; HARMLESS: jobs must keep running",
}

NODE_MARK = "FAULT_EXPERIMENT_NODE"     # environment variable naming the node in all its processes

# The master runs this as STARTD_NODE<i> with "-local-name NODE<i>"; it
# gives the startd its private mount namespace, then becomes the startd.
NODE_STARTD = f"""#!/bin/sh
# node-startd: one execute node of the fault-injection pool (tests/realpool/multinode.py)
node=""; prev=""
for a in "$@"; do [ "$prev" = -local-name ] && node=$a; prev=$a; done
D={NODES_DIR}/$(printf %s "$node" | tr A-Z a-z)
[ -n "$node" ] && [ -d "$D" ] || {{ echo "node-startd: no node directory for '$node'" >&2; exit 1; }}
# Marks every process the node starts (cron jobs, starters and what they
# leave behind) so that leftovers can be told apart per node.
{NODE_MARK}=$(printf %s "$node" | tr A-Z a-z); export {NODE_MARK}
exec unshare --mount --propagation private -- /bin/sh -ec '
D=$1; shift
mount --bind "$D/node.conf" {NODE_CONF}
mount --bind "$D/site" {SITE}
if [ -d "$D/pci" ]; then mount --bind "$D/pci" /sys/bus/pci/devices; fi
if [ -e "$D/execute-tmpfs" ]; then   # a small EXECUTE of its own, that faults can fill or make read-only
  E=$(cat "$D/execute-tmpfs")
  mount -t tmpfs -o size={EXECUTE_TMPFS_MB}m,mode=0755 tmpfs "$E" && chown condor:condor "$E"
fi
if [ -e "$D/tmp-tmpfs" ]; then       # a small /tmp of its own, with /tmp/condor bound back into it
  mkdir -p "$D/tmp-keep" && mount --bind /tmp/condor "$D/tmp-keep"
  mount -t tmpfs -o size={TMP_TMPFS_MB}m,mode=1777 tmpfs /tmp
  mkdir /tmp/condor && mount --bind "$D/tmp-keep" /tmp/condor
fi
if [ ! -e "$D/cvmfs-missing" ]; then
  squashfuse -o allow_other,fsname=cvmfs2 {REPO_SQFS} /cvmfs/{REPO}
fi
echo $$ > "$D/startd.pid"
exec /usr/sbin/condor_startd "$@"' node-startd "$D" "$@"
"""

# HTCondor's SINGULARITY on every node: the real Apptainer, unless a fault flag says otherwise.
RUNTIME_WRAPPER = f"""#!/bin/sh
# The node's container runtime: Apptainer, with fault injection (tests/realpool/multinode.py)
F={FAULT_DIR}
if [ -e $F/runtime_hang ] && [ "$1" != --version ]; then
  while [ -e $F/runtime_hang ]; do sleep 1; done
fi
if [ -e $F/gpu_nv_broken ]; then
  for a in "$@"; do
    if [ "$a" = --nv ]; then
      echo "FATAL:   container creation failed: nvidia-container-cli: initialization error: load library failed: libnvidia-ml.so.1: cannot open shared object file: no such file or directory" >&2
      exit 255
    fi
  done
fi
# GPU nodes: Apptainer's --nv binds the driver's tools it finds in PATH.
if [ -d {NVIDIA_BIN} ]; then PATH={NVIDIA_BIN}:$PATH; export PATH; fi
if [ -e $F/userns_refused ]; then
  exec /usr/bin/python3 {BIN}/no-userns /usr/bin/apptainer "$@"
fi
exec /usr/bin/apptainer "$@"
"""

# A simulated nvidia-smi for GPU nodes: the GPU probe runs the --query-gpu form on
# the node and `nvidia-smi -L` inside the image (where --nv binds this script).
def nvidia_smi_sim(gpus: int) -> str:
    query = "\n".join(f"{i}, NVIDIA A100-SXM4-40GB, {gpu_uuid(i)}, 550.54.15, 40960" for i in range(gpus))
    listing = "\n".join(f"GPU {i}: NVIDIA A100-SXM4-40GB (UUID: {gpu_uuid(i)})" for i in range(gpus))
    return f"""#!/bin/sh
# SIMULATED nvidia-smi (there is no GPU here): {gpus} A100
case "$*" in
  *--query-gpu*) cat <<'EOF'
{query}
EOF
  ;;
  *-L*) cat <<'EOF'
{listing}
EOF
  ;;
  *) echo "simulated nvidia-smi" ;;
esac
"""


# Exec a command under a seccomp filter that refuses user namespaces: unshare()
# and clone() with CLONE_NEWUSER get EPERM, clone3() gets ENOSYS (callers fall
# back to clone(), where the flag can be checked). x86_64 only.
NO_USERNS = '''"""no-userns CMD...: run CMD where the kernel refuses it user namespaces (seccomp)."""
import ctypes, os, platform, struct, sys
if platform.machine() != "x86_64":
    sys.exit("no-userns: x86_64 only")
AUDIT_ARCH_X86_64, CLONE_NEWUSER = 0xC000003E, 0x10000000
NR_CLONE, NR_UNSHARE, NR_CLONE3, NR_SECCOMP = 56, 272, 435, 317
ALLOW, ERRNO = 0x7FFF0000, 0x00050000
LD_ABS, JEQ, JSET, RET = 0x20, 0x15, 0x45, 0x06
def op(code, jt, jf, k):
    return struct.pack("HBBI", code, jt, jf, k)
prog = [
    op(LD_ABS, 0, 0, 4), op(JEQ, 1, 0, AUDIT_ARCH_X86_64), op(RET, 0, 0, ALLOW),
    op(LD_ABS, 0, 0, 0),
    op(JEQ, 0, 1, NR_CLONE3), op(RET, 0, 0, ERRNO | 38),
    op(JEQ, 2, 0, NR_CLONE), op(JEQ, 1, 0, NR_UNSHARE), op(RET, 0, 0, ALLOW),
    op(LD_ABS, 0, 0, 16), op(JSET, 0, 1, CLONE_NEWUSER), op(RET, 0, 0, ERRNO | 1), op(RET, 0, 0, ALLOW),
]
code = ctypes.create_string_buffer(b"".join(prog))
class Fprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]
fprog = Fprog(len(prog), ctypes.cast(code, ctypes.c_void_p))
libc = ctypes.CDLL(None, use_errno=True)
if libc.prctl(38, 1, 0, 0, 0) != 0 or libc.syscall(NR_SECCOMP, 1, 0, ctypes.byref(fprog)) != 0:
    sys.exit("no-userns: cannot install the seccomp filter: " + os.strerror(ctypes.get_errno()))
os.execvp(sys.argv[1], sys.argv[1:])
'''

# Serves a hung repository in the node's namespace (run there with nsenter)
# until its stdin closes: then the connection is aborted and every blocked
# caller freed.
HUNG_HELPER = f"""import sys
sys.path.insert(0, "{BIN}")
from cvmfs_sim import HungMount
mount = HungMount("/cvmfs/{REPO}", swallow=True).mount()
print("mounted", flush=True)
try:
    sys.stdin.read()
finally:
    mount.cleanup()
"""

# The simulated repository: what tests/e2e/conftest.py mounts, built once here.
MAKE_REPO = f"""
rm -rf /tmp/faults-cvmfs-src && mkdir -p /tmp/faults-cvmfs-src/repo/software
echo hello > /tmp/faults-cvmfs-src/repo/README
for kv in revision=4242 fqrn={REPO} nioerr=0 timestamp_last_ioerr=0 version=2.11.5; do
  setfattr -n user.${{kv%%=*}} -v ${{kv#*=}} /tmp/faults-cvmfs-src/repo
done
mksquashfs /tmp/faults-cvmfs-src/repo {REPO_SQFS} -noappend -quiet -xattrs >/dev/null
rm -rf /tmp/faults-cvmfs-src
"""


@dataclass(frozen=True)
class NodeSpec:
    name: str                 # node1, node2, ... (lower case: STARTD_NAME)
    fault: str = ""           # one of FAULTS, "" = a healthy node
    cpus: int = 2
    gpus: int = 0             # simulated GPUs (MACHINE_RESOURCE_GPUS)
    memory_mb: int = 2048
    gpu_only: bool = False    # START only jobs that request a GPU (a site's GPU-node policy)

    @property
    def local(self) -> str:
        return self.name.upper()


class MultiNodePool:
    """N execute nodes (startds) with injectable faults in one RealPool."""

    def __init__(self, pool: RealPool, nodes: Sequence[NodeSpec]) -> None:
        for node in nodes:
            if node.fault and node.fault not in FAULTS:
                raise ValueError(f"{node.name}: unknown fault {node.fault!r} (known: {', '.join(FAULTS)})")
            if node.fault == "gpu_nv_broken" and not node.gpus:
                raise ValueError(f"{node.name}: gpu_nv_broken needs a GPU node")
        self.pool = pool
        self.nodes = list(nodes)
        self.by_name = {n.name: n for n in self.nodes}
        self.injected: Dict[str, bool] = {n.name: False for n in self.nodes}
        self.namespaces: Dict[str, str] = {}   # node -> mount namespace, remembered for cleanup
        self.hung: Dict[str, subprocess.Popen] = {}   # node -> hung-repository server
        self._image_inodes: Dict[str, set] = {}       # node -> inodes its site.sif has had

    # ------------------------------------------------------------ layout
    def node_dir(self, name: str) -> str:
        return f"{NODES_DIR}/{name}"

    def host(self, inside: str) -> str:
        return self.pool.path(inside)

    def prepare(self) -> None:
        """Lay out the site in the root filesystem (the pool must be built, not running)."""
        p = self.pool
        shutil.rmtree(self.host(NODES_DIR), ignore_errors=True)
        os.makedirs(self.host(BIN), exist_ok=True)
        p.write(f"{BIN}/node-startd", NODE_STARTD, 0o755)
        p.write(f"{BIN}/no-userns", NO_USERNS, 0o755)
        p.write(f"{BIN}/hung-cvmfs", HUNG_HELPER, 0o644)
        shutil.copyfile(os.path.join(HERE_TESTS, "cvmfs_sim.py"), self.host(f"{BIN}/cvmfs_sim.py"))
        p.write(NODE_CONF, "# each node's own configuration is bind-mounted here in its namespace\n")
        for path in (SITE, f"/cvmfs/{REPO}"):
            os.makedirs(self.host(path), exist_ok=True)
        os.makedirs(self.host(NODES_DIR), exist_ok=True)
        p.sh(f"cp /opt/containers/test.sif {PRISTINE_IMAGE} && chmod 0644 {PRISTINE_IMAGE}\n" + MAKE_REPO)
        for node in self.nodes:
            self._prepare_node(node)
        names = " ".join(n.name for n in self.nodes)
        p.sh(f"for n in {names}; do install -d -o condor -g condor -m 0755 /var/lib/condor/execute/$n; done; "
             f"chmod -R a+rX {NODES_DIR} /opt/faults")

    def _prepare_node(self, node: NodeSpec) -> None:
        d = self.node_dir(node.name)
        site = d + "/site"
        for sub in ("images", "bin", "fault") + (("nvidia/bin",) if node.gpus else ()):
            os.makedirs(self.host(f"{site}/{sub}"), exist_ok=True)
        shutil.copyfile(self.host(PRISTINE_IMAGE), self.host(f"{site}/images/site.sif"))
        os.chmod(self.host(f"{site}/images/site.sif"), 0o644)
        os.makedirs(self.host(f"{site}/data"), exist_ok=True)   # SITE_DATA, bound by SINGULARITY_EXTRA_ARGUMENTS
        if node.fault in EXECUTE_FAULTS:
            self.pool.write(f"{d}/execute-tmpfs", self.execute_dir(node.name))
        if node.fault == "tmp_full":
            self.pool.write(f"{d}/tmp-tmpfs", "")
        if node.fault == "execute_nearly_full":
            # The node's Apptainer configuration without squashfuse: its binary path
            # is a directory of links to everything in /usr/bin but squashfuse*.
            self.pool.sh(f"mkdir -p {d}/nosquash-bin && cd {d}/nosquash-bin && for f in /usr/bin/*; do "
                         f"case ${{f##*/}} in squashfuse*) ;; *) ln -sf \"$f\" . ;; esac; done && "
                         f"sed 's|^# binary path = $|binary path = {d}/nosquash-bin:/usr/sbin|' "
                         f"/etc/apptainer/apptainer.conf > {d}/apptainer-nosquash.conf && "
                         f"grep -q '^binary path = {d}/nosquash-bin' {d}/apptainer-nosquash.conf")
        self.pool.write(f"{site}/bin/apptainer", RUNTIME_WRAPPER, 0o755)
        if node.gpus:
            self.pool.write(f"{site}/nvidia/bin/nvidia-smi", nvidia_smi_sim(node.gpus), 0o755)
            for i in range(node.gpus):
                fn = f"{d}/pci/0000:{0x3b + i:02x}:00.0"
                self.pool.write(f"{fn}/vendor", "0x10de\n")
                self.pool.write(f"{fn}/class", "0x030200\n")
        self.pool.write(f"{d}/node.conf", self.node_config(node))
        self._image_inodes.pop(node.name, None)
        self.image_inodes(node.name)

    def node_config(self, node: NodeSpec) -> str:
        """The node's own configuration file (10-node.conf in its namespace)."""
        n = node.name
        lines = [
            f"# execute node {n} of the fault-injection pool" + (f" (fault: {node.fault})" if node.fault else ""),
            f"STARTD_NAME = {n}",
            f"STARTER_LOG = $(LOG)/StarterLog.{n}",
            f"STARTD_HISTORY = $(LOG)/startd_history.{n}",
            f"EXECUTE = {self.execute_dir(n)}",
            f"NUM_CPUS = {node.cpus}",
            f"MEMORY = {node.memory_mb}",
            f"STARTD_HEALTH_STATE_DIR = $(SPOOL)/startd_health.{n}",
        ]
        if node.gpus:
            ids = ", ".join(gpu_uuid(i) for i in range(node.gpus))
            lines += [f"MACHINE_RESOURCE_GPUs = {ids}",
                      'GPUs_NvidiaDriver = "550.54.15"',
                      "STARTD_ATTRS = $(STARTD_ATTRS) GPUs_NvidiaDriver",
                      f"STARTD_HEALTH_GPU_NVIDIA_SMI = {NVIDIA_SMI}"]
        if node.gpu_only:
            lines.append("START = (TARGET.RequestGPUs ?: 0) >= 1")
        if node.fault == "extra_args_bind_missing":
            lines.append(f"SINGULARITY_EXTRA_ARGUMENTS = {EXTRA_ARGUMENTS}")
        return "\n".join(lines) + "\n"

    @staticmethod
    def execute_dir(name: str) -> str:
        return f"/var/lib/condor/execute/{name}"

    def pool_config(self) -> str:
        """Pool-level configuration (goes into 99-test.conf, with whatever the caller adds)."""
        lines = ["# fault-injection pool: one startd per execute node (tests/realpool/multinode.py)",
                 "DAEMON_LIST = MASTER COLLECTOR NEGOTIATOR SCHEDD " + " ".join(f"STARTD_{n.local}" for n in self.nodes)]
        for node in self.nodes:
            lines += [f"STARTD_{node.local} = {BIN}/node-startd",
                      f"STARTD_{node.local}_ARGS = -local-name {node.local}"]
        lines += [
            "# The same container setup on every node (each node's /opt/site is its own)",
            f"SINGULARITY = {RUNTIME}",
            'SINGULARITY_BIND_EXPR = "/cvmfs"',
        ]
        return "\n".join(lines) + "\n"

    # ------------------------------------------------------------ lifecycle
    def start(self, timeout: float = 60) -> None:
        """Start the pool; return once every node's startd runs in its namespace."""
        self.pool.start()
        self.pool.wait_for(lambda: len(self.mount_namespaces()) == len(self.nodes), timeout, "every node's startd")
        self.namespaces.update(self.mount_namespaces())

    def startd_pid(self, name: str) -> Optional[int]:
        try:
            with open(self.host(f"{self.node_dir(name)}/startd.pid")) as handle:
                pid = int(handle.read().strip())
            with open(f"/proc/{pid}/cmdline", "rb") as handle:
                if b"condor_startd" not in handle.read():
                    return None   # gone (the pid file outlived it)
            return pid
        except (OSError, ValueError):
            return None

    def nsenter(self, name: str, script: str, timeout: float = 30, check: bool = True) -> subprocess.CompletedProcess:
        """Run a shell script in the node's mount namespace (as root)."""
        pid = self.startd_pid(name)
        if pid is None:
            raise RuntimeError(f"{name}: startd not running")
        proc = subprocess.run(["nsenter", "-t", str(pid), "-m", "--", "/bin/sh", "-c", script],
                              capture_output=True, text=True, timeout=timeout,
                              env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin"})
        if check and proc.returncode != 0:
            raise RuntimeError(f"{name}: {script!r} exited {proc.returncode}: {proc.stderr.strip()}")
        return proc

    def mount_namespaces(self) -> Dict[str, str]:
        """The mount namespace of each running node (where its FUSE servers live)."""
        found = {}
        for node in self.nodes:
            pid = self.startd_pid(node.name)
            if pid is not None:
                try:
                    found[node.name] = os.readlink(f"/proc/{pid}/ns/mnt")
                except OSError:
                    pass
        return found

    @staticmethod
    def processes_in(namespaces: Iterable[str]) -> Dict[int, List[bytes]]:
        """pid -> argv of every process in these mount namespaces."""
        wanted, found = set(namespaces), {}
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                if os.readlink(f"/proc/{entry}/ns/mnt") not in wanted:
                    continue
                with open(f"/proc/{entry}/cmdline", "rb") as handle:
                    found[int(entry)] = handle.read().split(b"\0")
            except OSError:
                continue
        return found

    def fuse_servers(self, namespaces: Iterable[str]) -> List[int]:
        """pids of the squashfuse servers of our simulated repository in these mount namespaces."""
        return [pid for pid, argv in self.processes_in(namespaces).items()
                if argv and os.path.basename(argv[0]) == b"squashfuse" and REPO_SQFS.encode() in argv]

    def stop(self) -> None:
        """Stop the pool and unmount every FUSE mount of ours. Safe to call twice."""
        self.namespaces.update(self.mount_namespaces())
        for node in self.nodes:
            self.repair(node.name, quiet=True)   # ends hung runtime wrappers too
            if self.startd_pid(node.name) is not None:
                self.nsenter(node.name, f"umount -l /cvmfs/{REPO} 2>/dev/null || true", check=False)
        self.pool.stop()
        # What the nodes left in namespaces of their own (Apptainer's nested
        # mount namespaces are not the pool's) goes too.
        for node in self.nodes:
            for line in self.leftover_processes(node.name):
                try:
                    os.kill(int(line.split()[0]), signal.SIGKILL)
                except (ProcessLookupError, PermissionError):
                    pass
        # A starter whose startd went first lives on in the node's namespace
        # (seen: condor_starter processes orphaned to init after a run): they
        # go too, but not the FUSE servers, which end with their mounts.
        for pid, argv in self.processes_in(self.namespaces.values()).items():
            if argv and os.path.basename(argv[0]) != b"squashfuse" and pid != os.getpid():
                try:
                    os.kill(pid, signal.SIGKILL)
                except (ProcessLookupError, PermissionError):
                    pass
        # A FUSE server whose mount was detached exits by itself; any other
        # (e.g. the startd died first) is ended by pid.
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            left = self.fuse_servers(self.namespaces.values())
            if not left:
                return
            late = time.monotonic() > deadline - 5
            for pid in left:
                try:
                    os.kill(pid, signal.SIGKILL if late else signal.SIGTERM)
                except ProcessLookupError:
                    pass
            time.sleep(0.5)
        raise RuntimeError(f"squashfuse servers still running: {self.fuse_servers(self.namespaces.values())}")

    # ------------------------------------------------------------ faults
    def inject(self, name: str) -> None:
        node = self.by_name[name]
        fault, d = node.fault, self.node_dir(name)
        site = self.host(d + "/site")
        if not fault:
            return
        if fault == "image_missing":
            os.rename(f"{site}/images/site.sif", f"{site}/images/site.sif.off")
        elif fault == "image_corrupt":
            with open(self.host(PRISTINE_IMAGE), "rb") as handle:
                head = handle.read(CORRUPT_BYTES)
            self._replace(f"{site}/images/site.sif", head)
        elif fault == "cvmfs_missing":
            self.pool.write(f"{d}/cvmfs-missing", "")
            self.nsenter(name, f"umount -l /cvmfs/{REPO}")
        elif fault == "cvmfs_hung":
            self.nsenter(name, f"umount -l /cvmfs/{REPO}")
            self.hung[name] = self._serve_hung(name)
        elif fault == "runtime_absent":
            os.rename(f"{site}/bin/apptainer", f"{site}/bin/apptainer.off")
        elif fault == "execute_readonly":
            e = self.execute_dir(name)
            self.nsenter(name, f"mount --bind {e} {e} && mount -o remount,bind,ro {e}")
        elif fault in ("execute_full", "tmp_full"):
            target = self.execute_dir(name) if fault == "execute_full" else "/tmp"
            self.nsenter(name, f"dd if=/dev/zero of={target}/.fill bs=1M 2>/dev/null; "
                               f"head -c 1000000 /dev/zero >> {target}/.fill 2>/dev/null; true")
        elif fault == "execute_nearly_full":
            e = self.execute_dir(name)
            self.nsenter(name, f"avail=$(df -B1 --output=avail {e} | tail -1); "
                               f"head -c $((avail - {NEARLY_FULL_BYTES})) /dev/zero > {e}/.fill; "
                               f"mount --bind {d}/apptainer-nosquash.conf /etc/apptainer/apptainer.conf")
        elif fault == "extra_args_bind_missing":
            os.rename(f"{site}/data", f"{site}/data.off")
        elif fault == "image_unreadable_by_jobs":
            self.pool.sh(f"chown root:condor {d}/site/images/site.sif && chmod 0640 {d}/site/images/site.sif")
        else:   # runtime_hang, userns_refused, gpu_nv_broken: a flag the wrappers read
            self.pool.write(f"{d}/site/fault/{fault}", "")
        self.injected[name] = True
        self.image_inodes(name)

    def repair(self, name: str, quiet: bool = False) -> None:
        node = self.by_name[name]
        fault, d = node.fault, self.node_dir(name)
        site = self.host(d + "/site")
        if not fault or not self.injected.get(name):
            return
        try:
            if fault == "image_missing":
                os.rename(f"{site}/images/site.sif.off", f"{site}/images/site.sif")
            elif fault == "image_corrupt":
                with open(self.host(PRISTINE_IMAGE), "rb") as handle:
                    self._replace(f"{site}/images/site.sif", handle.read())
            elif fault == "cvmfs_missing":
                os.unlink(self.host(f"{d}/cvmfs-missing"))
                if self.startd_pid(name) is not None:
                    self.nsenter(name, f"squashfuse -o allow_other,fsname=cvmfs2 {REPO_SQFS} /cvmfs/{REPO}")
            elif fault == "cvmfs_hung":
                self._end_hung(name)
                if self.startd_pid(name) is not None:
                    self.nsenter(name, f"squashfuse -o allow_other,fsname=cvmfs2 {REPO_SQFS} /cvmfs/{REPO}")
            elif fault == "runtime_absent":
                os.rename(f"{site}/bin/apptainer.off", f"{site}/bin/apptainer")
            elif fault == "execute_readonly":
                if self.startd_pid(name) is not None:
                    self.nsenter(name, f"umount {self.execute_dir(name)}")
            elif fault in ("execute_full", "tmp_full"):
                if self.startd_pid(name) is not None:
                    target = self.execute_dir(name) if fault == "execute_full" else "/tmp"
                    self.nsenter(name, f"rm -f {target}/.fill")
            elif fault == "execute_nearly_full":
                if self.startd_pid(name) is not None:
                    self.nsenter(name, f"rm -f {self.execute_dir(name)}/.fill; "
                                       f"umount /etc/apptainer/apptainer.conf")
            elif fault == "extra_args_bind_missing":
                os.rename(f"{site}/data.off", f"{site}/data")
            elif fault == "image_unreadable_by_jobs":
                self.pool.sh(f"chown root:root {d}/site/images/site.sif && chmod 0644 {d}/site/images/site.sif")
            else:
                os.unlink(f"{site}/fault/{fault}")
        except (OSError, RuntimeError):
            if not quiet:
                raise
        self.injected[name] = False

    def _serve_hung(self, name: str) -> subprocess.Popen:
        pid = self.startd_pid(name)
        if pid is None:
            raise RuntimeError(f"{name}: startd not running")
        server = subprocess.Popen(["nsenter", "-t", str(pid), "-m", "--", "/usr/bin/python3", f"{BIN}/hung-cvmfs"],
                                  stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                  env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin"})
        line = server.stdout.readline() if server.stdout else b""
        if line.strip() != b"mounted":
            server.kill()
            _, err = server.communicate(timeout=10)
            raise RuntimeError(f"{name}: hung repository not mounted: {err.decode(errors='replace')[-500:]}")
        return server

    def _end_hung(self, name: str) -> None:
        server = self.hung.pop(name, None)
        if server is None:
            return
        try:
            server.communicate(timeout=10)   # closes its stdin: it aborts the connection and exits
        except subprocess.TimeoutExpired:
            server.kill()   # closing /dev/fuse (the kernel does it) aborts the connection too
            server.communicate(timeout=10)

    @staticmethod
    def _replace(path: str, data: bytes) -> None:
        tmp = path + ".new"
        with open(tmp, "wb") as handle:
            handle.write(data)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)

    # ------------------------------------------------------------ queries
    def start_log(self, name: str) -> str:
        """Host path of the node's StartLog (a startd with -local-name NODE3 logs to Node3Log)."""
        return self.host(f"/tmp/condor/log/{self.by_name[name].local.capitalize()}Log")

    def stuck_processes(self, name: str) -> List[str]:
        """Processes of the node (its mount namespace) in uninterruptible sleep: 'pid comm' each."""
        ns = self.namespaces.get(name)
        found = []
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                if os.readlink(f"/proc/{entry}/ns/mnt") != ns:
                    continue
                with open(f"/proc/{entry}/stat") as handle:
                    comm, rest = handle.read().rsplit(")", 1)
                if rest.split()[0] == "D":
                    found.append(f"{entry} {comm.split('(', 1)[1]}")
            except (OSError, IndexError):
                continue
        return found

    def leftover_processes(self, name: str) -> List[str]:
        """Processes the node started that outlived what started them: they
        carry the node's mark in their environment (inherited from its
        startd, whatever mount or pid namespace they entered) but are no
        longer descendants of the node's startd (a running cron job and its
        children are), other than the node's own simulated CVMFS server; and
        processes outside that tree holding the node's site image open.
        'pid state comm' each. Reads only /proc/<pid>/stat,
        and environ of processes outside the startd's tree (a process blocked
        in a FUSE read holds no lock that reading its environment needs)."""
        startd = self.startd_pid(name)
        table = process_table()
        inside = descendants(table, [startd]) if startd is not None else set()
        # the node's simulated CVMFS server (squashfuse daemonises: init's child)
        ns = self.namespaces.get(name)
        inside |= set(self.fuse_servers([ns])) if ns else set()
        mark = f"{NODE_MARK}={name}".encode()
        images = self.image_inodes(name)
        found = []
        for pid, info in sorted(table.items()):
            if pid in inside or pid == startd or info.state in ("Z", "X"):
                continue
            try:
                with open(f"/proc/{pid}/environ", "rb") as handle:
                    marked = mark in handle.read().split(b"\0")
            except OSError:
                marked = False
            if marked or holds_inode(pid, images):
                found.append(f"{pid} {info.state} {process_name(pid)}")
        return found

    def image_inodes(self, name: str) -> set:
        """Inode numbers the node's site image has had (each node has a copy of
        its own; image_corrupt replaces it). Apptainer's SIF mount helper
        (squashfuse_ll) runs with the environment Apptainer gives it, not the
        node's: it is known by the image it holds open."""
        known = self._image_inodes.setdefault(name, set())
        for suffix in ("", ".off"):
            try:
                known.add(os.stat(self.host(f"{self.node_dir(name)}/site/images/site.sif{suffix}")).st_ino)
            except OSError:
                pass
        return known

    def startd_names(self) -> List[str]:
        """Distinct startd (machine) names the collector knows, from condor_status."""
        out = self.pool.enter("condor_status", "-startd", "-af", "Name", timeout=30).stdout
        return sorted(set(out.split()))

    def slot_ads(self, constraint: str = "PartitionableSlot =?= true") -> List[str]:
        """Long-form slot ads, one text per slot, from condor_status."""
        out = self.pool.enter("condor_status", "-long", "-constraint", constraint, timeout=30).stdout
        return [block for block in out.split("\n\n") if block.strip()]


def process_name(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/comm") as handle:
            return handle.read().strip()
    except OSError:
        return "?"


def holds_inode(pid: int, inodes: set) -> bool:
    """Whether the process has a site image with one of these inode numbers
    open. Reads /proc/<pid>/fd links and fdinfo only: nothing is stat()ed
    through a link, which could block on a hung mount."""
    try:
        fds = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return False
    for fd in fds:
        try:
            if "site.sif" not in os.readlink(f"/proc/{pid}/fd/{fd}"):
                continue
            with open(f"/proc/{pid}/fdinfo/{fd}") as handle:
                for line in handle:
                    if line.startswith("ino:") and int(line.split()[1]) in inodes:
                        return True
        except (OSError, ValueError, IndexError):
            continue
    return False


def gpu_uuid(index: int) -> str:
    """The simulated GPU's id (the form condor_gpu_discovery -short-uuid gives a real one)."""
    return f"GPU-5e1c9a{index:02x}"


def node_of_slot(slot_name: str) -> str:
    """'slot1_2@node3@vm' -> 'node3'."""
    parts = slot_name.split("@")
    return parts[1] if len(parts) >= 3 else ""


def faulty(nodes: Iterable[NodeSpec]) -> List[NodeSpec]:
    return [n for n in nodes if n.fault]
