"""The heavy part of the benchmarks probe, run as a child process:

    python -I _bench_worker.py db12|matmul|memory '<json arguments>'

(or its source with -c from a zipapp: system/programs.py). It prints one
JSON line: raw timings, never judged figures (probes/benchmarks.py turns them
into scores). Self-contained on purpose (standard library only, numpy imported
only by the numpy benchmarks): it runs with -I, so neither the caller's
PYTHON* variables nor its current directory can change what it measures, and the probe's runner can kill its whole process group (copies
are forked children, in the same group) when the budget runs out.

Every benchmark gets a measuring time (`measure_seconds`) and a hard
deadline (`seconds` from its start, before the caller kills it). The
measuring window opens when the benchmark is READY (numpy imported, arrays
written: start-up costs that took 0.2 to 6 s on a loaded 2-core VM, which
backs fresh memory lazily) and all its copies together; it closes
`measure_seconds` later, never after the hard deadline. Each benchmark plans
its work to end before the window closes; one that cannot fit says so
instead of overrunning. Times are on CLOCK_MONOTONIC (system-wide, so forked
copies share them).
"""

import json
import os
import platform
import random
import sys
import time

WARMUP_SLICES = 50      # the (unmeasured) DB12 warm-up pass checks the deadline this often
MIN_WINDOW_FRACTION = 0.5   # getting ready left less than this of the measuring time: say so, do not measure


class Window:
    """The measuring window of one benchmark: opened once it is ready."""

    def __init__(self, measure_seconds, deadline):
        self.measure_seconds = measure_seconds
        self.deadline = deadline      # hard: the caller kills the worker soon after
        # what measuring could get when nothing needs getting ready (DB12): a
        # deadline shorter than the measuring time is the caller's budget, and
        # the benchmark plans within it
        self.planned = min(measure_seconds, deadline - time.monotonic())
        self.opened = None

    def open(self):
        """-> when measuring must end; or raises TooLate when getting ready took the time."""
        self.opened = time.monotonic()
        end = min(self.opened + self.measure_seconds, self.deadline)
        if end - self.opened < MIN_WINDOW_FRACTION * self.planned:
            raise TooLate("getting ready (start-up, numpy import, writing the arrays) left %.1fs of the %.1fs "
                          "planned for measuring" % (max(0.0, end - self.opened), self.planned))
        return end


class TooLate(Exception):
    pass


# ---------------------------------------------------------------- copies

def run_copies(copies, prepare, measure, window):
    """Run prepare() then measure(state, end) in `copies` forked children.

    All children prepare (imports, allocations) first; the window opens once
    every one is ready, and measure() starts in all of them together, so that
    whole-node figures are taken with every core busy and getting ready is
    not measuring time. Returns one dict per copy.
    """
    if copies == 1:
        try:
            state = prepare()
            return [measure(state, window.open())]
        except Exception as exc:  # reported, not raised: the parent prints JSON
            return [{"error": "%s" % exc if isinstance(exc, TooLate) else "%s: %s" % (type(exc).__name__, exc)}]
    children = []
    for _ in range(copies):
        ready_r, ready_w = os.pipe()
        go_r, go_w = os.pipe()
        out_r, out_w = os.pipe()
        pid = os.fork()
        if pid == 0:  # child: prepare, say ready, wait for go, measure, report
            code = 0
            try:
                for fd in (ready_r, go_w, out_r):
                    os.close(fd)
                try:
                    state = prepare()
                    os.write(ready_w, b"r")
                    end = os.read(go_r, 64)  # the window's end, or nothing: too late to measure
                    result = measure(state, float(end)) if end else {"error": "no measuring window"}
                except Exception as exc:
                    os.write(ready_w, b"r")
                    result = {"error": "%s: %s" % (type(exc).__name__, exc)}
                data = json.dumps(result).encode()
                while data:
                    data = data[os.write(out_w, data):]
            except BaseException:
                code = 1
            finally:
                os._exit(code)
        for fd in (ready_w, go_r, out_w):
            os.close(fd)
        children.append((pid, ready_r, go_w, out_r))
    for _, ready_r, _, _ in children:
        os.read(ready_r, 1)
    try:
        go, too_late = repr(window.open()).encode(), None
    except TooLate as exc:
        go, too_late = b"", {"error": str(exc)}
    for _, _, go_w, _ in children:
        try:
            os.write(go_w, go)
        except OSError:  # a copy that failed to prepare has gone already
            pass
        os.close(go_w)
    results = []
    for pid, ready_r, go_w, out_r in children:
        chunks = []
        while True:
            chunk = os.read(out_r, 65536)
            if not chunk:
                break
            chunks.append(chunk)
        for fd in (ready_r, out_r):
            os.close(fd)
        _, status = os.waitpid(pid, 0)
        try:
            results.append(json.loads(b"".join(chunks).decode()))
        except ValueError:
            results.append({"error": "copy %d ended without a result (wait status %d)" % (pid, status)})
    return [too_late] * copies if too_late else results


