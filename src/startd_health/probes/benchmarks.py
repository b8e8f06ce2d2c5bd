"""CPU benchmarks that mean something: a DB12-compatible score, matrix-product
FLOP/s and STREAM-style memory bandwidth, each for one core and for the
whole node.

On demand only (``periodic = False``): HTCondor runs `startd-health
benchmark` from BENCHMARKS_JOBLIST when the startd finds the node idle
(packaging/condor/52-startd-health-benchmarks.conf); the periodic cron
never runs it, it re-publishes the cached result with its age. A benchmark
is a measurement, not a health check: its result never counts for the
node's verdict.

Gather: each benchmark and mode runs in a child process (probes/_bench_worker.py,
through ctx.run, so the runner's budget and process-group kill apply) that
prints raw timings. Judge (pure): timings -> scores, facts and a reason.

DB12 is DIRAC Benchmark 2012 as the DB12 package computes it (checked
against it by benchmarks/db12_compare.py): per pass 12.5 M
random.normalvariate(10, 1) draws accumulated into sums and sums of
squares; pass 0 is a discarded warm-up; score = 250 x passes / CPU seconds
(user + system, children included). The raw score is published, without the
package's optional Python-2-equivalence factor (known only for Python 3.9);
it depends on the Python version and the CPU, which are published with it.
numpy is imported only by the worker, never by this module: the periodic
cron stays cheap.
"""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import dataclass, field
from typing import Any, Dict, Iterator, List, Mapping, Sequence, Tuple

from startd_health.core.config import Count, Knob, parse_bool, parse_list, parse_positive_seconds
from startd_health.core.model import Measurement, Probe, ProbeContext, ProbeResult, Status
from startd_health.system import procfs
from startd_health.system.procs import last_line
from startd_health.system.programs import python_argv

WORKER = "_bench_worker.py"   # in this package; run as a program (system/programs.py), also from a zipapp
KINDS = ("db12", "matmul", "memory")
MODES = ("single", "wholenode")
DB12_DRAWS = 12_500_000     # per pass; one pass = 1 kHS2k.s = 250 HS06.s (DB12's calibration)
DB12_CALIBRATION = 250.0
FAST_DB12_FRACTION = 10     # fast mode: passes of 1/10 the draws, scaled back to DB12 units
FAST_SECONDS = 2.0          # fast mode: matmul and memory measure for at most this long each
MIN_COPY_ARRAY_MIB = 16     # whole-node memory copies: each array at least this big (past per-core caches)
WORKER_SLACK = 0.5          # seconds a worker keeps in hand for its start-up and report
# Getting a numpy worker ready (interpreter, numpy import, writing the memory
# arrays) is not measuring time and comes on top of the budget: measured
# 0.2 to 6 s for 3 x 128 MiB on a loaded 2-core VM (fresh memory is backed
# lazily), where counting it in fast mode's 1 s share timed the run out.
# A bound for a worker that never gets ready, not an expected duration.
READY_SECONDS = {"db12": 0.0, "matmul": 30.0, "memory": 30.0}
BLAS_THREAD_VARIABLES = ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS", "BLIS_NUM_THREADS",
                         "VECLIB_MAXIMUM_THREADS", "NUMEXPR_NUM_THREADS")


def parse_kinds(text: str) -> Tuple[str, ...]:
    kinds = parse_list(text)
    if not kinds:
        raise ValueError(f"names no benchmark (known: {', '.join(KINDS)})")
    unknown = [k for k in kinds if k not in KINDS]
    if unknown:
        raise ValueError(f"unknown benchmark {', '.join(unknown)} (known: {', '.join(KINDS)})")
    return tuple(k for k in KINDS if k in kinds)


# ---------------------------------------------------------------- normalisation (pure)

def db12_score(cpu_seconds: float, passes: int, draws: int = DB12_DRAWS) -> float:
    """DB12 units: 250 per 12.5 M-draw pass per CPU second (fewer draws per pass scale linearly)."""
    if cpu_seconds <= 0:
        return math.nan
    return DB12_CALIBRATION * passes * (draws / DB12_DRAWS) / cpu_seconds


