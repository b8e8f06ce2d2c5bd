"""The container launch HTCondor's starter performs for a job, as a pure
function of HTCondor's knobs: the same argument vector and the same runtime
environment, so that the container probe tests what jobs will get, not a
launch of its own.

Read from HTCondor's source (htcondor/htcondor, src/condor_starter.V6.1/
singularity.cpp Singularity::setup and add_containment_args, starter.cpp
where the job environment and the scratch directory are made, os_proc.cpp
where setup is called) at v23.9.6 and at the 25.14 development head, and
checked against the command line real 23.9.6 and 25.14.1 starters log
(tests/e2e/test_starter_launch.py). For a job with file transfer (its
working directory is the scratch directory), with no target directory or
MountUnderScratch of its own, the starter runs, in this order:

  SINGULARITY  SINGULARITY_VERBOSITY(-s)  exec
    -S d ...              each of MOUNT_UNDER_SCRATCH (default /tmp,/var/tmp)
    -B LIBEXEC/condor_container_launcher.sh:/condor_container_launcher.sh
                          (>= 24.3, SINGULARITY_USE_LAUNCHER = true only)
    -W <scratch>
    --pwd <scratch>       or, with SINGULARITY_TARGET_DIR, the target (23.9)
                          or <target>/scratch (>= 24.7: nested scratch)
    -B <slot dir>[:<target>]
    --nv                  a GPU assigned (23.9); >= 25.14 only with an NVIDIA
                          driver (GPUs_NvidiaDriver) in the slot ad
    --rocm                >= 25.8 with a GPU: SINGULARITY_ADD_ROCM_FLAG (default
                          true until 25.13, false from 25.14, where GPUs_Rocm > 0
                          also adds it)
    -B b ...              each of SINGULARITY_BIND_EXPR (when it evaluates to a
                          string; sources that do not exist are skipped), plus
                          /etc/OpenCL/vendors on GPU slots
    --home <scratch>
    -C                    or --contain --ipc --cleanenv without pid namespaces
    SINGULARITY_EXTRA_ARGUMENTS
    IMAGE  command...

The slot directory is EXECUTE/dir_<starter pid>; from 24.7 the job's scratch
directory is its subdirectory `scratch` (STARTER_NESTED_SCRATCH, default
true), before that the slot directory itself. The runtime runs with TMPDIR,
TEMP, TMP, _CONDOR_SCRATCH_DIR, APPTAINER_CACHEDIR and APPTAINER_TMPDIR
(before 23.10: APPTAINER_TEMPDIR, which Apptainer does not read; TMPDIR
then decides) set to the scratch directory, so a SIF that cannot be mounted
with squashfuse is extracted there, on EXECUTE, never in /tmp.

Knobs whose value is an expression of the job ad (SINGULARITY_BIND_EXPR,
SINGULARITY_EXTRA_ARGUMENTS, MOUNT_UNDER_SCRATCH referring to attributes)
cannot be evaluated without a job: they are left out and named in
``untestable``. Everything impure (does a bind source exist) is a callable
the caller passes.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Mapping, Optional, Tuple

Param = Callable[[str], Optional[str]]     # HTCondor's param(): None when unset

SCRATCH_PREFIX = "startd-health."       # our slot directories on EXECUTE: never a starter's dir_<pid>
OPENCL_VENDORS = "/etc/OpenCL/vendors"
LAUNCHER = "condor_container_launcher.sh"

# (major, minor) from which a behaviour of the starter holds: see the docstring.
TMPDIR_FIXED = (23, 10)          # APPTAINER_TMPDIR instead of APPTAINER_TEMPDIR; APPTAINERENV_PS1
LAUNCHER_KNOB = (24, 3)          # SINGULARITY_USE_LAUNCHER
NESTED_SCRATCH = (24, 7)         # EXECUTE/dir_<pid>/scratch, -B <slot dir>
ROCM_FLAG = (25, 8)              # --rocm next to --nv, SINGULARITY_ADD_ROCM_FLAG default true
GPU_DRIVER_FACTS = (25, 14)      # --nv only with GPUs_NvidiaDriver; ROCM flag default false
ENV_STRIPPED = (25, 14)          # the job's own APPTAINER_*/SINGULARITY_* variables removed

DEFAULTS = {
    "SINGULARITY_VERBOSITY": "-s",
    "MOUNT_UNDER_SCRATCH": '"/tmp,/var/tmp"',
    "SINGULARITY_BIND_EXPR": "SingularityBind",
    "SINGULARITY_USE_PID_NAMESPACES": "auto",
    "STARTER_NESTED_SCRATCH": "true",
    "SINGULARITY_USE_LAUNCHER": "false",
    "LIBEXEC": "/usr/libexec/condor",
}


@dataclass(frozen=True)
class SlotFacts:
    """What the starter reads from the machine ad."""

    gpus: bool = False               # AssignedGPUs non-empty
    nvidia_driver: bool = False      # GPUs_NvidiaDriver present
    rocm: bool = False               # GPUs_Rocm > 0
    name: str = ""                   # the slot's Name (the prompt inside)


@dataclass(frozen=True)
class StarterLaunch:
    """One job's launch as the starter would make it, up to the image."""

    options: Tuple[str, ...]         # runtime, verbosity, exec and every option, without the image
    image: str
    env: Dict[str, str]              # what the starter sets for the runtime (on top of the job's)
    slot_dir: str
    scratch: str
    pid_namespaces: Optional[bool]   # None: "auto" (the startd's own test decided)
    untestable: Tuple[str, ...] = ()     # "KNOB: why" for knobs only a job can resolve
    skipped_binds: Tuple[str, ...] = ()  # SINGULARITY_BIND_EXPR sources the starter would skip
    knob_args: Tuple[Tuple[str, str], ...] = field(default=())   # (knob, the arguments it gave), for reasons

    def argv(self, *command: str) -> List[str]:
        return [*self.options, self.image, *command]

    def test_argv(self) -> List[str]:
        """The starter's pre-job test (SINGULARITY_RUN_TEST_BEFORE_JOB): `-q test` for `exec`."""
        out: List[str] = []
        for arg in self.options:
            if arg in ("exec", "run"):
                out += ["-q", "test"]
            else:
                out.append(arg)
        return out + [self.image]


