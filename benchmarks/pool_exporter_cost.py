#!/usr/bin/env python3
"""What the pool exporter costs against a REAL collector, and how the node
exporter's scrape latency holds up under concurrent scrapes.

Part 1, pool exporter: synthetic slot ads (tests/pool_ads.py: partitionable
+ dynamic slots, static slots, glideins, mixed health) are advertised into
the REAL collector of a test pool (tests/realpool, instance "poolbench",
condor_advertise with 5000 ads per file); then, N runs each (median):
  - query    the bare htcondor2 query with the exporter's projection and
             constraint (in this process: the bindings hold the GIL for it)
  - child    one query cycle as the exporter runs it: the child process
             (interpreter start, query, reduction to a summary, JSON), with
             its CPU time and peak RSS
  - families the exporter turning the summary into metric families (once
             per query cycle), and the exporter's RSS growth holding them
  - render   one scrape's exposition of those families, and its size
Part 2, node exporter: `startd-health exporter` (shell stand-in runtime,
probes every 2 s) scraped on loopback by C concurrent clients (threads) for
a few seconds each: p50/p99 latency, scrapes per second, and how many
connections the kernel dropped on the exporter's full listen backlog
(machine-wide TcpExt ListenOverflows: run it on a quiet machine).

usage (root: the pool runs in the test root filesystem):
  benchmarks/pool_exporter_cost.py [--sizes 1000,10000,100000] [--runs 5]
                                   [--clients 1,8,32] [--seconds 5]
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, "src"))  # the checkout, when not installed

from startd_health.monitor.pool.aggregate import PoolSnapshot  # noqa: E402
from startd_health.monitor.pool.families import snapshot_families  # noqa: E402
from startd_health.monitor.pool.query import CHILD_MODULE  # noqa: E402
from startd_health.monitor.pool.schema import Schema, constraint  # noqa: E402
from tests.pool_ads import advertise, machines  # noqa: E402
from tests.prom import free_port  # noqa: E402
from tests.realpool.pool import RealPool  # noqa: E402

ADS_PER_MACHINE = 2.69   # what tests/pool_ads.machines() averages with 2 dynamic slots per partitionable one


def median_of(values):
    return statistics.median(values) if values else float("nan")


def rss_mib():
    import psutil
    return psutil.Process().memory_info().rss / 2 ** 20


def count_ads(collector):
    import htcondor2
    try:
        return len(htcondor2.Collector(collector).query(htcondor2.AdTypes.Startd, "true", projection=["Name"]))
    except htcondor2.HTCondorException:   # still starting, or busy with the updates
        return 0


def measure_child(collector, schema, runs, workdir):
    """The exporter's query child, run as the exporter runs it, with wait4's rusage."""
    out = os.path.join(workdir, "answer.json")
    env = dict(os.environ, PYTHONPATH=os.path.join(REPO, "src"), _CONDOR_QUERY_TIMEOUT="60")
    spec = json.dumps({"collector": collector, "probes": list(schema.probes), "images": list(schema.images),
                       "constraint": "", "stale_after": 900})
    walls, cpus, rss = [], [], []
    for _ in range(runs):
        t0 = time.perf_counter()
        proc = subprocess.Popen([sys.executable, "-m", CHILD_MODULE, spec, out], env=env,
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        _, status, usage = os.wait4(proc.pid, 0)
        walls.append(time.perf_counter() - t0)
        if os.waitstatus_to_exitcode(status) != 0:
            raise SystemExit(f"query child failed: {proc.stderr.read().decode()}")
        proc.stderr.close()
        cpus.append(usage.ru_utime + usage.ru_stime)
        rss.append(usage.ru_maxrss / 1024)
    return median_of(walls), median_of(cpus), max(rss), out


class Families:
    """A registry collector over fixed metric families (what the exporter serves between queries)."""

    def __init__(self, families):
        self.families = families

    def collect(self):
        yield from self.families


def measure_size(pool, size, runs, workdir):
    """One row of the pool table: advertise ~size slot ads into a fresh collector, then measure."""
    import htcondor2
    from prometheus_client import CollectorRegistry, generate_latest

    from startd_health.probes import all_probes

    collector = f"127.0.0.1:{pool.port}"
    pool.wait_for(lambda: pool.enter("condor_status", "-total", check=False).returncode == 0, 30, "the collector")
    ads, exp = machines(max(1, round(size / ADS_PER_MACHINE)), int(time.time()))
    t0 = time.perf_counter()
    advertise(pool, ads)
    adv = time.perf_counter() - t0
    pool.wait_for(lambda: count_ads(collector) >= len(ads) + 1, 120,
                  "all ads (and the pool's own startd) in the collector")
    schema = Schema(tuple(all_probes()), ("el8", "el9"))
    projection, query_constraint = schema.projection(), constraint("")
    q = []
    for _ in range(runs):
        t0 = time.perf_counter()
        got = htcondor2.Collector(collector).query(htcondor2.AdTypes.Startd, query_constraint, projection=projection)
        q.append(time.perf_counter() - t0)
        assert len(got) == exp.queried_ads + 1, (len(got), exp.queried_ads)   # + the pool's own startd
        del got
    child_wall, child_cpu, child_rss, out = measure_child(collector, schema, runs, workdir)
    gc.collect()
    before = rss_mib()
    with open(out) as handle:
        snap = PoolSnapshot.from_json(json.load(handle))
    assert snap.nodes == dict(exp.nodes, unknown=exp.nodes["unknown"] + 1), (snap.nodes, exp.nodes)
    fam, families = [], []
    for _ in range(runs):
        t0 = time.perf_counter()
        families = snapshot_families(snap)
        fam.append(time.perf_counter() - t0)
    held = rss_mib() - before
    registry = CollectorRegistry(auto_describe=False)
    registry.register(Families(families))
    rend, body = [], b""
    for _ in range(runs):
        t0 = time.perf_counter()
        body = generate_latest(registry)
        rend.append(time.perf_counter() - t0)
    return (len(ads), exp.queried_ads + 1, sum(snap.nodes.values()), adv, median_of(q), child_wall, child_cpu,
            child_rss, median_of(fam), held, median_of(rend), len(body) / 1024)


def bench_pool(sizes, runs):
    pool = RealPool("sid", instance="poolbench")
    pool.build()
    pool.configure()   # the collector is all we need: no startd-health cron job here
    rows = []
    workdir = tempfile.mkdtemp(prefix="pool-bench-")
    try:
        for size in sizes:
            pool.start()   # a fresh collector for each size
            rows.append(measure_size(pool, size, runs, workdir))
            print(f"  {rows[-1][0]} slot ads: done", file=sys.stderr)
            pool.stop()
    finally:
        pool.stop()
    print("\npool exporter (medians of %d runs; child = one query cycle as the exporter runs it)" % runs)
    print("| slot ads | queried | machines | advertise s | query s | child wall s | child CPU s | child peak RSS MiB "
          "| families s | held MiB | render s | exposition KiB |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print("| %d | %d | %d | %.2f | %.3f | %.3f | %.3f | %.0f | %.3f | %.1f | %.3f | %.0f |" % r)


def listen_overflows():
    """The kernel's TcpExt ListenOverflows counter (connections dropped because a listen backlog was full)."""
    with open("/proc/net/netstat") as handle:
        lines = handle.read().splitlines()
    for names, values in zip(lines[::2], lines[1::2]):
        if names.startswith("TcpExt:"):
            return int(dict(zip(names.split()[1:], values.split()[1:]))["ListenOverflows"])
    return -1