def db12_median(scores: Sequence[float]) -> float:
    """DB12's multi-copy median: the lower middle value of the sorted scores."""
    ordered = sorted(scores)
    return ordered[(len(ordered) - 1) // 2]


def matmul_flops(n: int, seconds: float) -> float:
    """FLOP/s of one n x n by n x n product (2 n^3 operations, the usual count)."""
    return 2.0 * n ** 3 / seconds if seconds > 0 else math.nan


STREAM_ARRAYS = {"copy": 2, "triad": 3}   # arrays STREAM counts as moved per element: c=a; a=b+q*c


def stream_rate(kind: str, array_bytes: int, seconds: float, reps: int = 1) -> float:
    """Bytes per second, counted as STREAM does (copy 2, triad 3 arrays per repetition)."""
    return STREAM_ARRAYS[kind] * array_bytes * reps / seconds if seconds > 0 else math.nan


# ---------------------------------------------------------------- gather

@dataclass(frozen=True)
class Gathered:
    cpu_model: str
    cpus: int                 # copies / threads for the whole-node runs
    fast: bool
    passes: int
    draws: int
    # (kind, mode) -> the worker's JSON, or {"error": why}; absent: not run
    runs: Mapping[Tuple[str, str], Mapping[str, Any]] = field(default_factory=dict)
    python: str = ""          # the interpreter the workers run (sys.executable): "CPython 3.13.5"


def cpu_model(cpuinfo: str) -> str:
    """'model name' (x86), else 'Model'/'Processor'/'cpu' lines other architectures use."""
    for key in ("model name", "Model", "Processor", "cpu"):
        for line in cpuinfo.splitlines():
            name, sep, value = line.partition(":")
            if sep and name.strip() == key and value.strip():
                return " ".join(value.split())
    return ""


def usable_cpus() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def worker_argv(kind: str, args: Mapping[str, Any]) -> List[str]:
    # Our own interpreter; with site-packages for numpy, unless we run without them
    # (a pilot's `python3 -S`: then the numpy benchmarks say numpy is missing).
    return python_argv(__package__, WORKER, kind, json.dumps(args), site_packages=True)


def worker(ctx: ProbeContext, kind: str, args: Mapping[str, Any], seconds: float,
           threads: int = 1) -> Mapping[str, Any]:
    """Run one benchmark child with `seconds` of budget (it plans to end WORKER_SLACK earlier)."""
    seconds = min(seconds, ctx.remaining())
    if seconds <= WORKER_SLACK:
        return {"error": "no time left in the budget"}
    env = dict(os.environ, **{name: str(threads) for name in BLAS_THREAD_VARIABLES})
    argv = worker_argv(kind, dict(args, seconds=seconds - WORKER_SLACK))
    result = ctx.run(argv, timeout=seconds, env=env)
    if not result.ok:
        return {"error": result.describe_failure()}
    try:
        data = json.loads(last_line(result.stdout))
    except ValueError:
        return {"error": f"worker printed no result: {last_line(result.stdout)[:200]!r}"}
    return data if isinstance(data, dict) else {"error": "worker printed no result"}


def gather(ctx: ProbeContext) -> Gathered:
    s = ctx.settings
    fast = s["fast"]
    model = cpu_model(procfs.read_text(ctx.system_root, "proc/cpuinfo") or "")
    cpus = usable_cpus()
    draws = DB12_DRAWS // FAST_DB12_FRACTION if fast else DB12_DRAWS
    runs: Dict[Tuple[str, str], Mapping[str, Any]] = {}
    for kind in s["run"]:
        budget = min(s[f"{kind}_seconds"], FAST_SECONDS) if fast and kind != "db12" else s[f"{kind}_seconds"]
        # Measuring time: one core gets half the budget, the whole node at
        # least the other half (more when the one-core run ended early).
        ends = time.monotonic() + budget
        for mode in MODES:
            if mode == "wholenode" and cpus == 1:   # the whole node is one core: the same run
                runs[(kind, mode)] = runs[(kind, "single")]
                continue
            copies = 1 if mode == "single" else cpus
            share = budget / 2 if mode == "single" else max(budget / 2, ends - time.monotonic())
            if kind == "db12":
                args: Dict[str, Any] = {"copies": copies, "draws": draws, "passes": s["db12_passes"]}
            elif kind == "matmul":
                args = {"threads": copies}
            else:   # the copies share the array size, each keeping at least MIN_COPY_ARRAY_MIB
                args = {"copies": copies, "array_mib": s["memory_array_mib"] if copies == 1
                        else max(MIN_COPY_ARRAY_MIB, s["memory_array_mib"] / copies)}
            args["measure_seconds"] = share
            runs[(kind, mode)] = worker(ctx, kind, args, share + READY_SECONDS[kind] + WORKER_SLACK,
                                        threads=copies if kind == "matmul" else 1)
    import platform   # here, not at module level: the periodic cron imports this module
    python = f"{platform.python_implementation()} {platform.python_version()}"
    return Gathered(model, cpus, fast, s["db12_passes"], draws, runs, python)


# ---------------------------------------------------------------- judge

def _copies(run: Mapping[str, Any]) -> Tuple[List[Mapping[str, Any]], str]:
    """The copies' results, or an error naming the first copy that failed."""
    if "error" in run:
        return [], str(run["error"])
    copies = list(run.get("copies", ()))
    if not copies:
        return [], "no result"
    for copy in copies:
        if "error" in copy:
            return [], str(copy["error"])
    return copies, ""


def _measured_copies(g: "Gathered", kind: str, errors: List[str]) -> Iterator[Tuple[str, List[Mapping[str, Any]]]]:
    """(mode, copies) of each mode of ``kind`` that ran and succeeded; the
    failed ones are named in ``errors``."""
    for mode in MODES:
        run = g.runs.get((kind, mode))
        if run is None:
            continue
        copies, error = _copies(run)
        if error:
            errors.append(f"{kind} {mode}: {error}")
            continue
        yield mode, copies


def _gb(rate: float) -> str:
    return f"{rate / 1e9:.1f}"


def join_errors(errors: Sequence[str]) -> str:
    """'matmul single: X; memory single: X' -> 'matmul single, memory single: X': one cause said once."""
    grouped: Dict[str, List[str]] = {}
    for error in errors:
        label, _, text = error.partition(": ")
        grouped.setdefault(text, []).append(label)
    return "; ".join(f"{', '.join(labels)}: {text}" for text, labels in grouped.items())


def judge(g: Gathered) -> ProbeResult:
    facts: Dict[str, Any] = {"cpu_model": g.cpu_model, "cpus": g.cpus, "fast": g.fast}
    measurements: List[Measurement] = []
    errors: List[str] = []
    parts: List[str] = []
    # The workers report the interpreter they ran on (the same as ours: sys.executable).
    facts["python"] = next((str(r["python"]) for r in g.runs.values() if r.get("python")), g.python or "unknown")

    db12 = {}
    for mode, copies in _measured_copies(g, "db12", errors):
        scores = [db12_score(float(c["cpu_seconds"]), g.passes, g.draws) for c in copies]
        if not all(math.isfinite(x) for x in scores):
            errors.append(f"db12 {mode}: no CPU time measured")
            continue
        db12[mode] = sum(scores) / len(scores)
        measurements.append(Measurement("db12", round(db12[mode], 3), "score", {"mode": mode}))
        if mode == "wholenode":
            measurements.append(Measurement("db12_median", round(db12_median(scores), 3), "score", {"mode": mode}))
    if db12:
        parts.append("DB12 " + ", ".join(
            f"{db12[m]:.1f}" + (" single" if m == "single" else f" per core x {g.cpus}") for m in db12))

    flops = {}
    for mode in MODES:
        run = g.runs.get(("matmul", mode))
        if run is None:
            continue
        if "error" in run:
            errors.append(f"matmul {mode}: {run['error']}")
            continue
        flops[mode] = matmul_flops(int(run["n"]), float(run["best_seconds"]))
        measurements.append(Measurement("matmul", float(round(flops[mode])), "flops", {"mode": mode}))
        blas = run.get("blas") or {}
        facts["numpy"] = str(blas.get("numpy", ""))
        described = " ".join(x for x in (blas.get("name"), blas.get("version")) if x)
        pool = blas.get("threadpoolctl") or {}
        if pool:
            described = " ".join(str(x) for x in (pool.get("internal_api"), pool.get("version"),
                                                  f"({pool.get('threading_layer')})") if x)
        facts["blas"] = described or "unknown"
        facts["blas_library"] = ", ".join(blas.get("libraries") or ()) or "unknown"
    if flops:
        parts.append("matmul " + ", ".join(
            f"{flops[m] / 1e9:.1f}" + (" GFLOPS 1 thread" if m == "single" else f" GFLOPS {g.cpus} threads")
            for m in flops) + (f" ({facts['blas']})" if facts.get("blas") else ""))

    memory: Dict[str, Tuple[float, float]] = {}
    for mode, copies in _measured_copies(g, "memory", errors):
        rates = []
        for kind in ("copy", "triad"):
            if mode == "single":   # STREAM's convention: the best repetition
                c = copies[0]
                rate = stream_rate(kind, int(c["array_bytes"]), float(c[kind]["best_seconds"]))
            else:                  # copies ran together: add up each one's mean rate over the phase
                rate = sum(stream_rate(kind, int(c["array_bytes"]), float(c[kind]["total_seconds"]),
                                       int(c[kind]["reps"])) for c in copies)
            rates.append(rate)
            measurements.append(Measurement(f"memory_{kind}", float(round(rate)), "bytes_per_second", {"mode": mode}))
        memory[mode] = (rates[0], rates[1])
    if memory:
        parts.append("memory copy/triad " + ", ".join(
            f"{_gb(memory[m][0])}/{_gb(memory[m][1])} GB/s" + (" 1 core" if m == "single" else f" {g.cpus} cores")
            for m in memory))

    what = "; ".join(parts)
    where = f"{facts['python']} on {g.cpu_model or 'unknown CPU'}" + (", fast mode" if g.fast else "")
    if not g.runs:
        return ProbeResult("benchmarks", Status.SKIPPED, "no benchmark selected (STARTD_HEALTH_BENCHMARKS_RUN)",
                           facts)
    if not errors:
        return ProbeResult("benchmarks", Status.OK, f"{what}; {where}", facts, tuple(measurements))
    status = Status.DEGRADED if measurements else Status.FAILED
    reason = join_errors(errors) + (f"; measured: {what}" if what else "") + f"; {where}"
    return ProbeResult("benchmarks", status, reason, facts, tuple(measurements))


class BenchmarksProbe(Probe):
    name = "benchmarks"
    description = ("on demand (`startd-health benchmark`, HTCondor BENCHMARKS): DB12 score, matrix-product "
                   "FLOP/s, memory bandwidth, for one core and the whole node")
    enabled_by_default = False   # never part of the periodic run ...
    periodic = False             # ... which re-publishes the cached result instead
    default_period = 4 * 3600.0  # `benchmark` re-uses a result younger than this (unless --force)
    default_timeout = 300.0
    knobs = (
        Knob("BENCHMARKS_RUN", parse_kinds, KINDS, "benchmarks `startd-health benchmark` runs: db12, matmul, "
             "memory", "LIST"),
        Knob("BENCHMARKS_FAST", parse_bool, False, "short mode for frequent runs: DB12 passes of 1/10 the draws "
             "(still in DB12 units, noisier), matmul and memory measure for at most 2 s each", "BOOL"),
        Knob("BENCHMARKS_DB12_PASSES", Count(1, 1000), 1, "measured DB12 passes per copy (after the "
             "discarded warm-up pass), as DB12's --iterations", "N"),
        Knob("BENCHMARKS_DB12_SECONDS", parse_positive_seconds, 180.0, "budget for DB12, one copy then one "
             "copy per core; a run that cannot fit says so", "SECONDS"),
        Knob("BENCHMARKS_MATMUL_SECONDS", parse_positive_seconds, 20.0, "measuring time for the matrix product, "
             "one thread then one BLAS thread per core (getting ready comes on top)", "SECONDS"),
        Knob("BENCHMARKS_MEMORY_SECONDS", parse_positive_seconds, 20.0, "measuring time for memory bandwidth, "
             "one core then one copy per core (getting ready, writing the arrays, comes on top)", "SECONDS"),
        Knob("BENCHMARKS_MEMORY_ARRAY_MIB", Count(1, 65536), 128, "size (MiB) of each of the three arrays "
             "of the one-core memory run; the whole-node copies share it, each at least 16: keep it well above "
             "the CPU caches", "MIB"),
    )

    def run(self, ctx: ProbeContext) -> ProbeResult:
        return judge(gather(ctx))
