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

  default-periodic  exactly the shipped packaging at its defaults (cron every
                 300 s), with only what a site must set (SITE_CONF)
  daemon         the same plus 54-startd-health-daemon.conf at its defaults

Two modes. ROUNDS (the default; configurations baseline, default-periodic,
daemon): a steady stream of short jobs (JobStream keeps a backlog idle in the
queue) and --rounds injections, each at a random time within the period
(300 s) after the nodes were last seen healthy; per fault the seconds from
injection to refusing (p50/p95 over the rounds) and, per round, the jobs that
landed between injection and repair with what became of each (requeued,
failed, held, ok); between rounds the faults are repaired, the nodes' cached
results cleared and condor_reconfig run. All 17 nodes, issue 14's faults
included (tmp_full is harmless: the node must keep accepting jobs).

BATCH (--mode batch, the earlier experiment, without issue 14's nodes):
for each run: every node starts healthy (and, with startd-health, is seen
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
  python3 benchmarks/fault_experiment.py [--configs baseline,default-periodic,daemon] [--rounds 3]
      [--backlog 8] [--seed 14] [--nodes node1,node5] [--json results.json]
  python3 benchmarks/fault_experiment.py --mode batch [--configs baseline,startd-health,startd-health-pinned]
      [--jobs 110] [--gpu-jobs 10] [--batch-timeout 300] [--leftover-runs 10]
The host Python needs the htcondor bindings (htcondor2, classad2). Rounds: about 7 minutes
(HTCondor alone) to 30 minutes (default-periodic) per configuration on a 2-core machine;
batch: about 3 minutes per configuration. Every pool is stopped and every FUSE mount removed
at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import random
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

from tests.realpool.multinode import (FAULT_HOW, HARMLESS, IMAGE, REPO as CVMFS_REPO, MultiNodePool,  # noqa: E402
                                      NodeSpec, node_of_slot)
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
    # What the job gets (issue 14): one slot each, to keep the box's load down.
    NodeSpec("node12", fault="execute_readonly", cpus=1),
    NodeSpec("node13", fault="execute_full", cpus=1),
    NodeSpec("node14", fault="execute_nearly_full", cpus=1),
    NodeSpec("node15", fault="extra_args_bind_missing", cpus=1),
    NodeSpec("node16", fault="image_unreadable_by_jobs", cpus=1),
    NodeSpec("node17", fault="tmp_full", cpus=1),
]
# The nodes of the batch mode's earlier runs (the README's first tables).
BATCH_NODES = [n for n in NODES if n.fault not in (
    "execute_readonly", "execute_full", "execute_nearly_full", "extra_args_bind_missing", "image_unreadable_by_jobs",
    "tmp_full")]

CRON_PERIOD = 10
DEFAULT_CRON_PERIOD = 300   # 50-startd-health.conf's STARTD_HEALTH_CRON_PERIOD
# What a site sets whatever the mode: where the tool is installed, its
# images and flags, the repositories, and that every job here needs a
# container. No period, deadline or timeout: those stay at their defaults.
# The quarantine is off only so that a repaired repository comes back for
# the next injection round (it changes recovery, not detection).
SITE_CONF = f"""\
STARTD_HEALTH_CRON = /opt/startd-health/venv/bin/startd-health-cron
STARTD_HEALTH_CONTAINER_REQUIREMENT = REQUIRED
STARTD_HEALTH_CONTAINER_IMAGES = site={IMAGE}
STARTD_HEALTH_CONTAINER_FLAGS = --ipc --pid --contain --bind /cvmfs
STARTD_HEALTH_CONTAINER_BINDS = /cvmfs/{CVMFS_REPO}
STARTD_HEALTH_CVMFS_REPOSITORIES = {CVMFS_REPO}
STARTD_HEALTH_CVMFS_QUARANTINE = 0
"""
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
DAEMON_SNIPPET = "54-startd-health-daemon.conf"
# Variant: the runtime to test pinned to HTCondor's own SINGULARITY (by default
# the probe falls back to apptainer from PATH when SINGULARITY is not executable).
PINNED_CONF = "STARTD_HEALTH_CONTAINER_RUNTIME = $(SINGULARITY)\n"
# configuration -> (packaging snippets, extra configuration)
CONFIGS = {
    "baseline": ((), ""),
    "startd-health": (PACKAGING, HEALTH_CONF),
    "startd-health-pinned": (PACKAGING, HEALTH_CONF + PINNED_CONF),
    # exactly the shipped packaging at its defaults (cron every 300 s)
    "default-periodic": (PACKAGING, SITE_CONF),
    # the continuous daemon (54-startd-health-daemon.conf) at its defaults
    "daemon": (PACKAGING + (DAEMON_SNIPPET,), SITE_CONF),
}

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


def set_up(config: str, nodes: List[NodeSpec]) -> Tuple[RealPool, MultiNodePool]:
    pool = RealPool("sid", instance=INSTANCE)
    mpool = MultiNodePool(pool, nodes)
    log(f"=== {config}: building/reusing the root filesystem")
    pool.build()
    snippets, extra = CONFIGS[config]
    if snippets:
        missing = [s for s in snippets if not os.path.exists(os.path.join(REPO, "packaging", "condor", s))]
        if missing:
            raise SystemExit(f"{config}: packaging snippet(s) {', '.join(missing)} not in this checkout")
        pool.install_project()
    mpool.prepare()
    pool.configure(*snippets, extra=mpool.pool_config() + extra)
    return pool, mpool


def run_config(config: str, args: argparse.Namespace, nodes: List[NodeSpec]) -> Dict[str, Any]:
    t_start = time.monotonic()
    pool, mpool = set_up(config, nodes)
    result: Dict[str, Any] = {"config": config, "nodes": {}}
    watcher: Optional[GateWatcher] = None
    try:
        mpool.start()
        names = pool.wait_for(lambda: (lambda n: n if len(n) == len(nodes) else None)(mpool.startd_names()), 90,
                              f"{len(nodes)} startds in condor_status")
        log(f"{len(names)} distinct startds in condor_status: {' '.join(names)}")
        result["startds"] = names
        jobs = job_ads(pool)
        watcher = GateWatcher(mpool, jobs, interval=args.sample_interval).start()
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


# ====================================================================== rounds mode
# Several injection rounds per configuration, each at a random phase of the
# cron period, with jobs arriving all the time (a backlog of short jobs kept
# topped up from before the injection on): how long until each faulty node
# refuses, and how many jobs land on it meanwhile, and what becomes of them.

STREAM_JOB = JOB.replace("sleep 2", "sleep 15").replace("log = batch.log", "log = stream.log")


class JobStream:
    """Keeps at least `backlog` CPU jobs (and `gpu_backlog` GPU jobs) idle in the queue, so that
    every slot that frees up -- a faulty node's first of all, since its jobs end at once -- gets
    the next job within a negotiation cycle, as on a busy pool."""

    def __init__(self, pool: RealPool, backlog: int, gpu_backlog: int, interval: float = 5.0) -> None:
        self.pool = pool
        self.backlog, self.gpu_backlog, self.interval = backlog, gpu_backlog, interval
        self.submitted = 0
        self.errors = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="job-stream", daemon=True)

    def start(self) -> "JobStream":
        self.pool.write("/home/tester/stream.sub", STREAM_JOB)
        self.pool.sh("cd /home/tester && rm -rf out stream.log && mkdir out", user="tester")
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(60)

    def idle(self) -> Tuple[int, int]:
        out = self.pool.enter("condor_q", "-all", "-constraint", "JobStatus == 1", "-af", "RequestGPUs",
                              timeout=60).stdout
        gpu = sum(1 for line in out.split() if line not in ("undefined", "0"))
        return len(out.split()) - gpu, gpu

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                cpu, gpu = self.idle()
                gpu_extra = "-append 'request_gpus = 1'"
                for missing, extra in ((self.backlog - cpu, ""), (self.gpu_backlog - gpu, gpu_extra)):
                    if missing > 0:
                        self.pool.sh(f"cd /home/tester && condor_submit -terse stream.sub {extra} -queue {missing}",
                                     user="tester", timeout=120)
                        self.submitted += missing
            except Exception as exc:   # a slow schedd must not end the stream
                self.errors += 1
                log(f"job stream: {type(exc).__name__}: {exc}")
            self._stop.wait(self.interval)