def parse_version(text: Optional[str]) -> Tuple[int, ...]:
    """'25.14.1' -> (25, 14, 1); () when unknown."""
    match = re.match(r"\s*(\d+)\.(\d+)(?:\.(\d+))?", text or "")
    return tuple(int(g) for g in match.groups() if g is not None) if match else ()


def _param(param: Param, name: str) -> str:
    """HTCondor's param(): an unset or empty value is the default."""
    value = param(name)
    if value is None or not value.strip():
        return DEFAULTS.get(name, "")
    return value.strip()


def _is_bool(text: str) -> Optional[bool]:
    """HTCondor's string_is_boolean_param: true/false, case-insensitive (t/f/yes/no/1/0 too)."""
    lowered = text.strip().lower()
    if lowered in ("true", "t", "yes", "y", "1"):
        return True
    if lowered in ("false", "f", "no", "n", "0"):
        return False
    return None


@dataclass(frozen=True)
class Evaluated:
    value: Optional[str]        # the string, or None when it did not evaluate to one
    job_dependent: bool = False
    parsed: bool = True


def evaluate_string(text: str) -> Evaluated:
    """param_eval_string without a job: the value when the expression is a
    plain string; job_dependent when it refers to attributes (of the job or
    the slot: only a job's match can give them)."""
    try:
        import classad2
        expr = classad2.ExprTree(text)
        value = expr.eval()
        refs = [r for r in classad2.ClassAd().externalRefs(expr) if r]
    except ImportError:   # no bindings (a pilot's bare Python): only a quoted literal is understood
        match = re.fullmatch(r'\s*"((?:[^"\\]|\\.)*)"\s*', text)
        if match:
            return Evaluated(match.group(1).replace('\\"', '"').replace("\\\\", "\\"))
        return Evaluated(None, job_dependent=bool(re.search(r"[A-Za-z_]", text) and "/" not in text), parsed=False)
    except Exception:  # noqa: BLE001 - classad2 raises its own ClassAdException on a parse error
        return Evaluated(None, parsed=False)
    if isinstance(value, str):
        return Evaluated(value)
    return Evaluated(None, job_dependent=bool(refs))


def split_list(text: str) -> List[str]:
    """HTCondor's StringTokenIterator / split(): commas and white space."""
    return [item for item in re.split(r"[\s,]+", text) if item]