def load_row(url, clients, seconds):
    """C client threads scraping url for `seconds`: one row of the scrape table."""
    latencies, errors = [], []
    lock = threading.Lock()
    stop_at = time.monotonic() + seconds

    def client():
        mine, bad = [], 0
        while time.monotonic() < stop_at:
            t0 = time.perf_counter()
            try:
                urllib.request.urlopen(url, timeout=5).read()
                mine.append(time.perf_counter() - t0)
            except OSError:
                bad += 1
        with lock:
            latencies.extend(mine)
            errors.append(bad)

    threads = [threading.Thread(target=client) for _ in range(clients)]
    overflows = listen_overflows()
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join(seconds + 10)
    elapsed = time.perf_counter() - t0
    latencies.sort()

    def ms(q):
        return latencies[min(len(latencies) - 1, int(q * len(latencies)))] * 1000

    return (clients, len(latencies), len(latencies) / elapsed, ms(0.5), ms(0.99), latencies[-1] * 1000, sum(errors),
            listen_overflows() - overflows)


def scrape_load(clients_list, seconds):
    from tests.e2e.test_pool_exporter import STANDIN_RUNTIME

    tmp = tempfile.mkdtemp(prefix="scrape-bench-")
    runtime = os.path.join(tmp, "apptainer")
    with open(runtime, "w") as handle:
        handle.write(STANDIN_RUNTIME)
    os.chmod(runtime, 0o755)
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "startd_health", "exporter", "--no-condor-config", "--state-dir",
                             os.path.join(tmp, "state"), "--probes", "container", "--container-runtime", runtime,
                             "--container-period", "2", "--container-images", "el9=/img/el9.sif,el8=/img/el8.sif",
                             "--exporter-listen", f"127.0.0.1:{port}"],
                            env=dict(os.environ, PYTHONPATH=os.path.join(REPO, "src")), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}/metrics"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                if b"startd_health_container_image_ok" in urllib.request.urlopen(url, timeout=5).read():
                    break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise SystemExit("the node exporter did not come up")
            time.sleep(0.2)
        size = len(urllib.request.urlopen(url, timeout=5).read())
        rows = [load_row(url, clients, seconds) for clients in clients_list]
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
    print(f"\nnode exporter scrapes under load ({seconds:g} s per row, exposition {size / 1024:.1f} KiB, probes "
          "running every 2 s, clients are threads of one process on the same machine)")
    print("(listen overflows: connections the kernel dropped because the exporter's listen backlog was full; "
          "clients retry after 1 s, 3 s, ...)")
    print("| clients | scrapes | scrapes/s | p50 ms | p99 ms | max ms | errors | listen overflows |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print("| %d | %d | %.0f | %.1f | %.1f | %.1f | %d | %d |" % r)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", default="1000,10000,100000", help="slot ads to advertise, comma-separated")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--clients", default="1,8,32")
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--skip-pool", action="store_true")
    parser.add_argument("--skip-scrape", action="store_true")
    args = parser.parse_args()
    if not args.skip_pool:
        bench_pool([int(s) for s in args.sizes.split(",")], args.runs)
    if not args.skip_scrape:
        scrape_load([int(c) for c in args.clients.split(",")], args.seconds)


if __name__ == "__main__":
    main()