def state_results_dir(pool: RealPool, node: str) -> str:
    """Host path of the node's cached probe results (STARTD_HEALTH_STATE_DIR/results)."""
    return pool.path(f"/tmp/condor/spool/startd_health.{node}/results")


def bring_back(pool: RealPool, mpool: MultiNodePool, broken: List[NodeSpec], health: bool) -> None:
    """After the repair: forget the nodes' cached failures and reconfigure, so that every
    node is re-probed now (the periodic job re-runs on reconfig, the daemon restarts) instead
    of at its next scheduled run. Not part of what is measured: it only starts the next round
    sooner."""
    if not health:
        return
    for spec in broken:
        directory = state_results_dir(pool, spec.name)
        for name in (os.listdir(directory) if os.path.isdir(directory) else ()):
            try:
                os.unlink(os.path.join(directory, name))
            except OSError:
                pass
    pool.enter("condor_reconfig", timeout=60, check=False)


def quantile(values: List[float], q: float) -> Optional[float]:
    """Nearest-rank quantile (with 3-5 rounds, p95 is the largest value)."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, int(-(-q * len(ordered) // 1)) - 1))]


def job_events(pool: RealPool, name: str = "stream.log") -> Dict[str, List[Tuple[float, str, Dict[str, Any]]]]:
    """Per job (C.P): (epoch time, kind, details) of each event in the user log."""
    path = pool.path(f"/home/tester/{name}")
    events: Dict[str, List[Tuple[float, str, Dict[str, Any]]]] = defaultdict(list)
    if not os.path.exists(path):
        return events
    T = htcondor2.JobEventType
    kinds = {T.EXECUTE: "execute", T.JOB_TERMINATED: "terminated", T.JOB_HELD: "held", T.JOB_EVICTED: "evicted",
             T.SHADOW_EXCEPTION: "exception", T.JOB_ABORTED: "removed", T.JOB_RELEASED: "released"}
    for event in htcondor2.JobEventLog(path).events(stop_after=0):
        kind = kinds.get(event.type)
        if kind is None:
            continue
        details: Dict[str, Any] = {}
        if kind == "execute":
            details["node"] = node_of_slot(str(event.get("SlotName", "")))
        elif kind == "terminated":
            details["ok"] = bool(event.get("TerminatedNormally", True)) and event.get("ReturnValue", None) == 0
        elif kind == "held":
            details["reason"] = str(event.get("HoldReason", ""))[:160]
        events[f"{event.cluster}.{event.proc}"].append((float(event.timestamp), kind, details))
    return events


def outcome(events: List[Tuple[float, str, Dict[str, Any]]], since: float, node: str) -> str:
    """What became of a job that landed on `node` at `since` (its StartLog activation):
    ok | failed | held | requeued | unfinished | removed. The job log's times have 1 s
    resolution, and the end of the job's previous attempt (elsewhere) can share that second."""
    own = next((i for i, (when, kind, details) in enumerate(events)
                if kind == "execute" and details.get("node") == node and since - 1 <= when <= since + 30), None)
    if own is None:
        # It never started there: the pre-job hook or the starter's own container test ended the
        # attempt, and it went back to the queue (or was held, or removed at the end).
        later = [(kind, details) for when, kind, details in events if when >= since]
        for kind, _ in later:
            if kind in ("held", "removed"):
                return kind
            if kind in ("evicted", "exception", "execute"):
                return "requeued"
        return "requeued" if later else "unfinished"
    for _, kind, details in events[own + 1:]:
        if kind == "terminated":
            return "ok" if details.get("ok") else "failed"
        if kind == "held":
            return "held"
        if kind in ("evicted", "exception", "execute"):
            return "requeued"
        if kind == "removed":
            return "removed"
    return "unfinished"


