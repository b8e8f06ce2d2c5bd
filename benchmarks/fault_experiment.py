#!/usr/bin/env python3
"""Fault-injected multi-node pool: does any job land on a node the probes know is broken?

One REAL HTCondor personal pool (RealPool("sid", instance="faults"): HTCondor
25.14, Apptainer 1.4.5) with several execute nodes, each a condor_startd of
its own with its own configuration and its own view of /opt/site and /cvmfs
(tests/realpool/multinode.py). Most nodes carry one injected fault. A batch
of short container jobs (each needs the site image and `cat`s a file from the
simulated CVMFS repository; a few request a GPU) is submitted as the
unprivileged user `tester`, once per configuration:

  baseline       HTCondor's built-in protection only (the startd's own
                 Apptainer self-test at start-up, SINGULARITY_RUN_TEST_BEFORE_JOB)
  startd-health  the project's packaging: 50-startd-health.conf,
                 51-startd-health-healthexprs.conf (25.x) and the pre-job hook
                 53-startd-health-hook.conf, with a short cron period
  startd-health-pinned  the same, with STARTD_HEALTH_CONTAINER_RUNTIME
                 = $(SINGULARITY): the probe tests exactly the runtime HTCondor uses

For each run: every node starts healthy (and, with startd-health, is seen
healthy); all faults are injected at once; the experiment watches each node's
gate (the slot's own Requirements, evaluated by the real ClassAd library
against the batch's job ad, with the slot's resources restored so that a busy
node does not count as refusing) until every faulty node refuses or
--detect-timeout passes; then the batch is submitted and run until it is done
or --batch-timeout passes, or only held jobs and jobs stuck running are left
(what is left is removed); then every fault is
repaired and the gates are watched until every node accepts again.

Counted: jobs that landed on each faulty node (claim activations in that
node's StartLog: every attempt to run a job there), jobs that ended held or
failed (non-zero exit), jobs not done by the deadline, and per node the time
from injection to refusing and from repair to accepting. Leftover processes:
per faulty node, the processes it started that outlived what started them
(MultiNodePool.leftover_processes), counted after each of its cron runs while
the fault lasts (the faults are kept for at least --leftover-runs runs); the
goal is no growth after the first run.

usage (as root; builds the root filesystem on first use):
  python3 benchmarks/fault_experiment.py [--configs baseline,startd-health,startd-health-pinned]
      [--jobs 110] [--gpu-jobs 10] [--batch-timeout 300] [--leftover-runs 10]
      [--nodes node1,node5] [--json results.json]
The host Python needs the htcondor bindings (htcondor2, classad2). About 3 minutes per
configuration on a 2-core machine; every pool is stopped and every FUSE mount removed at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import threading
import time
from collections import Counter, defaultdict
from typing import Any, Dict, List, Optional, Tuple

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
for _path in (REPO, os.path.join(REPO, "src")):  # tests.realpool; the package when not installed
    if _path not in sys.path:
        sys.path.insert(0, _path)

import classad2  # noqa: E402
import htcondor2  # noqa: E402

from tests.realpool.multinode import FAULT_HOW, IMAGE, REPO as CVMFS_REPO, MultiNodePool, NodeSpec  # noqa: E402
from tests.realpool.pool import RealPool  # noqa: E402

INSTANCE = "faults"

NODES = [
    NodeSpec("node1"),
    NodeSpec("node2"),
    NodeSpec("node3", fault="image_missing"),
    NodeSpec("node4", fault="image_corrupt"),
    NodeSpec("node5", fault="cvmfs_missing"),
    NodeSpec("node11", fault="cvmfs_hung"),
    NodeSpec("node6", fault="runtime_hang"),
    NodeSpec("node7", fault="runtime_absent"),
    NodeSpec("node8", fault="userns_refused"),
    NodeSpec("node9", cpus=1, gpus=1, gpu_only=True),
    NodeSpec("node10", fault="gpu_nv_broken", cpus=1, gpus=1, gpu_only=True),
]

CRON_PERIOD = 10
# The project's packaging with test-speed periods (the defaults are 300 s
# period, 150 s deadline, 30 s launch timeout: detection scales with them).
HEALTH_CONF = f"""\
STARTD_HEALTH_CRON = /opt/startd-health/venv/bin/startd-health-cron
# (older packaging named the hook's entry point separately; newer derives it from STARTD_HEALTH_CRON)
STARTD_HEALTH_HOOK = /opt/startd-health/venv/bin/startd-health
STARTD_HEALTH_CRON_PERIOD = {CRON_PERIOD}
STARTD_HEALTH_DEADLINE = {CRON_PERIOD - 1}
STARTD_HEALTH_CONTAINER_PERIOD = 1
STARTD_HEALTH_CVMFS_PERIOD = 1
STARTD_HEALTH_GPU_PERIOD = 1
# Every job here runs in a container: a container problem must close the node.
STARTD_HEALTH_CONTAINER_REQUIREMENT = REQUIRED
STARTD_HEALTH_CONTAINER_IMAGES = site={IMAGE}
STARTD_HEALTH_CONTAINER_FLAGS = --ipc --pid --contain --bind /cvmfs
STARTD_HEALTH_CONTAINER_BINDS = /cvmfs/{CVMFS_REPO}
STARTD_HEALTH_CONTAINER_LAUNCH_TIMEOUT = 5
STARTD_HEALTH_CVMFS_REPOSITORIES = {CVMFS_REPO}
STARTD_HEALTH_CVMFS_REPO_TIMEOUT = 5
# The 4 h quarantine would keep a repaired repository out for the rest of the run.
STARTD_HEALTH_CVMFS_QUARANTINE = 0
"""
PACKAGING = ("50-startd-health.conf", "51-startd-health-healthexprs.conf", "53-startd-health-hook.conf")
SNIPPETS = {"baseline": (), "startd-health": PACKAGING, "startd-health-pinned": PACKAGING}
# Variant: the runtime to test pinned to HTCondor's own SINGULARITY (by default
# the probe falls back to apptainer from PATH when SINGULARITY is not executable).
PINNED_CONF = "STARTD_HEALTH_CONTAINER_RUNTIME = $(SINGULARITY)\n"

JOB = f"""\
universe = container
container_image = {IMAGE}
transfer_container = false
executable = /bin/sh
transfer_executable = false
arguments = "-c 'cat /cvmfs/{CVMFS_REPO}/README && sleep 2'"
should_transfer_files = YES
request_cpus = 1
request_memory = 64
request_disk = 10240
log = batch.log
output = out/$(Cluster).$(Process).out
error = out/$(Cluster).$(Process).err
"""


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


class GateWatcher:
    """Polls every node's partitionable slot and records whether its gate
    (the slot's Requirements) accepts the batch's job ad."""

    def __init__(self, mpool: MultiNodePool, jobs: Dict[str, classad2.ClassAd], interval: float = 2.0) -> None:
        self.mpool = mpool
        self.jobs = jobs
        self.interval = interval
        self.samples: List[Tuple[float, Dict[str, bool], Dict[str, str]]] = []
        # node -> StartdHealthTimestamp values seen, with when first seen: one per cron run
        self.cron_runs: Dict[str, Dict[int, float]] = defaultdict(dict)
        # node -> [(when, cron runs since the faults, leftover processes)]
        self.leftovers: Dict[str, List[Tuple[float, int, List[str]]]] = defaultdict(list)
        self.count_leftovers_since: Optional[float] = None   # set at injection: start counting
        self.wall_offset = time.time() - time.monotonic()   # monotonic -> epoch
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="gate-watcher", daemon=True)
        self.errors = 0

    def start(self) -> "GateWatcher":
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(30)

    def sample(self) -> Tuple[Dict[str, bool], Dict[str, str]]:
        accepts, reasons = {}, {}
        for text in self.mpool.slot_ads():
            ad = classad2.parseOne(text)
            name = str(ad.get("Name", ""))
            node = name.split("@")[1] if name.count("@") >= 2 else ""
            spec = self.mpool.by_name.get(node)
            if spec is None:
                continue
            # As if the node were idle: a full node is busy, not refusing.
            for res in ("Cpus", "Memory", "Disk", "GPUs"):
                total = ad.get(f"TotalSlot{res}")
                if total is not None:
                    ad[res] = total
            job = self.jobs["gpu" if spec.gpu_only else "cpu"]
            accepts[node] = bool(job.matches(ad))
            stamp = ad.get("StartdHealthTimestamp")
            if isinstance(stamp, int):
                self.cron_runs[node].setdefault(stamp, time.monotonic())
            ok = ad.get("StartdHealthOk")
            if ok is not None:
                reasons[node] = "ok" if ok is True else str(ad.get("StartdHealthReason", ""))[:160]
        return accepts, reasons

    def _run(self) -> None:
        while not self._stop.is_set():
            t = time.monotonic()
            try:
                accepts, reasons = self.sample()
                self.samples.append((t, accepts, reasons))
                if self.count_leftovers_since is not None:
                    for spec in self.mpool.nodes:
                        if spec.fault:
                            self.leftovers[spec.name].append(
                                (t, self.runs_since(spec.name, self.count_leftovers_since),
                                 self.mpool.leftover_processes(spec.name)))
            except Exception as exc:   # a slow condor_status must not end the watch
                self.errors += 1
                log(f"gate watcher: {type(exc).__name__}: {exc}")
            self._stop.wait(max(0.0, self.interval - (time.monotonic() - t)))

    def runs_since(self, node: str, since: float) -> int:
        """Cron runs of the node that published after `since` (without
        startd-health: periods elapsed, as HTCondor alone runs no cron job)."""
        if node in self.cron_runs:
            return sum(1 for seen in self.cron_runs[node].values() if seen >= since)
        return int((time.monotonic() - since) // CRON_PERIOD)

    def latest(self) -> Dict[str, bool]:
        return self.samples[-1][1] if self.samples else {}

    def first(self, node: str, since: float, accepting: bool) -> Optional[float]:
        """Seconds from `since` to the first sample at or after it with the node in that state."""
        for t, accepts, _ in self.samples:
            if t >= since and accepts.get(node) is accepting:
                return t - since
        return None

    def wait(self, predicate, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        seen = len(self.samples)
        while time.monotonic() < deadline:
            if len(self.samples) > seen:
                seen = len(self.samples)
                if predicate(self.samples[-1][1]):
                    return True
            time.sleep(0.2)
        return False


def wait_until(predicate, timeout: float, interval: float = 2.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return False


def job_ads(pool: RealPool) -> Dict[str, classad2.ClassAd]:
    """The batch's job ads as condor_submit makes them (dry run), one CPU and one GPU job."""
    pool.write("/home/tester/probe.sub", JOB)
    ads = {}
    for kind, extra in (("cpu", []), ("gpu", ["-append", "request_gpus = 1"])):
        out = pool.sh(f"cd /home/tester && condor_submit -dry-run - probe.sub {' '.join(map(repr, extra))} "
                      f"-queue 1", user="tester").stdout
        text = out.split("\n", 1)[1] if out.startswith("Dry-Run") else out
        ads[kind] = classad2.parseOne(text)
    return ads


def submit_batch(pool: RealPool, cpu_jobs: int, gpu_jobs: int) -> List[int]:
    pool.write("/home/tester/batch.sub", JOB)
    pool.sh("cd /home/tester && rm -rf out batch.log && mkdir out", user="tester")
    clusters = []
    for n, extra in ((cpu_jobs, ""), (gpu_jobs, "-append 'request_gpus = 1'")):
        if n:
            out = pool.sh(f"cd /home/tester && condor_submit -terse batch.sub {extra} -queue {n}", user="tester").stdout
            clusters.append(int(out.split(".")[0]))
    return clusters


def queue_counts(pool: RealPool) -> Counter:
    return queue_state(pool, 0)[0]


def queue_state(pool: RealPool, stuck_after: float) -> Tuple[Counter, int]:
    """Jobs in the queue by JobStatus, and how many have been running longer than stuck_after."""
    out = pool.enter("condor_q", "-all", "-af", "JobStatus", "EnteredCurrentStatus", timeout=60).stdout
    counts: Counter = Counter()
    stuck, now = 0, time.time()
    for line in out.splitlines():
        status, entered = line.split()
        counts[int(status)] += 1
        if stuck_after and int(status) == 2 and now - int(entered) > stuck_after:
            stuck += 1
    return counts, stuck


def activations(mpool: MultiNodePool, spec: NodeSpec) -> List[Tuple[str, str]]:
    """(time, job id) of every claim activation in the node's StartLog: a job landing there."""
    path = mpool.start_log(spec.name)
    found = []
    try:
        with open(path, errors="replace") as handle:
            for line in handle:
                m = re.match(r"^(\S+ \S+) .*Remote job ID is (\d+\.\d+)", line)
                if m:
                    found.append((m.group(1), m.group(2)))
    except OSError:
        pass
    return found


def startlog_time(text: str) -> float:
    """'11/25/26 08:21:04' (the daemons' local time) -> epoch seconds."""
    return time.mktime(time.strptime(text, "%m/%d/%y %H:%M:%S"))


def job_outcomes(pool: RealPool) -> Dict[str, Dict[str, Any]]:
    """Per job (C.P): final state from the user log, and the nodes it executed on."""
    jobs: Dict[str, Dict[str, Any]] = defaultdict(lambda: {"executed_on": [], "state": "unfinished", "holds": 0,
                                                           "evictions": 0, "exceptions": 0})
    path = pool.path("/home/tester/batch.log")
    if not os.path.exists(path):
        return {}
    T = htcondor2.JobEventType
    for event in htcondor2.JobEventLog(path).events(stop_after=0):
        job = jobs[f"{event.cluster}.{event.proc}"]
        if event.type == T.EXECUTE:
            slot = str(event.get("SlotName", ""))
            job["executed_on"].append(slot.split("@")[1] if slot.count("@") >= 2 else slot)
        elif event.type == T.JOB_TERMINATED:
            normal = event.get("TerminatedNormally", True)
            code = event.get("ReturnValue", None)
            job["state"] = "ok" if normal and code == 0 else "failed"
            job["exit"] = code
        elif event.type == T.JOB_HELD:
            job["holds"] += 1
            job["state"] = "held"
            job["hold_reason"] = str(event.get("HoldReason", ""))[:200]
        elif event.type == T.JOB_RELEASED:
            job["state"] = "unfinished"
        elif event.type == T.JOB_EVICTED:
            job["evictions"] += 1
        elif event.type == T.SHADOW_EXCEPTION:
            job["exceptions"] += 1
        elif event.type == T.JOB_ABORTED:
            if job["state"] == "unfinished":
                job["state"] = "removed"
    return dict(jobs)


def run_config(config: str, args: argparse.Namespace, nodes: List[NodeSpec]) -> Dict[str, Any]:
    pool = RealPool("sid", instance=INSTANCE)
    mpool = MultiNodePool(pool, nodes)
    t_start = time.monotonic()
    log(f"=== {config}: building/reusing the root filesystem")
    pool.build()
    health = config.startswith("startd-health")
    if health:
        pool.install_project()
    mpool.prepare()
    extra = mpool.pool_config() + (HEALTH_CONF if health else "") + (PINNED_CONF if config.endswith("pinned") else "")
    pool.configure(*SNIPPETS[config], extra=extra)
    result: Dict[str, Any] = {"config": config, "nodes": {}}
    watcher: Optional[GateWatcher] = None
    try:
        mpool.start()
        names = pool.wait_for(lambda: (lambda n: n if len(n) == len(nodes) else None)(mpool.startd_names()), 90,
                              f"{len(nodes)} startds in condor_status")
        log(f"{len(names)} distinct startds in condor_status: {' '.join(names)}")
        result["startds"] = names
        jobs = job_ads(pool)
        watcher = GateWatcher(mpool, jobs).start()
        if not watcher.wait(lambda acc: len(acc) == len(nodes) and all(acc.values()), 120):
            raise RuntimeError(f"not every node accepts jobs before the faults: {watcher.latest()} "
                               f"{watcher.samples[-1][2] if watcher.samples else ''}")
        log("every node accepts jobs; injecting the faults")
        broken = [n for n in nodes if n.fault]
        t_inject = time.monotonic()
        for spec in broken:
            mpool.inject(spec.name)
        watcher.count_leftovers_since = t_inject
        refused = watcher.wait(lambda acc: all(acc.get(n.name) is False for n in broken), args.detect_timeout)
        log(f"faulty nodes refusing: {refused} ({time.monotonic() - t_inject:.0f}s after injection)")
        if watcher.samples:
            result["reasons_after_injection"] = watcher.samples[-1][2]

        t_submit = time.monotonic()
        clusters = submit_batch(pool, args.jobs, args.gpu_jobs)
        total = args.jobs + args.gpu_jobs
        log(f"submitted {total} jobs (clusters {clusters})")
        deadline = t_submit + args.batch_timeout
        counts: Counter = Counter()
        stuck = 0
        while time.monotonic() < deadline:
            counts, stuck = queue_state(pool, args.stuck_after)
            # done: nothing left but held jobs and jobs stuck running (a 2 s job running for minutes)
            if sum(counts.values()) == counts[5] + stuck:
                break
            time.sleep(3)
        result["stuck_running_at_end"] = stuck
        t_batch = time.monotonic() - t_submit
        result["batch_seconds"] = round(t_batch, 1)
        result["queue_at_end"] = {str(k): v for k, v in counts.items()}
        log(f"batch ended after {t_batch:.0f}s; queue by JobStatus: {dict(counts)}")
        if counts:   # what is left is removed (a job stuck on a hung node goes once the node is repaired)
            pool.enter("condor_rm", "-all", timeout=60, check=False)

        # Leftovers pile up per cron run: keep the faults until every faulty
        # node has had --leftover-runs runs (the batch alone may be shorter).
        if args.leftover_runs:
            enough = wait_until(lambda: all(watcher.runs_since(n.name, t_inject) >= args.leftover_runs
                                            for n in broken), args.leftover_runs * CRON_PERIOD * 2 + 60)
            log(f"cron runs since injection: {({n.name: watcher.runs_since(n.name, t_inject) for n in broken})}"
                + ("" if enough else " (fewer than --leftover-runs: timed out)"))
        result["leftover_processes"] = leftover_summary(watcher, broken)
        log(f"leftover processes per faulty node: {result['leftover_processes']}")
        stuck_procs = {spec.name: mpool.stuck_processes(spec.name) for spec in broken}
        result["stuck_processes_before_repair"] = {k: v for k, v in stuck_procs.items() if v}
        if result["stuck_processes_before_repair"]:
            log(f"processes in uninterruptible sleep before the repair: {result['stuck_processes_before_repair']}")
        log("repairing the faults")
        t_repair = time.monotonic()
        for spec in broken:
            mpool.repair(spec.name)
        if counts and not wait_until(lambda: not queue_counts(pool), 60):
            pool.enter("condor_rm", "-forcex", "-all", timeout=60, check=False)
            wait_until(lambda: not queue_counts(pool), 30)
        back = watcher.wait(lambda acc: all(acc.get(n.name) is True for n in nodes), args.recover_timeout)
        log(f"every node accepting again: {back} ({time.monotonic() - t_repair:.0f}s after repair)")
        watcher.stop()

        outcomes = job_outcomes(pool)
        result["jobs"] = {"submitted": total,
                          "ok": sum(1 for j in outcomes.values() if j["state"] == "ok"),
                          "failed": sum(1 for j in outcomes.values() if j["state"] == "failed"),
                          "held": sum(1 for j in outcomes.values() if j["state"] == "held"),
                          "held_ever": sum(1 for j in outcomes.values() if j["holds"]),
                          "unfinished": sum(1 for j in outcomes.values() if j["state"] in ("unfinished", "removed")),
                          "evictions": sum(j["evictions"] for j in outcomes.values()),
                          "shadow_exceptions": sum(j["exceptions"] for j in outcomes.values())}
        failed_by_node: Counter = Counter()
        for job in outcomes.values():
            if job["state"] in ("failed", "held") and job["executed_on"]:
                failed_by_node[job["executed_on"][-1]] += 1
        result["hold_reasons"] = Counter(re.sub(r"\d+", "N", j.get("hold_reason", ""))[:120]
                                         for j in outcomes.values() if j.get("hold_reason")).most_common(5)
        for spec in nodes:
            acts = activations(mpool, spec)
            refuse_at = watcher.first(spec.name, t_inject, False) if spec.fault else None
            landed_after_refusal = 0
            if refuse_at is not None:
                refused_wall = watcher.wall_offset + t_inject + refuse_at
                landed_after_refusal = len({job for when, job in acts if startlog_time(when) > refused_wall})
            result["nodes"][spec.name] = {
                "fault": spec.fault,
                "activations": len(acts),
                "distinct_jobs": len({job for _, job in acts}),
                "executed_here": sum(j["executed_on"].count(spec.name) for j in outcomes.values()),
                "ok_here": sum(1 for j in outcomes.values()
                               if j["state"] == "ok" and j["executed_on"] and j["executed_on"][-1] == spec.name),
                "failed_or_held_here": failed_by_node[spec.name],
                "refuse_after_injection_s": None if refuse_at is None else round(refuse_at, 1),
                "accept_after_repair_s": (None if not spec.fault else
                                          (lambda v: None if v is None else round(v, 1))(
                                              watcher.first(spec.name, t_repair, True))),
                "landed_after_refusal": landed_after_refusal,
            }
        result["watch_window_s"] = {"detect": args.detect_timeout, "recover": args.recover_timeout}
        result["watcher_errors"] = watcher.errors
        result["seconds"] = round(time.monotonic() - t_start, 1)
        return result
    finally:
        if watcher is not None:
            watcher.stop()
        mpool.stop()
        log(f"=== {config}: pool stopped, mounts gone ({time.monotonic() - t_start:.0f}s)")


def leftover_summary(watcher: GateWatcher, broken: List[NodeSpec]) -> Dict[str, Dict[str, Any]]:
    """Per faulty node: leftover processes (the node's processes outside its
    startd's tree) after its first cron run with the fault and at the end,
    the growth in between, and what was left at the end."""
    summary = {}
    for spec in broken:
        series = watcher.leftovers.get(spec.name, [])
        after_first = [len(procs) for _, runs, procs in series if runs >= 1]
        last_runs, last = (series[-1][1], series[-1][2]) if series else (0, [])
        summary[spec.name] = {
            "fault": spec.fault,
            "cron_runs": last_runs,
            "after_first_run": after_first[0] if after_first else None,
            "at_end": len(last),
            "max": max((len(p) for _, _, p in series), default=0),
            "growth": (len(last) - after_first[0]) if after_first else None,
            "left_at_end": last[:20],
        }
    return summary


def fmt_s(value: Optional[float], window: float) -> str:
    return f"never (>{window:.0f} s)" if value is None else f"{value:.0f} s"


def table(results: List[Dict[str, Any]], nodes: List[NodeSpec]) -> str:
    """Per fault, each configuration side by side; then the batch's totals."""
    configs = [r["config"] for r in results]
    lines = ["| node | fault | " + " | ".join(
        f"{c}: jobs landed (attempts) | {c}: failed or held there | {c}: refuses after injection | "
        f"{c}: accepts after repair" for c in configs) + " |",
        "|---|---|" + "---|" * (4 * len(configs))]
    for spec in nodes:
        row = [spec.name + (" (GPU)" if spec.gpus else ""), spec.fault or "none (control)"]
        for r in results:
            n = r["nodes"][spec.name]
            row += [f"{n['distinct_jobs']} ({n['activations']})", str(n["failed_or_held_here"])]
            if not spec.fault:
                row += ["-", "-"]
            elif n["refuse_after_injection_s"] is None:
                row += [fmt_s(None, r["watch_window_s"]["detect"]), "n/a"]
            else:
                row += [fmt_s(n["refuse_after_injection_s"], 0),
                        fmt_s(n["accept_after_repair_s"], r["watch_window_s"]["recover"])]
        lines.append("| " + " | ".join(row) + " |")
    lines += ["", "| batch | " + " | ".join(configs) + " |", "|---|" + "---|" * len(configs)]
    rows = (("submitted", "jobs submitted"), ("ok", "completed, exit 0"), ("failed", "completed, exit != 0"),
            ("held", "held at the end"), ("unfinished", "not done by the deadline (removed)"),
            ("evictions", "evictions (job sent back to the queue)"))
    for key, label in rows:
        lines.append(f"| {label} | " + " | ".join(str(r["jobs"][key]) for r in results) + " |")
    landed = [sum(n["distinct_jobs"] for n in r["nodes"].values() if n["fault"]) for r in results]
    attempts = [sum(n["activations"] for n in r["nodes"].values() if n["fault"]) for r in results]
    after = [sum(n["landed_after_refusal"] for n in r["nodes"].values() if n["fault"]) for r in results]
    lines.append("| jobs that landed on a faulty node (attempts) | " +
                 " | ".join(f"{a} ({b})" for a, b in zip(landed, attempts)) + " |")
    lines.append("| ... on a node already refusing (probes knew) | " + " | ".join(map(str, after)) + " |")
    lines.append("| batch wall time | " + " | ".join(
        f"{r['batch_seconds']:.0f} s" + (f" ({r['stuck_running_at_end']} stuck)" if r["stuck_running_at_end"] else "")
        for r in results) + " |")
    lines += ["", "| leftover processes (node's processes outside its startd's tree) | " + " | ".join(configs) + " |",
              "|---|" + "---|" * len(configs)]
    for spec in nodes:
        if not spec.fault:
            continue
        cells = []
        for r in results:
            left = r.get("leftover_processes", {}).get(spec.name)
            cells.append("-" if left is None else
                         f"{left['after_first_run']} after run 1, {left['at_end']} after run {left['cron_runs']} "
                         f"(growth {left['growth']})")
        lines.append(f"| {spec.name} {spec.fault} | " + " | ".join(cells) + " |")
    lines += ["", "How each fault was injected:"]
    lines += [f"- {spec.name} {spec.fault}: {FAULT_HOW[spec.fault]}" for spec in nodes if spec.fault]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--configs", default="baseline,startd-health,startd-health-pinned")
    parser.add_argument("--jobs", type=int, default=110, help="CPU jobs in the batch")
    parser.add_argument("--gpu-jobs", type=int, default=10, help="GPU jobs in the batch")
    parser.add_argument("--detect-timeout", type=float, default=60)
    parser.add_argument("--recover-timeout", type=float, default=90)
    parser.add_argument("--batch-timeout", type=float, default=300)
    parser.add_argument("--stuck-after", type=float, default=60,
                        help="a job running this long (they take ~2 s) counts as stuck: the batch is over "
                             "when only held and stuck jobs are left")
    parser.add_argument("--leftover-runs", type=int, default=10,
                        help="keep the faults until every faulty node has had this many cron runs, counting "
                             "leftover processes after each (0: only as long as the batch takes)")
    parser.add_argument("--nodes", default="", help="only these nodes (comma-separated names), for a quick look")
    parser.add_argument("--json", default="", help="also write the results here")
    args = parser.parse_args()
    if os.geteuid() != 0:
        parser.error("needs root (unshare, mount, nsenter): see tests/realpool")
    nodes = [n for n in NODES if not args.nodes or n.name in args.nodes.split(",")]
    results = []
    for config in args.configs.split(","):
        if config not in SNIPPETS:
            parser.error(f"unknown configuration {config!r} (known: {', '.join(SNIPPETS)})")
        results.append(run_config(config, args, nodes))
        if args.json:
            with open(args.json, "w") as handle:
                json.dump(results, handle, indent=1, default=str)
    print(table(results, nodes))
    return 0


if __name__ == "__main__":
    sys.exit(main())