def cpu_seconds():
    """user + system CPU seconds of this process and its reaped children:
    the quantity DB12 reads with os.times(), at getrusage's finer resolution."""
    import resource
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


# ---------------------------------------------------------------- DB12

def db12_pass(draws):
    """One DB12 pass. DB12 keeps two identical pairs of running sums (its
    m_1/m_2 and p_1/p_2): that work per draw is part of what the score
    is calibrated on, so it is done here too, with the same calls (the
    module attribute random.normalvariate, looked up at each draw)."""
    total = squares = total2 = squares2 = 0
    for _ in range(draws):
        value = random.normalvariate(10, 1)
        total += value
        squares += value * value
        total2 += value
        squares2 += value * value
    return total, squares


def db12_copy(draws, passes, deadline):
    """Pass 0 warms up (CPUs with variable speed) and is not measured; then
    `passes` measured passes. The warm-up pass runs in slices, so that a copy
    that cannot end before the deadline says so early instead of overrunning.
    What is left is planned at the MEDIAN slice time: on a loaded node one
    stall in the first slices made the pass look 3 times slower than it was
    (and the run refuse a budget it fitted); time already spent counts as spent."""
    started = time.monotonic()
    slices = []
    for index in range(WARMUP_SLICES):
        size = draws // WARMUP_SLICES + (1 if index < draws % WARMUP_SLICES else 0)
        t0 = time.monotonic()
        db12_pass(size)
        now = time.monotonic()
        slices.append(now - t0)
        if index >= 2:
            per_pass = sorted(slices)[len(slices) // 2] * WARMUP_SLICES
            left = per_pass * ((WARMUP_SLICES - 1 - index) / WARMUP_SLICES + passes)
            if now + left * 1.05 > deadline:
                return {"error": "a DB12 pass takes about %.1fs here: the warm-up and %d measured pass%s do not "
                                 "fit in the %.1fs budget" % (per_pass, passes, "" if passes == 1 else "es",
                                                              deadline - started)}
    warmup = time.monotonic() - started
    cpu0, wall0 = cpu_seconds(), time.monotonic()
    for _ in range(passes):
        db12_pass(draws)
    return {"cpu_seconds": cpu_seconds() - cpu0, "wall_seconds": time.monotonic() - wall0,
            "warmup_seconds": warmup}


def bench_db12(args, window):
    results = run_copies(args["copies"], lambda: None,
                         lambda _, end: db12_copy(args["draws"], args["passes"], end), window)
    return {"copies": results}


# ---------------------------------------------------------------- numpy

def import_numpy():
    """numpy, or an ImportError that says what to do: a pilot's Python may lack it."""
    try:
        import numpy
    except ImportError:
        raise ImportError("numpy is not installed for %s%s: install it, or set STARTD_HEALTH_BENCHMARKS_RUN = db12 "
                          "(DB12 needs nothing but Python)" % (sys.executable, " -S" if sys.flags.no_site else "")
                          ) from None
    return numpy


def blas_info(np):
    """What BLAS numpy uses: its build configuration, the library really
    mapped into this process, and threadpoolctl's view when installed."""
    import re
    import warnings
    info = {"numpy": np.__version__}
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            config = np.show_config(mode="dicts")["Build Dependencies"]["blas"]
        info["name"] = str(config.get("name", ""))
        info["version"] = str(config.get("version", ""))
    except Exception:  # numpy < 1.26: no mode="dicts"
        legacy = getattr(getattr(np, "__config__", None), "blas_opt_info", None) or {}
        info["name"] = ",".join(legacy.get("libraries", [])) if isinstance(legacy, dict) else ""
    try:
        with open("/proc/self/maps") as handle:
            paths = sorted({line.split()[-1] for line in handle
                            if re.search(r"/lib[^/]*(blas|mkl_rt|mkl_core|blis|flexiblas)[^/]*\.so", line)})
        info["libraries"] = paths
    except OSError:
        info["libraries"] = []
    try:
        from threadpoolctl import threadpool_info
        for pool in threadpool_info():
            if pool.get("user_api") == "blas":
                info["threadpoolctl"] = {k: pool.get(k) for k in ("internal_api", "version", "num_threads",
                                                                   "threading_layer", "filepath")}
                break
    except Exception:  # not installed, or it could not inspect this BLAS
        pass
    return info


MATMUL_MIN_N, MATMUL_MAX_N = 256, 2048


def bench_matmul(args, window):
    """Best time of an n x n float64 matrix product (numpy.matmul into a
    preallocated output). n grows from 256 (doubling, at most 2048) while a
    product takes under a twentieth of the time left, so that a slow BLAS
    still gets several repetitions inside the budget. Getting ready (numpy,
    the BLAS description, which may import threadpoolctl) is done first."""
    np = import_numpy()
    blas = blas_info(np)
    try:
        deadline = window.open()
    except TooLate as exc:
        return {"error": str(exc)}
    rng = np.random.default_rng(12)
    n = MATMUL_MIN_N
    while True:
        a, b = rng.random((n, n)), rng.random((n, n))
        out = np.empty((n, n))
        t0 = time.perf_counter()
        np.matmul(a, b, out=out)
        took = time.perf_counter() - t0
        if n >= MATMUL_MAX_N or took * 8 > (deadline - time.monotonic()) / 20:
            break
        n *= 2
    best, reps = took, 1
    while time.monotonic() + best * 1.5 < deadline:
        t0 = time.perf_counter()
        np.matmul(a, b, out=out)
        best = min(best, time.perf_counter() - t0)
        reps += 1
    return {"n": n, "best_seconds": best, "reps": reps, "threads": args["threads"], "blas": blas}


def memory_prepare(array_mib):
    np = import_numpy()
    n = max(1, int(array_mib * 1024 * 1024) // 8)
    # np.full writes every page now: no page faults inside the timed loops
    return np, np.full(n, 1.0), np.full(n, 2.0), np.full(n, 0.5)


def memory_measure(state, deadline):
    """STREAM copy (c = a) and triad (a = b + q*c) with no numpy temporaries:
    np.copyto, then np.multiply/np.add writing into the output array. The
    first half of the time left runs copy, the second triad; with several
    copies the phases coincide (one shared deadline), so their rates add up."""
    np, a, b, c = state
    start = time.monotonic()
    switch = start + (deadline - start) / 2
    phases = {}
    for name, end in (("copy", switch), ("triad", deadline)):
        best, total, reps, last = float("inf"), 0.0, 0, 0.0
        while reps == 0 or time.monotonic() + last * 1.2 < end:
            t0 = time.perf_counter()
            if name == "copy":
                np.copyto(c, a)
            else:
                np.multiply(c, 3.0, out=a)
                np.add(a, b, out=a)
            last = time.perf_counter() - t0
            best, total, reps = min(best, last), total + last, reps + 1
        phases[name] = {"best_seconds": best, "total_seconds": total, "reps": reps}
    phases["array_bytes"] = int(a.nbytes)
    return phases


def bench_memory(args, window):
    results = run_copies(args["copies"], lambda: memory_prepare(args["array_mib"]), memory_measure, window)
    return {"copies": results}


BENCHMARKS = {"db12": bench_db12, "matmul": bench_matmul, "memory": bench_memory}


def main(argv):
    started = time.monotonic()
    name, args = argv[1], json.loads(argv[2])
    deadline = started + float(args["seconds"])
    window = Window(float(args.get("measure_seconds", args["seconds"])), deadline)
    try:
        result = BENCHMARKS[name](args, window)
    except Exception as exc:
        result = {"error": "%s: %s" % (type(exc).__name__, exc)}
    result["python"] = "%s %s" % (platform.python_implementation(), platform.python_version())
    result["elapsed_seconds"] = time.monotonic() - started
    if window.opened is not None:  # how long getting ready took, from this script's start
        result["ready_seconds"] = window.opened - started
    sys.stdout.write(json.dumps(result) + "\n")
    sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