def run_rounds(config: str, args: argparse.Namespace, nodes: List[NodeSpec]) -> Dict[str, Any]:
    t_start = time.monotonic()
    pool, mpool = set_up(config, nodes)
    health = bool(CONFIGS[config][0])
    period = {"default-periodic": DEFAULT_CRON_PERIOD, "daemon": args.daemon_phase_window}.get(config, CRON_PERIOD)
    if not CONFIGS[config][0]:
        period = 0.0   # HTCondor alone: no period to be in phase with
    result: Dict[str, Any] = {"config": config, "mode": "rounds", "rounds": [], "phase_window_s": period,
                              "load_before": os.getloadavg()}
    watcher: Optional[GateWatcher] = None
    stream: Optional[JobStream] = None
    broken = [n for n in nodes if n.fault]
    must_refuse = [n for n in broken if n.fault not in HARMLESS]
    rng = random.Random(args.seed)
    try:
        mpool.start()
        names = pool.wait_for(lambda: (lambda n: n if len(n) == len(nodes) else None)(mpool.startd_names()), 120,
                              f"{len(nodes)} startds in condor_status")
        log(f"{len(names)} distinct startds in condor_status")
        jobs = job_ads(pool)
        watcher = GateWatcher(mpool, jobs, interval=args.sample_interval).start()
        if not watcher.wait(lambda acc: len(acc) == len(nodes) and all(acc.values()), 240):
            raise RuntimeError(f"not every node accepts jobs before the faults: {watcher.latest()} "
                               f"{watcher.samples[-1][2] if watcher.samples else ''}")
        t_ready = time.monotonic()
        stream = JobStream(pool, args.backlog, args.gpu_backlog).start()
        log(f"every node accepts jobs; job stream started (backlog {args.backlog} CPU + {args.gpu_backlog} GPU)")
        for number in range(1, args.rounds + 1):
            # A random phase of the period, counted from when the nodes were last probed healthy.
            delay = rng.uniform(0, period) if health else args.warmup
            wait_until(lambda: False, max(args.warmup, delay - (time.monotonic() - t_ready)), 1.0)
            t_inject = time.monotonic()
            wall_inject = time.time()
            for spec in broken:
                mpool.inject(spec.name)
            window = args.baseline_window if not health else args.detect_timeout or (period + 120)
            log(f"round {number}: faults injected ({delay:.0f}s into the period); watching up to {window:.0f}s")
            watcher.wait(lambda acc: all(acc.get(n.name) is False for n in must_refuse), window)
            # Keep the faults a little longer: a job that still lands now is counted too.
            time.sleep(args.hold)
            t_repair = time.monotonic()
            wall_repair = time.time()
            refuse = {n.name: watcher.first(n.name, t_inject, False) for n in broken}
            log(f"round {number}: refusing after " + ", ".join(
                f"{n.name}={'never' if refuse[n.name] is None else f'{refuse[n.name]:.1f}s'}" for n in broken))
            reasons = watcher.samples[-1][2] if watcher.samples else {}
            for spec in broken:
                mpool.repair(spec.name)
            bring_back(pool, mpool, broken, health)
            back = watcher.wait(lambda acc: all(acc.get(n.name) is True for n in nodes), args.recover_timeout)
            t_ready = time.monotonic()
            log(f"round {number}: every node accepting again: {back} ({t_ready - t_repair:.0f}s after repair)")
            result["rounds"].append({"round": number, "phase_s": round(delay, 1), "wall_inject": wall_inject,
                                     "wall_repair": wall_repair, "window_s": round(t_repair - t_inject, 1),
                                     "refuse_s": {k: None if v is None else round(v, 1) for k, v in refuse.items()},
                                     "reasons": {n.name: reasons.get(n.name, "") for n in broken},
                                     "recovered": back, "load": os.getloadavg()})
        stream.stop()
        pool.enter("condor_rm", "-all", timeout=60, check=False)
        events = job_events(pool)
        summarize_rounds(result, mpool, broken, events)
        pool.sh(f"cp /home/tester/stream.log /home/tester/stream.{config}.log")   # kept for a later look
        result["jobs_submitted"] = stream.submitted
        result["stream_errors"] = stream.errors
        result["watcher_errors"] = watcher.errors
        result["seconds"] = round(time.monotonic() - t_start, 1)
        return result
    finally:
        if stream is not None:
            stream.stop()
        if watcher is not None:
            watcher.stop()
        mpool.stop()
        log(f"=== {config}: pool stopped, mounts gone ({time.monotonic() - t_start:.0f}s)")