def split_args(text: str) -> List[str]:
    """ArgList::AppendArgsV1RawOrV2Quoted: "double-quoted" means the V2 syntax
    (white space separates, 'single quotes' group, '' is a quote), anything
    else the V1 raw syntax (white space separates, nothing quotes)."""
    stripped = text.strip()
    if len(stripped) >= 2 and stripped[0] == '"' and stripped[-1] == '"':
        body, args, current, quoted, have = stripped[1:-1], [], [], False, False
        i = 0
        while i < len(body):
            char = body[i]
            if char == "'":
                if quoted and body[i + 1:i + 2] == "'":
                    current.append("'")
                    i += 2
                    continue
                quoted, have = not quoted, True
            elif char.isspace() and not quoted:
                if current or have:
                    args.append("".join(current))
                current, have = [], False
            else:
                current.append(char)
            i += 1
        if quoted:
            raise ValueError("unbalanced single quote")
        if current or have:
            args.append("".join(current))
        return args
    return stripped.split()


def extra_bind_sources(text: str) -> List[str]:
    """The host paths a SINGULARITY_EXTRA_ARGUMENTS value binds (-B/--bind
    SRC[:DST[:OPTS]][,...]), split as the starter splits it: the starter's
    per-job container test fails when one of them is missing."""
    try:
        args = split_args(text)
    except ValueError:
        return []   # the starter's own test will say so
    sources: List[str] = []
    for flag, value in zip(args, args[1:] + [""]):
        if flag in ("-B", "--bind"):
            spec = value
        elif flag.startswith("--bind="):
            spec = flag.partition("=")[2]
        else:
            continue
        sources += [item.split(":")[0] for item in spec.split(",") if item.split(":")[0].startswith("/")]
    return sources


def starter_launch(param: Param, runtime: str, image: str, execute: str, starter_id: str,
                   slot: SlotFacts = SlotFacts(), exists: Callable[[str], bool] = lambda path: True,
                   is_dir: Callable[[str], bool] = lambda path: False, apptainer: bool = True,
                   version: Tuple[int, ...] = ()) -> StarterLaunch:
    """The starter's launch of ``image`` for a job with file transfer.

    param: HTCondor's configuration; runtime: the path SINGULARITY names;
    execute: the EXECUTE directory of the slot; starter_id: the name of the
    slot directory is SCRATCH_PREFIX + starter_id; exists / is_dir: the
    starter's stat() of bind sources (and of the image, for
    SINGULARITY_IGNORE_MISSING_BIND_TARGET); apptainer: the runtime's
    --version says apptainer (its APPTAINER_* rather than SINGULARITY_* names);
    version: HTCondor's, from CONDOR_VERSION (unknown: the newest behaviour).
    Raises ValueError for SINGULARITY_EXTRA_ARGUMENTS the starter could not parse.
    """
    v = version[:2] if version else (99, 0)
    untestable: List[str] = []
    knob_args: List[Tuple[str, str]] = []
    slot_dir = execute.rstrip("/") + "/" + SCRATCH_PREFIX + starter_id
    nested = v >= NESTED_SCRATCH and _is_bool(_param(param, "STARTER_NESTED_SCRATCH")) is not False
    scratch = slot_dir + "/scratch" if nested else slot_dir

    args: List[str] = [runtime]
    verbosity = _param(param, "SINGULARITY_VERBOSITY")
    if verbosity:
        args.append(verbosity)
    args.append("exec")

    mounts = evaluate_string(_param(param, "MOUNT_UNDER_SCRATCH"))
    if mounts.job_dependent:
        untestable.append("MOUNT_UNDER_SCRATCH: an expression of the job ad")
        mount_text = ""
    else:
        mount_text = mounts.value if mounts.value is not None else _param(param, "MOUNT_UNDER_SCRATCH")
    for directory in split_list(mount_text):
        args += ["-S", directory]
        knob_args.append(("MOUNT_UNDER_SCRATCH", "-S " + directory))

    if v >= LAUNCHER_KNOB and _is_bool(_param(param, "SINGULARITY_USE_LAUNCHER")):
        bind = f"{_param(param, 'LIBEXEC')}/{LAUNCHER}:/{LAUNCHER}"
        args += ["-B", bind]
        knob_args.append(("SINGULARITY_USE_LAUNCHER", "-B " + bind))

    args += ["-W", scratch]
    target = (param("SINGULARITY_TARGET_DIR") or "").strip()
    bind_spec = slot_dir
    if target:
        pwd = target + scratch[len(slot_dir):] if v >= NESTED_SCRATCH else target
        args += ["--pwd", pwd]
        bind_spec += ":" + target
        knob_args.append(("SINGULARITY_TARGET_DIR", f"--pwd {pwd} -B {bind_spec}"))
    else:
        args += ["--pwd", scratch]
    args += ["-B", bind_spec]

    extra_binds: List[str] = []
    if slot.gpus:
        if is_dir(OPENCL_VENDORS):
            extra_binds.append(OPENCL_VENDORS)
        if v < GPU_DRIVER_FACTS or slot.nvidia_driver:
            args.append("--nv")
            knob_args.append(("GPU", "--nv"))
        if v >= ROCM_FLAG:
            default_rocm = "false" if v >= GPU_DRIVER_FACTS else "true"
            flag = _is_bool(param("SINGULARITY_ADD_ROCM_FLAG") or default_rocm)
            if (v >= GPU_DRIVER_FACTS and slot.rocm) or flag:
                args.append("--rocm")
                knob_args.append(("SINGULARITY_ADD_ROCM_FLAG", "--rocm"))

    skipped: List[str] = []
    bind_value = _param(param, "SINGULARITY_BIND_EXPR")
    binds = evaluate_string(bind_value)
    if binds.job_dependent and (param("SINGULARITY_BIND_EXPR") or "").strip():
        untestable.append(f"SINGULARITY_BIND_EXPR: {bind_value} is an expression of the job ad")
    if binds.value is not None:
        listed = split_list(binds.value)
        listed += [b for b in extra_binds if b not in listed]
        ignore_missing_target = _is_bool(param("SINGULARITY_IGNORE_MISSING_BIND_TARGET") or "false")
        for bind in listed:
            if not exists(bind.split(":", 1)[0]):
                skipped.append(bind)
                continue
            if ignore_missing_target and is_dir(image):
                inside = bind.split(":")[1] if ":" in bind else bind
                if not is_dir(image + "/" + inside):
                    skipped.append(bind)
                    continue
            args += ["-B", bind]
            knob_args.append(("SINGULARITY_BIND_EXPR", "-B " + bind))

    args += ["--home", scratch]

    pidns = _is_bool(_param(param, "SINGULARITY_USE_PID_NAMESPACES"))
    if pidns is False:
        args += ["--contain", "--ipc", "--cleanenv"]
        knob_args.append(("SINGULARITY_USE_PID_NAMESPACES", "--contain --ipc --cleanenv"))
    else:
        args.append("-C")

    extra_text = (param("SINGULARITY_EXTRA_ARGUMENTS") or "").strip()
    if extra_text:
        extra = evaluate_string(extra_text)
        if extra.job_dependent:
            untestable.append("SINGULARITY_EXTRA_ARGUMENTS: an expression of the job ad")
        else:
            text = extra.value if extra.value is not None else extra_text
            for arg in split_args(text):
                args.append(arg)
            knob_args.append(("SINGULARITY_EXTRA_ARGUMENTS", text))

    return StarterLaunch(tuple(args), image, starter_env(scratch, v, apptainer, slot.name), slot_dir, scratch,
                         pidns, tuple(untestable), tuple(skipped), tuple(knob_args))


