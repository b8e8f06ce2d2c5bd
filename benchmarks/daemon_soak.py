#!/usr/bin/env python3
"""Soak test of `startd-health daemon`: what it costs and whether it grows.

Runs the real daemon (a subprocess, stdout read as the startd reads it) and
samples, every --sample seconds, from /proc: its own CPU time (user+sys) and
that of the children it waited for, RSS, threads, open descriptors, live
descendant processes and zombies; it counts probe cycles (a result file in
the state directory with a new start time) and ads (`-` lines). Modes:

  defaults  every knob at its default (probe periods of 5-15 min, heartbeat
            60 s, event checks every second): the steady-state cost;
  fast      every probe period 1 s, heartbeat 1 s: >= 1000 probe cycles in a
            few minutes, to show that threads, fds, children and memory do
            not grow with the number of runs.

Goals (issue 13): at defaults CPU <= 0.1 % of one core and RSS <= 40 MiB;
zero growth of threads, fds and processes over >= 1000 cycles.

usage:  benchmarks/daemon_soak.py [--mode defaults|fast|both] [--minutes 10] [--cycles 1000]
                                  [--json out.json] [-- extra daemon args]
It runs the daemon of this checkout (src/) with --no-condor-config and a
temporary state directory; both modes run side by side with --mode both.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from typing import Dict, List

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TICKS = os.sysconf("SC_CLK_TCK")
FAST_ARGS = ["--heartbeat", "1", "--recheck-interval", "1"]
FAST_PERIODS = ("container", "cvmfs", "gpu", "sessions", "userns")


def proc_stat(pid: int) -> List[str]:
    with open(f"/proc/{pid}/stat") as handle:
        return handle.read().rsplit(")", 1)[1].split()


def table() -> Dict[int, int]:
    """pid -> ppid of every process."""
    parents = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                parents[int(entry)] = int(proc_stat(int(entry))[1])
            except (OSError, IndexError, ValueError):
                pass
    return parents


def descendants(pid: int) -> List[int]:
    parents = table()
    found, frontier = [], [pid]
    while frontier:
        children = [p for p, pp in parents.items() if pp in frontier]
        found += children
        frontier = children
    return found


def sample(pid: int) -> Dict[str, float]:
    fields = proc_stat(pid)
    status = dict(line.split(":", 1) for line in open(f"/proc/{pid}/status") if ":" in line)
    kids = descendants(pid)
    zombies = 0
    for kid in kids:
        try:
            zombies += proc_stat(kid)[0] == "Z"
        except OSError:
            pass
    return {"t": time.monotonic(),
            "cpu_self": (int(fields[11]) + int(fields[12])) / TICKS,
            "cpu_children": (int(fields[13]) + int(fields[14])) / TICKS,
            "rss_mib": int(status["VmRSS"].split()[0]) / 1024,
            "threads": int(status["Threads"]),
            "fds": len(os.listdir(f"/proc/{pid}/fd")),
            "children": len(kids), "zombies": zombies}


class Soak:
    def __init__(self, mode: str, extra: List[str], python: List[str]) -> None:
        self.mode = mode
        self.state = tempfile.mkdtemp(prefix=f"daemon-soak-{mode}-")
        argv = python + ["-m", "startd_health", "daemon", "--no-condor-config", "--state-dir", self.state]
        if mode == "fast":
            argv += FAST_ARGS + [arg for probe in FAST_PERIODS for arg in (f"--{probe}-period", "1")]
        argv += extra
        env = dict(os.environ, PYTHONPATH=os.path.join(REPO, "src"))
        self.proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                                     stdin=subprocess.DEVNULL, env=env)
        self.ads = 0
        self.bad_ads = 0
        self.cycles = 0
        self.samples: List[Dict[str, float]] = []
        self._seen: Dict[str, float] = {}
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        lines: List[bytes] = []
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            if line.startswith(b"-"):
                self.ads += 1
                if not lines or not lines[0].startswith(b"StartdHealthOk = "):
                    self.bad_ads += 1
                lines = []
            else:
                lines.append(line)

    def count_cycles(self) -> None:
        results = os.path.join(self.state, "results")
        try:
            names = os.listdir(results)
        except OSError:
            return
        for name in names:
            if not name.endswith(".json") or name.startswith("."):
                continue
            try:
                with open(os.path.join(results, name)) as handle:
                    started = json.load(handle)["started_at"]
            except (OSError, ValueError, KeyError):
                continue
            if self._seen.get(name) != started:
                if name in self._seen:
                    self.cycles += 1
                self._seen[name] = started

    def stop(self) -> int:
        """SIGTERM; its exit status (0: clean)."""
        self.proc.terminate()
        code = self.proc.wait(10)
        shutil.rmtree(self.state, ignore_errors=True)
        return code


def summary(soak: Soak, warmup: float) -> Dict[str, float]:
    samples = [s for s in soak.samples if s["t"] - soak.samples[0]["t"] >= warmup] or soak.samples
    first, last = samples[0], samples[-1]
    span = last["t"] - first["t"]
    quarter = max(1, len(samples) // 4)
    early, late = samples[:quarter], samples[-quarter:]

    def peak(rows, key):
        return max(r[key] for r in rows)

    return {
        "mode": soak.mode, "seconds": round(span), "probe_cycles": soak.cycles, "ads": soak.ads,
        "bad_ads": soak.bad_ads,
        "cpu_self_percent": round(100 * (last["cpu_self"] - first["cpu_self"]) / span, 4) if span else 0,
        "cpu_children_percent": round(100 * (last["cpu_children"] - first["cpu_children"]) / span, 4) if span else 0,
        "rss_mib_median": round(statistics.median(r["rss_mib"] for r in samples), 1),
        "rss_mib_max": round(peak(samples, "rss_mib"), 1),
        "rss_mib_growth": round(peak(late, "rss_mib") - peak(early, "rss_mib"), 2),
        # RSS at the end of each quarter of the run: a leak climbs, a warm-up levels off.
        "rss_mib_quarters": [round(samples[min(len(samples) - 1, (i * len(samples)) // 4 - 1)]["rss_mib"], 2)
                             for i in range(1, 5)],
        "threads_early_late_max": f"{peak(early, 'threads')}/{peak(late, 'threads')}",
        "fds_early_late_max": f"{peak(early, 'fds')}/{peak(late, 'fds')}",
        "children_early_late_max": f"{peak(early, 'children')}/{peak(late, 'children')}",
        "zombies_max": peak(samples, "zombies"),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--mode", choices=("defaults", "fast", "both"), default="both")
    parser.add_argument("--minutes", type=float, default=10.0, help="at least this long (both modes)")
    parser.add_argument("--cycles", type=int, default=1000, help="fast mode: at least this many probe cycles")
    parser.add_argument("--sample", type=float, default=5.0, help="seconds between samples")
    parser.add_argument("--warmup", type=float, default=30.0, help="seconds left out of the figures (start-up)")
    parser.add_argument("--no-site", action="store_true", help="run the daemon with python3 -S (as the zipapp)")
    parser.add_argument("--json", help="write the figures here too")
    parser.add_argument("extra", nargs="*", help="more daemon arguments")
    args = parser.parse_args()

    python = [sys.executable] + (["-S"] if args.no_site else [])
    modes = ("defaults", "fast") if args.mode == "both" else (args.mode,)
    soaks = [Soak(mode, args.extra, python) for mode in modes]
    t0 = time.monotonic()
    next_sample = t0
    try:
        while True:
            now = time.monotonic()
            for soak in soaks:
                soak.count_cycles()
                if soak.proc.poll() is not None:
                    raise SystemExit(f"the {soak.mode} daemon exited {soak.proc.returncode}")
            if now >= next_sample:
                for soak in soaks:
                    soak.samples.append(sample(soak.proc.pid))
                next_sample = now + args.sample
            long_enough = now - t0 >= args.minutes * 60
            fast_done = all(s.cycles >= args.cycles for s in soaks if s.mode == "fast")
            if long_enough and fast_done:
                break
            time.sleep(0.25)   # fast mode: every probe's new result is seen
    finally:
        figures = [summary(s, args.warmup) for s in soaks if s.samples]
        codes = {s.mode: s.stop() for s in soaks}
        time.sleep(0.5)
        leftover = descendants(os.getpid())
    for row in figures:
        row["exit_on_sigterm"] = codes[row["mode"]]
        row["processes_left_after_exit"] = len(leftover)
        print(json.dumps(row))
    if args.json:
        with open(args.json, "w") as handle:
            json.dump({"figures": figures, "samples": {s.mode: s.samples for s in soaks}}, handle, indent=1)


if __name__ == "__main__":
    main()