def summarize_rounds(result: Dict[str, Any], mpool: MultiNodePool, broken: List[NodeSpec],
                     events: Dict[str, List[Tuple[float, str, Dict[str, Any]]]]) -> None:
    """Per faulty node: refuse latencies, and per round the jobs that landed between injection and
    repair (claim activations in its StartLog) with what became of each."""
    nodes: Dict[str, Any] = {}
    for spec in broken:
        acts = [(startlog_time(when), job) for when, job in activations(mpool, spec)]
        per_round = []
        for r in result["rounds"]:
            landed = [(t, job) for t, job in acts if r["wall_inject"] - 1 <= t <= r["wall_repair"]]
            outcomes = Counter(outcome(events.get(job, []), t, spec.name) for t, job in landed)
            per_round.append({"landed": len({job for _, job in landed}), "attempts": len(landed),
                              "outcomes": dict(outcomes)})
        latencies = [r["refuse_s"][spec.name] for r in result["rounds"] if r["refuse_s"][spec.name] is not None]
        nodes[spec.name] = {
            "fault": spec.fault,
            "refuse_s": [r["refuse_s"][spec.name] for r in result["rounds"]],
            "p50_s": quantile(latencies, 0.5), "p95_s": quantile(latencies, 0.95),
            "refused_rounds": len(latencies),
            "rounds": per_round,
            "landed_max": max((p["landed"] for p in per_round), default=0),
            "outcomes": dict(sum((Counter(p["outcomes"]) for p in per_round), Counter())),
        }
    result["nodes"] = nodes