def starter_env(scratch: str, version: Tuple[int, int], apptainer: bool = True, slot_name: str = "") -> Dict[str, str]:
    """The variables the starter gives the runtime (starter.cpp, then
    Singularity::setup, then convertEnv's APPTAINERENV_ copies into the container)."""
    prefix = "APPTAINER" if apptainer else "SINGULARITY"
    env = {"_CONDOR_SCRATCH_DIR": scratch, "TMPDIR": scratch, "TEMP": scratch, "TMP": scratch}
    if version < ENV_STRIPPED:     # from 25.14 setup strips them before setting its own
        env.update(APPTAINER_CACHEDIR=scratch, SINGULARITY_CACHEDIR=scratch)
    env[prefix + "_CACHEDIR"] = scratch
    env[prefix + ("_TMPDIR" if version >= TMPDIR_FIXED else "_TEMPDIR")] = scratch
    passed = {prefix + "ENV_" + name: value for name, value in env.items()}
    env.update(passed)
    if version >= TMPDIR_FIXED:
        env[prefix + "ENV_PS1"] = slot_name + "$ "
    return env


def runtime_environment(base: Mapping[str, str], launch: StarterLaunch, version: Tuple[int, ...] = ()) -> Dict[str, str]:
    """Our environment as the job's would be for the runtime: without HOME and
    without the APPTAINER_*/SINGULARITY_* variables that would reconfigure the
    launch (the starter removes them), plus what the starter sets."""
    env = {name: value for name, value in base.items()
           if name != "HOME" and not name.startswith(("APPTAINER_", "SINGULARITY_", "APPTAINERENV_",
                                                       "SINGULARITYENV_"))}
    env.update(launch.env)
    return env