def rounds_table(results: List[Dict[str, Any]], nodes: List[NodeSpec]) -> str:
    """One row per fault; per configuration: refuse latency p50/p95 over the rounds, and the jobs that
    landed per round (max) with what became of them (all rounds)."""
    configs = [r["config"] for r in results]
    lines = ["| fault | " + " | ".join(f"{c}: refuses after p50 / p95 | {c}: jobs landed per round (max) "
                                        f"/ their end" for c in configs) + " |",
             "|---|" + "---|" * (2 * len(configs))]
    for spec in nodes:
        if not spec.fault:
            continue
        row = [spec.fault + (" (harmless)" if spec.fault in HARMLESS else "")]
        for r in results:
            n = r["nodes"][spec.name]
            rounds = len(r["rounds"])
            if n["p50_s"] is None:
                lat = f"never in {rounds} rounds" if spec.fault not in HARMLESS else f"never ({rounds} rounds): right"
            else:
                lat = f"{n['p50_s']:.0f} s / {n['p95_s']:.0f} s" + (
                    f" ({n['refused_rounds']} of {rounds} rounds)" if n["refused_rounds"] < rounds else "")
            landed = "/".join(str(p["landed"]) for p in n["rounds"])
            ends = ", ".join(f"{v} {k}" for k, v in sorted(n["outcomes"].items())) or "none"
            row += [lat, f"{landed} (max {n['landed_max']}) / {ends}"]
        lines.append("| " + " | ".join(row) + " |")
    lines += ["", "| run | " + " | ".join(configs) + " |", "|---|" + "---|" * len(configs)]
    lines.append("| rounds (injected at a random time within) | " + " | ".join(
        f"{len(r['rounds'])}" + (f" ({r['phase_window_s']:.0f} s)" if r["phase_window_s"] else "") for r in results)
        + " |")
    lines.append("| jobs submitted (stream) | " + " | ".join(str(r.get("jobs_submitted", "?")) for r in results) + " |")
    lines.append("| load average (1 min) during rounds | " + " | ".join(
        "–".join(f"{x['load'][0]:.1f}" for x in r["rounds"]) for r in results) + " |")
    lines.append("| wall time | " + " | ".join(f"{r.get('seconds', 0):.0f} s" for r in results) + " |")
    lines += ["", "How each fault was injected:"]
    lines += [f"- {spec.name} {spec.fault}: {FAULT_HOW[spec.fault]}" for spec in nodes if spec.fault]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--mode", choices=("rounds", "batch"), default="rounds",
                        help="rounds: several injections into a steady job stream (latency p50/p95, jobs landed "
                             "per fault); batch: one injection, then a batch (and leftover processes)")
    parser.add_argument("--configs", default="",
                        help=f"comma-separated, of {', '.join(CONFIGS)} (default: baseline,default-periodic,daemon "
                             "in rounds mode; baseline,startd-health,startd-health-pinned in batch mode)")
    parser.add_argument("--jobs", type=int, default=110, help="batch: CPU jobs in the batch")
    parser.add_argument("--gpu-jobs", type=int, default=10, help="batch: GPU jobs in the batch")
    parser.add_argument("--detect-timeout", type=float, default=None,
                        help="how long to wait for every faulty node to refuse (batch: 60 s; rounds: the phase "
                             "window + 120 s)")
    parser.add_argument("--recover-timeout", type=float, default=90)
    parser.add_argument("--batch-timeout", type=float, default=300)
    parser.add_argument("--stuck-after", type=float, default=60,
                        help="a job running this long (they take ~2 s) counts as stuck: the batch is over "
                             "when only held and stuck jobs are left")
    parser.add_argument("--leftover-runs", type=int, default=10,
                        help="batch: keep the faults until every faulty node has had this many cron runs, counting "
                             "leftover processes after each (0: only as long as the batch takes)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds: injections per configuration")
    parser.add_argument("--seed", type=int, default=14, help="rounds: seed of the random injection phases")
    parser.add_argument("--backlog", type=int, default=8, help="rounds: CPU jobs kept idle in the queue")
    parser.add_argument("--gpu-backlog", type=int, default=2, help="rounds: GPU jobs kept idle in the queue")
    parser.add_argument("--hold", type=float, default=20,
                        help="rounds: keep the faults this long after the last faulty node refused")
    parser.add_argument("--baseline-window", type=float, default=90,
                        help="rounds: how long the faults last without startd-health (nothing refuses)")
    parser.add_argument("--warmup", type=float, default=20, help="rounds: at least this long between rounds")
    parser.add_argument("--daemon-phase-window", type=float, default=300,
                        help="rounds, daemon: injections at a random time within this many seconds (the container "
                             "probe's default period: the launch-check interval)")
    parser.add_argument("--sample-interval", type=float, default=None,
                        help="how often the gates are sampled (batch: 2 s, rounds: 1 s)")
    parser.add_argument("--nodes", default="", help="only these nodes (comma-separated names), for a quick look")
    parser.add_argument("--json", default="", help="also write the results here")
    args = parser.parse_args()
    if os.geteuid() != 0:
        parser.error("needs root (unshare, mount, nsenter): see tests/realpool")
    rounds = args.mode == "rounds"
    configs = args.configs or ("baseline,default-periodic,daemon" if rounds else
                               "baseline,startd-health,startd-health-pinned")
    if args.sample_interval is None:
        args.sample_interval = 1.0 if rounds else 2.0
    if args.detect_timeout is None and not rounds:
        args.detect_timeout = 60
    nodes = [n for n in (NODES if rounds else BATCH_NODES) if not args.nodes or n.name in args.nodes.split(",")]
    results = []
    for config in configs.split(","):
        if config not in CONFIGS:
            parser.error(f"unknown configuration {config!r} (known: {', '.join(CONFIGS)})")
        results.append(run_rounds(config, args, nodes) if rounds else run_config(config, args, nodes))
        if args.json:
            with open(args.json, "w") as handle:
                json.dump(results, handle, indent=1, default=str)
        if rounds:   # each configuration's table as soon as it is done (a long run)
            print(rounds_table(results[-1:], nodes), flush=True)
    print(rounds_table(results, nodes) if rounds else table(results, nodes))
    return 0


if __name__ == "__main__":
    sys.exit(main())
